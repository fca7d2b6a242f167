# Declarations shared by the core's modules: the C wrappers of shm_sync.h and the two extension
# types that hold a shared segment's buffer (SharedWords) and a robust mutex in it (RobustMutex).

from cpython.buffer cimport Py_buffer
from libc.stdint cimport int64_t


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass


cdef extern from "shm_sync.h" nogil:
    int64_t shm_load(const int64_t *p)
    void shm_store(int64_t *p, int64_t v)
    void shm_store_sc(int64_t *p, int64_t v)
    int64_t shm_load_sc(const int64_t *p)
    int64_t shm_fetch_add(int64_t *p, int64_t d)
    int shm_cas(int64_t *p, int64_t expected, int64_t desired)
    void shm_fence()
    int shm_membarrier_register()
    int shm_membarrier_global()
    void shm_compiler_fence()
    int shm_futex_wait(int64_t *word, int64_t expected, const timespec *deadline)
    int shm_futex_wake(int64_t *word, int n)
    int shm_mutex_init(pthread_mutex_t *m)
    int64_t shm_monotonic_ns()
    timespec shm_timespec(int64_t ns)


cdef int64_t deadline_ns(object timeout) except? -2
cdef int wait_word(int64_t *word, int64_t expected, int64_t deadline) except -1
cdef int wake_word(int64_t *word, int n) except -1
cdef bint fault_armed() noexcept
cdef bint asymmetric_fences() noexcept
cdef int fault(str point) except -1
cdef int64_t current_pid() noexcept


cdef class SharedWords:
    cdef Py_buffer _buf
    cdef bint _open
    cdef int64_t *base
    cdef Py_ssize_t count
    cdef int64_t *at(self, Py_ssize_t index) except NULL


cdef class RobustMutex:
    cdef SharedWords _words
    cdef pthread_mutex_t *_m
    cdef int64_t *_holder
    cdef int64_t *_recoveries
    cdef readonly str name
    cdef public object on_recover
    cdef str _held_point
    cdef str _won_point
    cdef long _held_by
    cdef int lock(self, int64_t deadline, double timeout) except -1
    cdef int unlock(self) except -1
    cdef int _check_open(self) except -1
    cdef int _enter(self, bint owner_died) except -1
    cdef int _unlock_leaving(self, int64_t leave_pid) except -1
