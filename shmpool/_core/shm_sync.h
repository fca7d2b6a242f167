/* What Cython cannot say: C11-style atomics on 64-bit words of a shared segment, the futex
 * system call, and a process-shared robust mutex's attributes. Everything here is a one-line
 * wrapper, so the memory order of each access is written once and named at the call site.
 *
 * Every shared word is an aligned little-endian int64 (docs/shm-layout.md). A futex is 32 bits:
 * it watches the low half of a word, which on a little-endian CPU sits at the word's address. A
 * 64-bit counter used as a futex therefore wraps for the kernel every 2^32 increments; a waiter
 * would sleep through a change only if exactly 2^32 of them happened between its load and its
 * wait, and even then only until its deadline slice ends.
 */
#ifndef SHMPOOL_SHM_SYNC_H
#define SHMPOOL_SHM_SYNC_H

#if !defined(__linux__)
#error "shmpool's core needs Linux futexes and robust process-shared mutexes"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shmpool's shared layout is little-endian: a futex watches the low half of an int64 word"
#endif

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Acquire load: everything the writer stored before its release store is visible after it. */
static inline int64_t shm_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* Release store: everything stored before it is visible to whoever loads this value. */
static inline void shm_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* Sequentially consistent store and load: a Dekker pair ("I am busy" then "is it still current?",
 * against the coordinator's "superseded" then "is anyone busy?", each side separated by an SC
 * operation) needs store->load order, which acquire/release do not give (x86-64: the store is an
 * xchg, the load a plain mov; aarch64: stlr / ldar). Used by a reader's cache word
 * (docs/architecture.md, "Idle readers"). */
static inline void shm_store_sc(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline int64_t shm_load_sc(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

/* Asymmetric fences (membarrier(2)): a reader process registers once; its lookups then order
 * "BUSY store, then GENERATION load" with a compiler barrier only, and the coordinator makes that
 * a full barrier, when it needs one, with MEMBARRIER_CMD_GLOBAL_EXPEDITED: every running thread of
 * every registered process executes a memory barrier before the call returns (a thread not
 * running passed one when it was switched out). userspace-RCU's "membarrier" flavour, measured
 * here at ~1 us a call against an xchg per lookup. Return 0 or an errno. */
static inline int shm_membarrier_register(void) {
    long mask = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0);
    if (mask < 0) return errno;
    if (!(mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED) || !(mask & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)) return ENOSYS;
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0) == 0 ? 0 : errno;
}

static inline int shm_membarrier_global(void) {
    return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0) == 0 ? 0 : errno;
}

/* Orders this thread's accesses for the compiler only: the CPU's half is the membarrier above. */
static inline void shm_compiler_fence(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/* Sequentially consistent read-modify-writes: the waiter/waker protocol needs store->load order
 * (a waker's "state changed" against a waiter's "I sleep"), which only seq_cst gives. */
static inline int64_t shm_fetch_add(int64_t *p, int64_t d) { return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST); }

static inline int shm_cas(int64_t *p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static inline void shm_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Sleep while the low 32 bits of *word equal expected, until woken or the absolute CLOCK_MONOTONIC
 * deadline (NULL: none). FUTEX_WAIT_BITSET takes an absolute time, so a caller that restarts after
 * EINTR waits only what remains. No FUTEX_PRIVATE_FLAG: the word is in a shared mapping, and
 * the kernel must key the wait on the page, not on this process's address space.
 * Returns 0 (woken, maybe spuriously), EAGAIN (the word had changed), ETIMEDOUT or EINTR. */
static inline int shm_futex_wait(int64_t *word, int64_t expected, const struct timespec *deadline) {
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, (uint32_t)expected, deadline, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    return r == 0 ? 0 : errno;
}

/* Wake up to n sleepers on *word; returns how many woke, or -errno. */
static inline int shm_futex_wake(int64_t *word, int n) {
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
    return r < 0 ? -errno : (int)r;
}

/* A mutex in shared memory that any attached process may lock, and that the kernel hands to the
 * next locker with EOWNERDEAD when its holder dies at any instruction (the robust list), and that
 * reports EDEADLK/EPERM instead of hanging on a relock or an unlock by a non-holder (ERRORCHECK). */
static inline int shm_mutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    int r = pthread_mutexattr_init(&a);
    if (r) return r;
    if (!(r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED))
        && !(r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST))
        && !(r = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK)))
        r = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return r;
}

static inline int64_t shm_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline struct timespec shm_timespec(int64_t ns) {
    struct timespec ts;
    ts.tv_sec = ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    return ts;
}

#endif
