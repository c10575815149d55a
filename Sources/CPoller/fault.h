// Internal to CPoller: the test-only fault points declared in cpoller.h.
#ifndef CPOLLER_FAULT_H
#define CPOLLER_FAULT_H

// 0 when the call at `point` on descriptor `fd` should proceed, else the positive errno it
// must fail with (one injected failure consumed).
int cpoller_fault_take(int point, int fd);

#endif
