import Poller
