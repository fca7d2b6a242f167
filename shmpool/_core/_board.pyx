# cython: language_level=3
"""The job board's per-job slot transitions, each one lock round of the board's robust mutex.

Python's JobBoard (shmpool/jobs/jobboard.py) calls each of these once per step of a job:

    submit    client  FREE -> SUBMITTED (pop the free stack, fill the row, push the queue), then
                      wake one idle worker
    take      worker  SUBMITTED -> RUNNING (CANCELLED ones met on the way -> FREE)
    finish    worker  RUNNING -> DONE (pushed on its client's ring, which is woken) or
                      ORPHANED -> FREE; optionally takes the next request in the same round
    deliver   client  DONE -> DELIVERED (pop its ring; no lock: the ring has one consumer)
    release   client  DELIVERED -> FREE (push the free stack, wake a submitter waiting for a slot)

A death between any two stores leaves states that JobBoard.heal restores from the slots' states
(the free stack, the queue and the rings are derived facts); the kill points named below are
where the tests inject one (shmpool.substrate._faults). Wake-ups are futexes on the very words
that change (Q_TAIL, a channel's TAIL, FREE_SEQ), so a sleeper compares the word it sleeps on
and never misses a change made before it slept; a waker calls the kernel only when a sleeper
count says someone sleeps.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer, Py_buffer
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from ._sync cimport (RobustMutex, SharedWords, current_pid, deadline_ns, fault, fault_armed, shm_cas, shm_fence,
                     shm_fetch_add, shm_load, shm_monotonic_ns, shm_store, timespec, wait_word, wake_word)

from ..errors import RequestTooLarge

cdef extern from *:
    """
    static inline void shm_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    """
    void shm_cpu_relax() nogil

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<time.h>" nogil:
    int CLOCK_THREAD_CPUTIME_ID
    int clock_gettime(int clk, timespec *ts)

cdef extern from "Python.h":
    object PyBytes_FromStringAndSize(const char *v, Py_ssize_t n)

__all__ = ["BoardCore", "NO_SPILL"]

NO_SPILL = -1
# A spinner yields its core between looks: on a machine with more runnable threads than cores
# (2 cores, load 20 where this was measured) a spin that never yields holds the core the other
# side needs for a whole time slice (p50 124 us against iceoryx2's yielding spin's 11 us).
cdef int SPIN_RELAX = 16  # pause instructions between two looks, before each yield


cdef inline int64_t _thread_cpu_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef bint _spin_until_differs(int64_t *a, int64_t *b, int64_t budget_ns) noexcept nogil:
    """Busy-wait until *a != *b, burning at most ``budget_ns`` of this thread's CPU time, and
    yielding the core between looks; True if they differ. CPU time, not wall time, is the bound:
    a spinner the scheduler set aside for a while has cost nothing meanwhile, and on a loaded
    machine a wall-clock bound would end most spins during one yield, in a futex sleep."""
    cdef int64_t until = _thread_cpu_ns() + budget_ns
    cdef int i
    while True:
        for i in range(SPIN_RELAX):
            if shm_load(a) != shm_load(b):
                return True
            shm_cpu_relax()
        if _thread_cpu_ns() >= until:
            return shm_load(a) != shm_load(b)
        sched_yield()

# The layout's indices: given by shmpool.jobs.jobs_layout (their one definition, CORE_INDICES)
# when the first BoardCore is made; the core sits below the jobs package and never imports it.
cdef int NCOLS, NCCOLS, ST, SEQ, CPID, CSTART, CHAN, WPID, WSTART, REQ, RESP, STATUS, ATT, SPOOL, SUBNS
cdef int DEADLINE, END_OK, END_ERR, ARG_REC, ARG_SER, FREE, SUBMITTED, RUNNING, DONE, CANCELLED, ORPHANED, DELIVERED, OK
cdef int W_FREE_TOP, W_QH, W_QT, W_FREE_SEQ, W_QSLEEP, W_WAITERS, W_LATN, W_LATSUM, W_LAT0, W_WAKE
cdef int C_HEAD, C_TAIL, C_WAITING, C_SLEEPERS, NBOUNDS = -1
cdef int64_t BOUNDS[32]
cdef object _configured = None


cdef int _configure(dict ix) except -1:
    global _configured, NCOLS, NCCOLS, ST, SEQ, CPID, CSTART, CHAN, WPID, WSTART, REQ, RESP, STATUS, ATT
    global SPOOL, SUBNS, DEADLINE, END_OK, END_ERR, ARG_REC, ARG_SER, FREE, SUBMITTED, RUNNING, DONE, CANCELLED, ORPHANED
    global DELIVERED, OK, W_FREE_TOP, W_QH, W_QT, W_FREE_SEQ, W_QSLEEP, W_WAITERS, W_LATN, W_LATSUM, W_LAT0, W_WAKE
    global C_HEAD, C_TAIL, C_WAITING, C_SLEEPERS, NBOUNDS
    if _configured is not None:
        if _configured != ix:
            raise ValueError("a second, different jobs layout in one process")
        return 0
    NCOLS, NCCOLS = ix["SLOT_COLS"], ix["CHANNEL_COLS"]
    ST, SEQ, CPID, CSTART = ix["STATE"], ix["SEQ"], ix["CLIENT_PID"], ix["CLIENT_START"]
    CHAN, WPID, WSTART, REQ = ix["CHANNEL"], ix["WORKER_PID"], ix["WORKER_START"], ix["REQ_LEN"]
    RESP, STATUS, ATT, SPOOL = ix["RESP_LEN"], ix["STATUS"], ix["ATTEMPTS"], ix["SPILL_POOL"]
    SUBNS, DEADLINE, END_OK, END_ERR = ix["SUBMITTED_NS"], ix["DEADLINE_NS"], ix["END_OK"], ix["END_ERROR"]
    ARG_REC, ARG_SER = ix["ARG_RECORD"], ix["ARG_SERIAL"]
    FREE, SUBMITTED, RUNNING, DONE = ix["S_FREE"], ix["S_SUBMITTED"], ix["S_RUNNING"], ix["S_DONE"]
    CANCELLED, ORPHANED, DELIVERED, OK = ix["S_CANCELLED"], ix["S_ORPHANED"], ix["S_DELIVERED"], ix["OK"]
    W_FREE_TOP, W_QH, W_QT, W_FREE_SEQ = ix["W_FREE_TOP"], ix["W_Q_HEAD"], ix["W_Q_TAIL"], ix["W_FREE_SEQ"]
    W_QSLEEP, W_WAITERS, W_LATN = ix["W_QUEUE_SLEEPERS"], ix["W_FREE_WAITERS"], ix["W_LATENCY_COUNT"]
    W_LATSUM, W_LAT0, W_WAKE = ix["W_LATENCY_SUM_NS"], ix["W_LATENCY_BUCKET0"], ix["W_WAKE_PENDING"]
    C_HEAD, C_TAIL, C_WAITING, C_SLEEPERS = ix["C_HEAD"], ix["C_TAIL"], ix["C_WAITING"], ix["C_RING_SLEEPERS"]
    bounds = ix["LATENCY_BOUNDS_NS"]
    if len(bounds) > 32:
        raise ValueError("at most 32 latency buckets")
    for i, b in enumerate(bounds):
        BOUNDS[i] = b
    NBOUNDS = len(bounds)
    _configured = dict(ix)
    return 0


cdef class BoardCore:
    """The words of one mapped jobs segment and its mutex; the per-job transitions over them.

    ``segment`` is the whole segment's buffer, ``layout`` its JobsLayout, ``indices`` the
    column, word and state numbers of shmpool.jobs.jobs_layout (``CORE_INDICES``). Every method that
    changes slots takes ``lock`` for one round; the ``*_locked`` helpers expect it held (Python's
    repair and supervision code calls them so that a push onto the free stack is written once).
    """
    cdef SharedWords _seg
    cdef readonly RobustMutex lock
    cdef int64_t *w
    cdef int64_t *free_stack
    cdef int64_t *queue
    cdef int64_t *slots
    cdef int64_t *chans
    cdef int64_t *rings
    cdef char *data
    cdef int64_t n, payload, nchan

    def __cinit__(self, SharedWords segment not None, RobustMutex lock not None, layout, dict indices not None):
        _configure(indices)
        self._seg = segment
        self.lock = lock
        self.n, self.payload, self.nchan = layout.slots, layout.payload, layout.channels
        segment.at((layout.data_offset + self.n * 2 * self.payload) // 8 - 1)  # all of it is mapped
        self.w = segment.at(0)
        self.free_stack = segment.at(layout.free_offset // 8)
        self.queue = segment.at(layout.queue_offset // 8)
        self.slots = segment.at(layout.slots_offset // 8)
        self.chans = segment.at(layout.channels_offset // 8)
        self.rings = segment.at(layout.rings_offset // 8)
        self.data = <char *>segment.at(layout.data_offset // 8)

    cdef int _check(self) except -1:
        self._seg.at(0)  # AttachError once closed: never touch an unmapped segment
        return 0

    # ------------------------------------------------------------- steps under the lock

    cdef int64_t _free_locked(self, int64_t slot) except -1:
        """FREE and push it on the free stack; +1 FREE_SEQ so a submitter about to sleep for a
        slot sees the change. Death between the state and the push: heal rebuilds the stack."""
        cdef int64_t *w = self.w
        self.slots[slot * NCOLS + ST] = FREE
        cdef int64_t top = w[W_FREE_TOP]
        self.free_stack[top] = slot
        w[W_FREE_TOP] = top + 1
        shm_fetch_add(&w[W_FREE_SEQ], 1)
        return 1

    cdef int64_t _pop_queue_locked(self):
        cdef int64_t head = self.w[W_QH]
        self.w[W_QH] = head + 1
        return self.queue[head % self.n]

    cdef int _enqueue_locked(self, int64_t slot) except -1:
        cdef int64_t tail = self.w[W_QT]
        self.queue[tail % self.n] = slot
        shm_store(&self.w[W_QT], tail + 1)  # release: the row is complete before a worker sees it
        return 0

    cdef int64_t _take_locked(self, int64_t pid, int64_t start, int64_t *freed) except -2:
        """Pop queued slots until a SUBMITTED one; mark it RUNNING in our name. -1: queue empty."""
        cdef int64_t *w = self.w
        cdef int64_t slot, r
        while w[W_QH] != w[W_QT]:
            slot = self._pop_queue_locked()
            if fault_armed():
                fault("take.popped")  # popped, still SUBMITTED: heal re-queues it
            r = slot * NCOLS
            if self.slots[r + ST] == CANCELLED:
                freed[0] += self._free_locked(slot)
                continue
            self.slots[r + WPID] = pid
            self.slots[r + WSTART] = start
            self.slots[r + SPOOL] = NO_SPILL
            self.slots[r + ST] = RUNNING
            return slot
        return -1

    cdef int64_t _deliver_locked(self, int64_t slot) except -1:
        """Push the slot on its client's ring, mark it DONE, publish the ring's new tail."""
        cdef int64_t r = slot * NCOLS
        cdef int64_t channel = self.slots[r + CHAN]
        cdef int64_t c = channel * NCCOLS
        cdef int64_t tail = self.chans[c + C_TAIL]
        self.rings[channel * self.n + tail % self.n] = slot
        self.slots[r + ST] = DONE
        if fault_armed():
            fault("deliver.marked")  # DONE but not yet in [head, tail): heal pushes it
        shm_store(&self.chans[c + C_TAIL], tail + 1)
        return channel

    cdef int64_t _release_locked(self, int64_t slot, int64_t seq) except -1:
        cdef int64_t r = slot * NCOLS
        if slot < 0 or slot >= self.n or self.slots[r + ST] != DELIVERED or self.slots[r + SEQ] != seq:
            return 0  # already freed (a second release, or its channel's release settled it)
        return self._free_locked(slot)

    cdef int64_t _submit_locked(self, int64_t top, int64_t channel, char *buf, Py_ssize_t n, int64_t pid,
                                int64_t start, int64_t arg_record, int64_t arg_serial) except -1:
        """Pop the free stack's entry ``top`` (it has one), fill that slot with a request of ``n``
        bytes for ``channel``, mark it SUBMITTED and queue it; returns the slot. ``arg_record``,
        ``arg_serial``: the allocation its spilled arguments lie in (-1: none), written with the
        request so that the row names it whenever the request is queued or running."""
        cdef int64_t *s = self.slots
        cdef int64_t slot = self.free_stack[top]
        self.w[W_FREE_TOP] = top
        if fault_armed():
            fault("submit.popped")  # off the stack, still FREE: heal pushes it back
        cdef int64_t r = slot * NCOLS
        s[r + SEQ] = s[r + SEQ] + 1
        s[r + CPID] = pid
        s[r + CSTART] = start
        s[r + CHAN] = channel
        s[r + WPID] = 0
        s[r + WSTART] = 0
        s[r + REQ] = n
        s[r + RESP] = 0
        s[r + STATUS] = 0
        s[r + ATT] = 0
        s[r + SPOOL] = NO_SPILL
        s[r + SUBNS] = shm_monotonic_ns()
        s[r + DEADLINE] = 0  # job_timeout: the worker sets it when it starts the job
        s[r + ARG_REC] = arg_record
        s[r + ARG_SER] = arg_serial
        memcpy(self.data + slot * 2 * self.payload, buf, n)
        s[r + ST] = SUBMITTED
        if fault_armed():
            fault("submit.filled")  # SUBMITTED, not in the queue: heal queues it
        self._enqueue_locked(slot)
        return slot

    def free_locked(self, int64_t slot):
        """Python's repair code: free ``slot`` (the lock held), exactly as the job path does."""
        self._check()
        self._free_locked(slot)

    def enqueue_locked(self, int64_t slot):
        self._check()
        self._enqueue_locked(slot)

    def pop_queue_locked(self):
        """The slot at the queue's head, popped (the lock held; the queue must not be empty)."""
        self._check()
        return self._pop_queue_locked()

    def deliver_locked(self, int64_t slot):
        """Push a slot whose response is written onto its client's ring; returns the channel."""
        self._check()
        return self._deliver_locked(slot)

    # ------------------------------------------------------------- wake-ups

    cdef int _wake_queue(self) except -1:
        # The fence orders our Q_TAIL store before the sleeper count's load; a worker counts
        # itself before comparing Q_TAIL, so either it sees the new tail or we see it counted.
        shm_fence()
        if shm_load(&self.w[W_QSLEEP]) > 0:
            wake_word(&self.w[W_QT], 1)
        return 0

    cdef int _wake_queue_gated(self, int n) except -1:
        """The job path's wake-up of idle workers: as :meth:`_wake_queue` (up to ``n``), but
        none while WAKE_PENDING says a worker woken for the queue has not left its wait yet:
        it will drain the queue, and wake the next sleeper itself if more is queued when it
        takes a job (measured: 0.83 FUTEX_WAKEs a submit at 64 in flight, ~6 us each on the
        loaded VM, the largest cost of a pipelined submit)."""
        cdef int64_t *w = self.w
        shm_fence()
        if shm_load(&w[W_QSLEEP]) > 0 and shm_cas(&w[W_WAKE], 0, 1):
            if fault_armed():
                fault("wake.pending")  # pending set, nobody woken: the sleepers' slices clear it
            wake_word(&w[W_QT], n)
        return 0

    cdef int _wake_next(self) except -1:
        """A worker that just took a job: wake one more sleeper if more is queued."""
        cdef int64_t *w = self.w
        if shm_load(&w[W_QH]) != shm_load(&w[W_QT]):
            self._wake_queue_gated(1)
        return 0

    cdef int _wake_ring(self, int64_t channel) except -1:
        cdef int64_t c = channel * NCCOLS
        shm_fence()
        if shm_load(&self.chans[c + C_SLEEPERS]) > 0:
            wake_word(&self.chans[c + C_TAIL], 0x7FFFFFFF)
        return 0

    cdef int _wake_free(self, int64_t freed) except -1:
        shm_fence()
        if freed > 0 and shm_load(&self.w[W_WAITERS]) > 0:
            wake_word(&self.w[W_FREE_SEQ], <int>min(freed, 0x7FFFFFFF))
        return 0

    def wake_queue(self):
        self._check()
        self._wake_queue()

    def wake_ring(self, int64_t channel):
        self._check()
        self._wake_ring(channel)

    def wake_free(self, int64_t freed):
        self._check()
        self._wake_free(freed)

    # ------------------------------------------------------------- the job path

    def submit(self, int64_t channel, request, int64_t pid, int64_t start, timeout,
               int64_t release_slot=-1, int64_t release_seq=0, int64_t arg_record=-1, int64_t arg_serial=0):
        """One lock round: free (release_slot, release_seq) if still DELIVERED, then pop a free
        slot, fill it with ``request`` and queue it. Returns (slot, seq), or (-1, free_seq) when
        no slot is free: wait with :meth:`wait_free` on that value, then try again.
        ``arg_record``, ``arg_serial``: the allocation of the request's spilled arguments (-1: none).

        LockTimeout if the lock stays held past ``timeout`` s (a stopped holder)."""
        self._check()
        cdef Py_buffer req
        PyObject_GetBuffer(request, &req, PyBUF_SIMPLE)
        cdef int64_t freed = 0, slot = -1, seq = 0, top, r
        cdef int64_t *w = self.w
        cdef int64_t *s = self.slots
        try:
            if req.len > self.payload:
                raise RequestTooLarge(nbytes=req.len, capacity=self.payload)
            self.lock.lock(deadline_ns(timeout), -1.0 if timeout is None else <double>timeout)
            try:
                if release_slot >= 0:
                    freed = self._release_locked(release_slot, release_seq)
                top = w[W_FREE_TOP] - 1
                if top < 0:
                    seq = shm_load(&w[W_FREE_SEQ])  # under the lock: any later free changes it
                else:
                    slot = self._submit_locked(top, channel, <char *>req.buf, req.len, pid, start,
                                               arg_record, arg_serial)
                    seq = s[slot * NCOLS + SEQ]
            finally:
                self.lock.unlock()
        finally:
            PyBuffer_Release(&req)
        if slot >= 0:
            if fault_armed():
                fault("submit.queued")  # queued, nobody woken: the worker's own slice finds it
            self._wake_queue_gated(1)
        if freed:
            self._wake_free(freed)
        return slot, seq

    def submit_many(self, int64_t channel, list requests not None, int64_t pid, int64_t start, timeout,
                    list arguments=None):
        """:meth:`submit` for a batch: in one lock round, fill and queue as many of ``requests``
        (from the first) as there are free slots, then wake up to as many sleeping workers.
        Returns ([(slot, seq), ...] for the first k requests, FREE_SEQ as seen under the lock):
        k < len(requests) means the board was full; wait with :meth:`wait_free` on that value.
        ``arguments``: per request, (record, serial) of its spilled arguments ((-1, 0): none).

        A request too large for a slot raises RequestTooLarge before any is queued."""
        self._check()
        cdef Py_ssize_t count = len(requests), i, k = 0
        cdef list bufs = [memoryview(q) for q in requests]  # each exported while we copy it
        for q in bufs:
            if len(q) > self.payload:
                raise RequestTooLarge(nbytes=len(q), capacity=self.payload)
        if arguments is not None and len(arguments) != count:
            raise ValueError(f"{len(arguments)} argument spills for {count} requests")
        cdef Py_buffer req
        cdef int64_t top, slot, seq = 0, freed = 0, arg_record = -1, arg_serial = 0
        cdef int64_t *w = self.w
        out = []
        self.lock.lock(deadline_ns(timeout), -1.0 if timeout is None else <double>timeout)
        try:
            for i in range(count):
                top = w[W_FREE_TOP] - 1
                if top < 0:
                    break
                if arguments is not None:
                    arg_record, arg_serial = arguments[i]
                PyObject_GetBuffer(bufs[i], &req, PyBUF_SIMPLE)
                try:
                    slot = self._submit_locked(top, channel, <char *>req.buf, req.len, pid, start,
                                               arg_record, arg_serial)
                finally:
                    PyBuffer_Release(&req)
                out.append((slot, self.slots[slot * NCOLS + SEQ]))
                k += 1
            seq = shm_load(&w[W_FREE_SEQ])  # under the lock: any later free changes it
        finally:
            self.lock.unlock()
        if k:
            if fault_armed():
                fault("submit.queued")
            self._wake_queue_gated(<int>min(k, 0x7FFFFFFF))
        return out, seq

    def take(self, int64_t pid, int64_t start):
        """Pop the next request for this worker: (slot, seq), or None if the queue is empty."""
        self._check()
        cdef int64_t *w = self.w
        # Unlocked peek: a request queued right after it changes Q_TAIL, which the worker's
        # futex wait compares, so it comes back for it; the lock round is skipped when idle.
        if shm_load(&w[W_QH]) == shm_load(&w[W_QT]):
            return None
        cdef int64_t freed = 0, slot
        self.lock.lock(-1, -1.0)
        try:
            slot = self._take_locked(pid, start, &freed)
        finally:
            self.lock.unlock()
        if freed:
            self._wake_free(freed)
        if slot < 0:
            return None
        self._wake_next()
        return slot, self.slots[slot * NCOLS + SEQ]

    def finish(self, int64_t slot, int64_t seq, int status, response, bint take_next, int64_t pid,
               int64_t start):
        """Hand the slot and its response to the client: (delivered, next (slot, seq) or None).

        ``response`` None: a spill was staged already. delivered is False when nobody will read
        it (the job was taken away, or its client left: a staged spill is the caller's to free).
        With ``take_next`` the next queued request is taken in the same lock round."""
        self._check()
        cdef int64_t *s = self.slots
        cdef int64_t r = slot * NCOLS
        cdef Py_buffer resp
        if slot < 0 or slot >= self.n:
            raise IndexError(f"slot {slot} outside 0..{self.n - 1}")
        if response is not None:
            PyObject_GetBuffer(response, &resp, PyBUF_SIMPLE)
            try:
                if resp.len > self.payload:
                    raise RequestTooLarge(nbytes=resp.len, capacity=self.payload)
                # Before the lock: the slot is RUNNING and ours, nobody else writes its response.
                memcpy(self.data + slot * 2 * self.payload + self.payload, resp.buf, resp.len)
                s[r + RESP] = resp.len
                s[r + SPOOL] = NO_SPILL
            finally:
                PyBuffer_Release(&resp)
        s[r + STATUS] = status
        cdef int64_t freed = 0, channel = -1, nxt = -1, state, latency, b
        cdef bint delivered = False
        cdef int64_t *w = self.w
        self.lock.lock(-1, -1.0)
        try:
            state = s[r + ST]
            if s[r + SEQ] == seq and (state == RUNNING or state == ORPHANED):
                latency = shm_monotonic_ns() - s[r + SUBNS]  # CLOCK_MONOTONIC: one clock system-wide
                b = 0
                while b < NBOUNDS and BOUNDS[b] < latency:
                    b += 1
                w[W_LAT0 + b] += 1
                w[W_LATN] += 1
                w[W_LATSUM] += latency
                if state == RUNNING:
                    channel = self._deliver_locked(slot)
                    delivered = True
                else:
                    freed += self._free_locked(slot)
                s[r + (END_OK if status == OK else END_ERR)] += 1  # heal closes the gap of a death here
            if take_next:
                nxt = self._take_locked(pid, start, &freed)
        finally:
            self.lock.unlock()
        if fault_armed():
            fault("finish.delivered")  # in the ring, client not woken: its own slice finds it
        if delivered:
            self._wake_ring(channel)
        if freed:
            self._wake_free(freed)
        if nxt < 0:
            return delivered, None
        self._wake_next()
        return delivered, (nxt, s[nxt * NCOLS + SEQ])

    def completed(self, int64_t channel):
        """Pop every slot pushed to this client's ring (DONE -> DELIVERED; one consumer, no lock).

        Each slot is marked DELIVERED *before* the head moves past it, so heal, which re-pushes
        DONE slots missing from their ring, never hands one out twice."""
        self._check()
        cdef int64_t c = channel * NCCOLS
        cdef int64_t head = self.chans[c + C_HEAD]
        cdef int64_t tail = shm_load(&self.chans[c + C_TAIL])  # acquire: the rows are complete
        if head == tail:
            return []
        cdef int64_t i, slot
        cdef int64_t *ring = self.rings + channel * self.n
        out = []
        for i in range(head, tail):
            slot = ring[i % self.n]
            self.slots[slot * NCOLS + ST] = DELIVERED
            out.append(slot)
        shm_store(&self.chans[c + C_HEAD], tail)
        return out

    def collect(self, int64_t channel, timeout):
        """Client: :meth:`wait_ring` then :meth:`completed` in one call: the slots that arrived
        within ``timeout`` s (an empty list when none did)."""
        if not self.wait_ring(channel, timeout):
            return []
        return self.completed(channel)

    def request(self, int64_t slot):
        """Worker: a copy of the request in ``slot`` (taken by us: nobody else writes it now).
        A copy, not a view: decoding makes objects of it anyway, and a small copy costs less
        than the two memoryview slices a view takes (requests are at most ``payload`` bytes)."""
        self._check()
        if slot < 0 or slot >= self.n:
            raise IndexError(f"slot {slot} outside 0..{self.n - 1}")
        return PyBytes_FromStringAndSize(self.data + slot * 2 * self.payload, self.slots[slot * NCOLS + REQ])

    def answer(self, int64_t slot):
        """Client: (seq, status, a copy of the response) of a slot delivered to us, or (seq,
        status, None) when the response spilled into pool blocks (read those with read_spill)."""
        self._check()
        if slot < 0 or slot >= self.n:
            raise IndexError(f"slot {slot} outside 0..{self.n - 1}")
        cdef int64_t r = slot * NCOLS
        if self.slots[r + SPOOL] != NO_SPILL:
            return self.slots[r + SEQ], self.slots[r + STATUS], None
        return (self.slots[r + SEQ], self.slots[r + STATUS],
                PyBytes_FromStringAndSize(self.data + slot * 2 * self.payload + self.payload, self.slots[r + RESP]))

    def release(self, pairs, timeout=None):
        """Free delivered (slot, seq) pairs in one lock round; a pair whose slot moved on is skipped."""
        self._check()
        cdef int64_t freed = 0
        self.lock.lock(deadline_ns(timeout), -1.0 if timeout is None else <double>timeout)
        try:
            for slot, seq in pairs:
                freed += self._release_locked(slot, seq)
            if fault_armed():
                fault("release.pushed")  # freed, no submitter woken: its own slice finds it
        finally:
            self.lock.unlock()
        self._wake_free(freed)
        return freed

    # ------------------------------------------------------------- waits (no lock)

    def wait_queue(self, timeout):
        """Worker: sleep until a request is queued; True if one is (maybe taken by another
        worker by now), False after ``timeout`` s. Leaving, woken or not, it clears
        WAKE_PENDING: the next submit wakes a sleeper again (see _wake_queue_gated)."""
        self._check()
        cdef int64_t *w = self.w
        cdef int64_t deadline = deadline_ns(timeout), tail
        try:
            while True:
                tail = shm_load(&w[W_QT])
                if shm_load(&w[W_QH]) != tail:
                    return True
                shm_fetch_add(&w[W_QSLEEP], 1)  # counted before the last look: see _wake_queue
                try:
                    # Going to sleep: no wake-up is pending for us. Without this, a WAKE_PENDING
                    # set for a worker that had left its wait already would keep every later
                    # submit from waking us (a job would wait out our whole slice). Cleared
                    # before the fence, so a submit that queues after our last look sees it clear.
                    shm_store(&w[W_WAKE], 0)
                    shm_fence()
                    tail = shm_load(&w[W_QT])
                    if shm_load(&w[W_QH]) != tail:
                        return True
                    if not wait_word(&w[W_QT], tail, deadline):
                        return False
                finally:
                    shm_fetch_add(&w[W_QSLEEP], -1)
        finally:
            shm_store(&w[W_WAKE], 0)

    def wait_ring(self, int64_t channel, timeout):
        """Client: sleep until this channel's ring has an entry; False after ``timeout`` s."""
        self._check()
        cdef int64_t c = channel * NCCOLS
        cdef int64_t *ch = self.chans + c
        cdef int64_t deadline = deadline_ns(timeout), tail
        while True:
            tail = shm_load(&ch[C_TAIL])
            if shm_load(&ch[C_HEAD]) != tail:
                return True
            shm_fetch_add(&ch[C_SLEEPERS], 1)
            try:
                shm_fence()
                tail = shm_load(&ch[C_TAIL])
                if shm_load(&ch[C_HEAD]) != tail:
                    return True
                if not wait_word(&ch[C_TAIL], tail, deadline):
                    return False
            finally:
                shm_fetch_add(&ch[C_SLEEPERS], -1)

    def wait_free(self, int64_t channel, int64_t seen, timeout):
        """Submitter: sleep until a slot is freed after ``seen`` (FREE_SEQ read under the lock
        by a submit that found none); True if one was, False after ``timeout`` s.

        Counted in FREE_WAITERS before the channel's WAITING and uncounted after it, so a death
        in between leaves FREE_WAITERS high (a needless wake later), never low (a lost one); a
        dead client's channel subtracts its WAITING when it is cleared."""
        self._check()
        cdef int64_t *w = self.w
        cdef int64_t *waiting = &self.chans[channel * NCCOLS + C_WAITING]
        cdef int64_t deadline = deadline_ns(timeout)
        shm_fetch_add(&w[W_WAITERS], 1)
        shm_fetch_add(waiting, 1)
        try:
            shm_fence()
            return bool(wait_word(&w[W_FREE_SEQ], seen, deadline))
        finally:
            shm_fetch_add(waiting, -1)
            shm_fetch_add(&w[W_WAITERS], -1)

    def spin_ring(self, int64_t channel, double seconds):
        """Busy-wait for this channel's ring to receive an entry (low-latency mode), without the
        GIL, burning at most ``seconds`` of CPU and yielding the core between looks; True if one
        arrived."""
        self._check()
        cdef int64_t *ch = self.chans + channel * NCCOLS
        cdef int64_t budget = <int64_t>(seconds * 1e9)
        cdef bint got
        with nogil:
            got = _spin_until_differs(&ch[C_HEAD], &ch[C_TAIL], budget)
        return got

    def spin_queue(self, double seconds):
        """Busy-wait for a queued request (a worker's low-latency mode), as :meth:`spin_ring`."""
        self._check()
        cdef int64_t *w = self.w
        cdef int64_t budget = <int64_t>(seconds * 1e9)
        cdef bint got
        with nogil:
            got = _spin_until_differs(&w[W_QH], &w[W_QT], budget)
        return got

    def close(self):
        """Drop this process's hold on the segment's buffer (idempotent). Refused (the words stay
        mapped) while a thread of ours holds the lock: it still has to unlock through them."""
        if self.lock.held_here():
            return
        self.lock.close()
        self._seg.close()
