// Counts heap allocations per thread, for tests only (Go's testing.AllocsPerRun).
//
// The test executable defines malloc, calloc, realloc, posix_memalign, aligned_alloc and
// memalign; the dynamic linker resolves every caller in the process (the Swift runtime,
// Foundation, libdispatch) to these, and they forward to glibc's __libc_* entry points after
// adding one to the calling thread's counter. free is forwarded too, uncounted. Under a
// sanitizer (which has its own malloc) nothing is interposed and counting is unavailable.
#ifndef ALLOC_COUNTER_H
#define ALLOC_COUNTER_H

#include <stdbool.h>
#include <stdint.h>

/// Whether this build interposes the allocator (false under ThreadSanitizer or AddressSanitizer).
bool alloc_counter_available(void);

/// The allocations made by the calling thread since it started (malloc, calloc, realloc,
/// posix_memalign, aligned_alloc, memalign; a realloc counts once).
uint64_t alloc_counter_thread_count(void);

#endif
