import Glibc

/// Start-up logging, on when `POLLER_LOG` is set to anything but `0`.
enum PollerLog {
    static var enabled: Bool {
        guard let value = getenv("POLLER_LOG") else { return false }
        return String(cString: value) != "0"
    }

    static func write(_ line: String) {
        var text = line
        text.append("\n")
        _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
