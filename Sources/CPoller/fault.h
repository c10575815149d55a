// Internal to CPoller: the test-only fault points declared in cpoller.h.
#ifndef CPOLLER_FAULT_H
#define CPOLLER_FAULT_H

// 0 when the call at `point` on descriptor `fd` should proceed, else the positive errno it
// must fail with (one injected failure consumed). Debug builds only (SwiftPM defines DEBUG
// there, and the tests build in debug): a release build's wait and submit paths carry no
// fault point at all, and cpoller_fault_inject then arms nothing.
#ifdef DEBUG
int cpoller_fault_take(int point, int fd);
#else
static inline int cpoller_fault_take(int point, int fd) {
    (void)point;
    (void)fd;
    return 0;
}
#endif

#endif
