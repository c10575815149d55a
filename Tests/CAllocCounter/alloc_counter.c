// See alloc_counter.h. Test support only: no library target depends on this.
#include "alloc_counter.h"

#include <errno.h>
#include <stddef.h>

#if defined(__has_feature)
#  if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#    define ALLOC_COUNTER_SANITIZED 1
#  endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#  define ALLOC_COUNTER_SANITIZED 1
#endif

#ifndef ALLOC_COUNTER_SANITIZED

// Initial-exec TLS in the executable: no allocation, no lazy TLS setup, safe inside malloc.
static __thread uint64_t thread_allocations __attribute__((tls_model("initial-exec")));

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *pointer);

void *malloc(size_t size) {
    thread_allocations += 1;
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    thread_allocations += 1;
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    thread_allocations += 1;
    return __libc_realloc(pointer, size);
}

void free(void *pointer) {
    __libc_free(pointer);
}

void *memalign(size_t alignment, size_t size) {
    thread_allocations += 1;
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    thread_allocations += 1;
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    // glibc's checks: a power of two, a multiple of sizeof(void *).
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0) {
        return EINVAL;
    }
    thread_allocations += 1;
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}

bool alloc_counter_available(void) { return true; }
uint64_t alloc_counter_thread_count(void) { return thread_allocations; }

#else

bool alloc_counter_available(void) { return false; }
uint64_t alloc_counter_thread_count(void) { return 0; }

#endif
