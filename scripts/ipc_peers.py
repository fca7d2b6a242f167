"""The IPC peers of ``bench_jobs.py``'s job-path comparison: one request/reply round trip each.

Every peer answers the same job, ``x -> x + 1`` on a small int, in the idiom of its own library
(pickled objects for multiprocessing, faster-fifo and the pools; 8-byte ints for the raw
semaphore ring, ZeroMQ and iceoryx2). A peer is started with its worker processes, then:

* ``submit(x)`` sends one request and returns a handle; ``wait(handle)`` returns its reply.
  Stream peers (pipes, queues, sockets) return None and read the next reply in arrival order;
  future peers return their future.
* ``call(x)`` is one closed-loop round trip; :func:`run_window` keeps ``window`` requests in
  flight and checks the sum of the replies, so every reply is checked even when several workers
  answer out of order.

Only the standard library is imported here at module level: a peer's own library is imported
when the peer starts, so a missing one fails that peer alone, and shmpool workers can import
:func:`shmpool_inc` cheaply. Servers exit when their parent does (``_orphaned``), so a killed
benchmark leaves no process behind.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import secrets
import shutil
import struct
import tempfile
import time
from collections import deque

__all__ = ["inc", "shmpool_inc", "run_window", "PEERS"]

REPLY_TIMEOUT = 30.0  # seconds: a reply slower than this means the peer is broken, not slow
POLL_S = 1.0  # seconds between a server's checks that its parent is alive
STOP = -1  # the request that ends a server (integer peers)
INT = struct.Struct("<q")
SLOTS = 64  # the raw semaphore ring: at most this many requests in flight
IOX_WAIT_MS = 50  # iceoryx2 event waits are sliced: a lost notification costs this, not a hang


def inc(x: int) -> int:
    """The job of the process pools (ProcessPoolExecutor, mpire)."""
    return x + 1


def shmpool_inc(reader, x: int) -> int:
    """The job of shmpool's workers (registered with ``Coordinator(jobs=...)``)."""
    return x + 1


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


def run_window(peer, n: int, window: int) -> None:
    """``n`` requests through ``peer`` with ``window`` in flight; raises if any reply is wrong."""
    pending: deque = deque()
    total = expected = 0
    for x in range(n):
        if len(pending) >= window:
            total += peer.wait(pending.popleft())
        pending.append(peer.submit(x))
        expected += x + 1
    while pending:
        total += peer.wait(pending.popleft())
    if total != expected:
        raise RuntimeError(f"{type(peer).__name__}: replies sum to {total}, expected {expected}")


class Peer:
    """Worker processes plus the client end of one system; ``close()`` stops them (idempotent)."""

    pids: list[int]
    procs: list = []

    def call(self, x: int) -> int:
        return self.wait(self.submit(x))

    def _spawn(self, target, *args) -> None:
        ctx = mp.get_context("spawn")
        p = ctx.Process(target=target, args=(os.getpid(), *args), daemon=True,
                        name=f"bench-jobs-{type(self).__name__}")
        p.start()
        self.procs = [*self.procs, p]
        self.pids = [q.pid for q in self.procs]

    def _stop_servers(self) -> None:
        for p in self.procs:
            p.join(2)
            if p.exitcode is None:
                p.terminate()
                p.join(2)
        self.procs = []

    def close(self) -> None:
        self._stop_servers()


# ----------------------------------------------------------------------------- multiprocessing.Pipe

def _pipe_server(parent: int, conn) -> None:
    while True:
        if not conn.poll(POLL_S):
            if _orphaned(parent):
                return
            continue
        x = conn.recv()
        if x is None:
            return
        conn.send(x + 1)


class PipePeer(Peer):
    def __init__(self, workers: int) -> None:
        self.conn, theirs = mp.Pipe()
        self._spawn(_pipe_server, theirs)
        theirs.close()

    def submit(self, x):
        self.conn.send(x)

    def wait(self, _):
        if not self.conn.poll(REPLY_TIMEOUT):
            raise TimeoutError("no reply from the Pipe server")
        return self.conn.recv()

    def close(self):
        if self.procs:
            self.conn.send(None)
        super().close()
        self.conn.close()


# ----------------------------------------------------------------------------- raw POSIX semaphores

def _sem_server(parent: int, shm_name: str, req_name: str, rep_name: str) -> None:
    import posix_ipc

    shm = posix_ipc.SharedMemory(shm_name)
    buf = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    req, rep = posix_ipc.Semaphore(req_name), posix_ipc.Semaphore(rep_name)
    i = 0
    while True:
        try:
            req.acquire(POLL_S)
        except posix_ipc.BusyError:
            if _orphaned(parent):
                return
            continue
        (x,) = INT.unpack_from(buf, (i % SLOTS) * INT.size)
        if x == STOP:
            return
        INT.pack_into(buf, (SLOTS + i % SLOTS) * INT.size, x + 1)
        rep.release()
        i += 1


class SemPeer(Peer):
    """Two counting semaphores and one shared buffer: a ring of SLOTS requests and SLOTS replies.

    One producer and one consumer each way, so a slot is rewritten only after its previous
    occupant was read (at most SLOTS in flight); ping-pong is the ring with one in flight."""

    def __init__(self, workers: int) -> None:
        import posix_ipc

        base = f"/bench-jobs-sem-{secrets.token_hex(4)}"
        self.names = (base + ".buf", base + ".req", base + ".rep")
        self.shm = posix_ipc.SharedMemory(self.names[0], posix_ipc.O_CREX, mode=0o600,
                                          size=2 * SLOTS * INT.size)
        self.buf = mmap.mmap(self.shm.fd, self.shm.size)
        self.shm.close_fd()
        self.req = posix_ipc.Semaphore(self.names[1], posix_ipc.O_CREX, mode=0o600, initial_value=0)
        self.rep = posix_ipc.Semaphore(self.names[2], posix_ipc.O_CREX, mode=0o600, initial_value=0)
        self.sent = self.got = 0
        self._spawn(_sem_server, *self.names)

    def submit(self, x):
        INT.pack_into(self.buf, (self.sent % SLOTS) * INT.size, x)
        self.sent += 1
        self.req.release()

    def wait(self, _):
        self.rep.acquire(REPLY_TIMEOUT)  # BusyError if the server is gone
        (y,) = INT.unpack_from(self.buf, (SLOTS + self.got % SLOTS) * INT.size)
        self.got += 1
        return y

    def close(self):
        import posix_ipc

        if self.procs:
            self.submit(STOP)
        try:
            super().close()
            self.buf.close()
        finally:  # the names go whatever else failed
            for unlink, name in ((posix_ipc.unlink_shared_memory, self.names[0]),
                                 (posix_ipc.unlink_semaphore, self.names[1]),
                                 (posix_ipc.unlink_semaphore, self.names[2])):
                try:
                    unlink(name)
                except posix_ipc.ExistentialError:
                    pass
            self.req.close()
            self.rep.close()


# ----------------------------------------------------------------------------- the floor rows

# The wait/wake primitive under shmpool's board (a futex on a shared word, from its compiled
# core) and a one-byte os.pipe: what a round trip costs with no protocol at all on top.
_REQ, _REP, _X, _Y = 0, 1, 2, 3  # futex floor words: request count, reply count, request, reply


def _futex_server(parent: int, shm_name: str) -> None:
    import posix_ipc

    from shmpool._core import SharedWords

    shm = posix_ipc.SharedMemory(shm_name)
    buf = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    w = SharedWords(buf)
    seen = 0
    while True:
        while w.load(_REQ) == seen:
            if not w.wait(_REQ, seen, POLL_S) and _orphaned(parent):
                return
        seen = w.load(_REQ)
        x = w.load(_X)
        if x == STOP:
            return
        w.store(_Y, x + 1)
        w.store(_REP, seen)  # release: the reply is visible before the count
        w.wake(_REP, 1)


class FutexPeer(Peer):
    """One request in flight through two futex words of a shared segment (shmpool._core)."""

    def __init__(self, workers: int) -> None:
        import posix_ipc

        from shmpool._core import SharedWords

        self.name = f"/bench-jobs-futex-{secrets.token_hex(4)}"
        shm = posix_ipc.SharedMemory(self.name, posix_ipc.O_CREX, mode=0o600, size=4096)
        self.buf = mmap.mmap(shm.fd, shm.size)
        shm.close_fd()
        self.w = SharedWords(self.buf)
        self.sent = 0
        self._spawn(_futex_server, self.name)

    def submit(self, x):
        self.w.store(_X, x)
        self.sent += 1
        self.w.store(_REQ, self.sent)
        self.w.wake(_REQ, 1)

    def wait(self, _):
        w, sent = self.w, self.sent
        deadline = time.monotonic() + REPLY_TIMEOUT
        while w.load(_REP) != sent:
            w.wait(_REP, sent - 1, 1.0)
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from the futex server")
        return w.load(_Y)

    def close(self):
        import posix_ipc

        if self.procs:
            self.submit(STOP)
        try:
            super().close()
            self.w.close()
            self.buf.close()
        finally:
            try:
                posix_ipc.unlink_shared_memory(self.name)
            except posix_ipc.ExistentialError:
                pass


def _byte_pipe_server(parent: int, rfd: int, wfd: int) -> None:
    import select

    while True:
        ready, _, _ = select.select([rfd], [], [], POLL_S)
        if not ready:
            if _orphaned(parent):
                return
            continue
        b = os.read(rfd, 1)
        if not b or b == b"\xff":
            return
        os.write(wfd, b)


class BytePipePeer(Peer):
    """One byte each way through two os.pipe()s: the kernel's cheapest wake-up with a payload."""

    def __init__(self, workers: int) -> None:
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        for fd in (req_r, rep_w):
            os.set_inheritable(fd, True)
        ctx = mp.get_context("fork")  # the server inherits its two pipe ends
        p = ctx.Process(target=_byte_pipe_server, args=(os.getpid(), req_r, rep_w), daemon=True,
                        name="bench-jobs-BytePipePeer")
        p.start()
        os.close(req_r)
        os.close(rep_w)
        self.procs = [p]
        self.pids = [p.pid]
        self.last = 0

    def submit(self, x):
        self.last = x
        os.write(self.req_w, b"\x01")

    def wait(self, _):
        if not os.read(self.rep_r, 1):
            raise TimeoutError("the byte-pipe server is gone")
        return self.last + 1

    def close(self):
        if self.procs:
            try:
                os.write(self.req_w, b"\xff")
            except OSError:
                pass
        super().close()
        for fd in (self.req_w, self.rep_r):
            try:
                os.close(fd)
            except OSError:
                pass


# ----------------------------------------------------------------------------- ZeroMQ

def _zmq_server(parent: int, endpoint: str, kind: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP if kind == "rep" else zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    (sock.connect if kind == "rep" else sock.bind)(endpoint)
    try:
        while True:
            if not sock.poll(int(POLL_S * 1000)):
                if _orphaned(parent):
                    return
                continue
            if kind == "rep":
                (x,) = INT.unpack(sock.recv())
                if x == STOP:
                    return
                sock.send(INT.pack(x + 1))
            else:
                ident, body = sock.recv_multipart()
                (x,) = INT.unpack(body)
                if x == STOP:
                    return
                sock.send_multipart([ident, INT.pack(x + 1)])
    finally:
        sock.close()
        ctx.term()


class _ZmqPeer(Peer):
    def _folder(self) -> str:
        self.folder = tempfile.mkdtemp(prefix="bench-jobs-zmq-")
        return self.folder

    def submit(self, x):
        self.sock.send(INT.pack(x))

    def wait(self, _):
        if not self.sock.poll(int(REPLY_TIMEOUT * 1000)):
            raise TimeoutError("no reply from the ZeroMQ server")
        return INT.unpack(self.sock.recv())[0]

    def close(self):
        if self.procs:
            for _ in self.procs:  # DEALER round-robins the stops, one per server
                self.submit(STOP)
        super().close()
        self.sock.close()
        self.ctx.term()
        shutil.rmtree(self.folder, ignore_errors=True)


class ZmqReqRepPeer(_ZmqPeer):
    """REQ (client, bound) and REP (worker, connected) over ipc://: strictly one request in flight."""

    def __init__(self, workers: int) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{self._folder()}/s"
        self.sock.bind(endpoint)
        self._spawn(_zmq_server, endpoint, "rep")

    def close(self):
        if self.procs:
            self.submit(STOP)
            self.procs[0].join(2)
        self.procs, procs = [], self.procs
        for p in procs:
            if p.exitcode is None:
                p.terminate()
                p.join(2)
        self.sock.close()
        self.ctx.term()
        shutil.rmtree(self.folder, ignore_errors=True)


class ZmqDealerRouterPeer(_ZmqPeer):
    """A DEALER connected to one ROUTER per worker; DEALER round-robins requests over them."""

    def __init__(self, workers: int) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        folder = self._folder()
        for i in range(workers):
            endpoint = f"ipc://{folder}/w{i}"
            self._spawn(_zmq_server, endpoint, "router")
            self.sock.connect(endpoint)  # ipc connects retry until the ROUTER is bound


# ----------------------------------------------------------------------------- queues

def _queue_server(parent: int, requests, replies, fifo: bool) -> None:
    import queue

    empty = (queue.Empty,)
    if fifo:
        import faster_fifo

        empty = (queue.Empty, faster_fifo.Empty) if hasattr(faster_fifo, "Empty") else empty
    while True:
        try:
            x = requests.get(timeout=POLL_S)
        except empty:
            if _orphaned(parent):
                return
            continue
        if x is None:
            return
        replies.put(x + 1)


class QueuePeer(Peer):
    """Two queues (requests, replies) shared by every worker: multiprocessing.Queue or faster-fifo."""

    def __init__(self, workers: int, fifo: bool = False) -> None:
        if fifo:
            import faster_fifo

            self.requests, self.replies = faster_fifo.Queue(), faster_fifo.Queue()
        else:
            ctx = mp.get_context("spawn")
            self.requests, self.replies = ctx.Queue(), ctx.Queue()
        for _ in range(workers):
            self._spawn(_queue_server, self.requests, self.replies, fifo)

    def submit(self, x):
        self.requests.put(x)

    def wait(self, _):
        return self.replies.get(timeout=REPLY_TIMEOUT)

    def close(self):
        for _ in self.procs:
            self.requests.put(None)
        super().close()


class FasterFifoPeer(QueuePeer):
    def __init__(self, workers: int) -> None:
        super().__init__(workers, fifo=True)


# ----------------------------------------------------------------------------- process pools

class MpirePeer(Peer):
    """mpire's WorkerPool: ``apply`` for a round trip, ``apply_async`` to pipeline."""

    def __init__(self, workers: int) -> None:
        from mpire import WorkerPool

        # spawn, like every other peer: this process has threads, and fork would copy their locks.
        self.pool = WorkerPool(n_jobs=workers, start_method="spawn", keep_alive=True)
        if self.pool.apply(inc, (0,)) != 1:  # starts the workers
            raise RuntimeError("mpire: wrong reply")
        self.pids = [w.pid for w in self.pool._workers]

    def call(self, x):
        return self.pool.apply(inc, (x,))

    def submit(self, x):
        return self.pool.apply_async(inc, (x,))

    def wait(self, handle):
        return handle.get(REPLY_TIMEOUT)

    def close(self):
        self.pool.terminate()


class PpePeer(Peer):
    def __init__(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        self.workers = workers
        self.pids = []

    def submit(self, x):
        return self.ex.submit(inc, x)

    def wait(self, handle):
        y = handle.result(REPLY_TIMEOUT)
        if len(self.pids) < self.workers:  # workers start on demand
            self.pids = list(self.ex._processes)
        return y

    def close(self):
        self.ex.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- iceoryx2

def _iox_ports(tag: str, server: bool):
    import ctypes

    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)  # "no config file" notices on every start otherwise
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    rr = (node.service_builder(iox2.ServiceName.new(f"{tag}/rr"))
          .request_response(ctypes.c_uint64, ctypes.c_uint64)
          .max_active_requests_per_client(SLOTS)
          # Safe overflow (the default) drops the oldest request when a burst outruns the server.
          .enable_safe_overflow_for_requests(False).enable_safe_overflow_for_responses(False)
          .open_or_create())
    ping = node.service_builder(iox2.ServiceName.new(f"{tag}/req")).event().open_or_create()
    pong = node.service_builder(iox2.ServiceName.new(f"{tag}/rep")).event().open_or_create()
    port = rr.server_builder().create() if server else rr.client_builder().create()
    listener = (ping if server else pong).listener_builder().create()
    notifier = (pong if server else ping).notifier_builder().create()
    return node, port, listener, notifier


def _iox_server(parent: int, tag: str, spin: bool, ready) -> None:
    import ctypes

    import iceoryx2 as iox2

    node, server, listener, notifier = _iox_ports(tag, server=True)
    ready.set()
    poll = iox2.Duration.from_millis(IOX_WAIT_MS)
    idle = 0
    while True:
        if not spin:
            listener.timed_wait(poll)
        active = server.receive()
        if active is None:
            idle += 1
            if spin:
                os.sched_yield()
            if (not spin or idle % 100_000 == 0) and _orphaned(parent):
                return
            continue
        while active is not None:
            x = active.payload().contents.value
            if x == 2**64 - 1:
                active.delete()
                return
            active.send_copy(ctypes.c_uint64(x + 1))
            active.delete()
            if not spin:
                notifier.notify()
            active = server.receive()


class IoxPeer(Peer):
    """iceoryx2 request-response; ``spin=False``: each side waits on an event the other notifies,
    ``spin=True``: both sides poll and never sleep, a core burnt on each side while it lasts.

    The spinners call sched_yield() between polls: on 2 cores shared by two spinners and every
    other thread of the machine, a pure spin holds the core for a whole time slice while its
    peer waits (p50 2.7 ms measured at load 8), which measures the scheduler, not iceoryx2."""

    def __init__(self, workers: int, spin: bool = False) -> None:
        import iceoryx2 as iox2

        self.spin = spin
        self.tag = f"bench-jobs/{secrets.token_hex(4)}/{'spin' if spin else 'event'}"
        ready = mp.get_context("spawn").Event()
        self._spawn(_iox_server, self.tag, spin, ready)
        if not ready.wait(REPLY_TIMEOUT):
            raise TimeoutError("iceoryx2 server did not start")
        self.node, self.client, self.listener, self.notifier = _iox_ports(self.tag, server=False)
        self.slice = iox2.Duration.from_millis(IOX_WAIT_MS)
        self.missed = 0

    def submit(self, x):
        import ctypes

        pending = self.client.send_copy(ctypes.c_uint64(x))
        if not self.spin:
            self.notifier.notify()
        return pending

    def counters(self) -> dict:
        return {} if self.spin else {"event_waits_returned_empty_so_far": self.missed}

    def wait(self, pending):
        spins = 0
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            response = pending.receive()
            if response is not None:
                y = response.payload().contents.value
                response.delete()
                pending.delete()
                return y
            if self.spin:
                os.sched_yield()
                spins += 1
                if spins % 10_000 == 0 and time.monotonic() > deadline:
                    raise TimeoutError("no reply from the iceoryx2 server")
            elif not self.listener.timed_wait(self.slice):
                # Empty: IOX_WAIT_MS passed (a notification lost, e.g. the first one, sent before
                # the server's notifier saw our listener) or a spurious return. Counted; a lost
                # one costs IOX_WAIT_MS, visible in the p99, instead of a hang.
                self.missed += 1
                if time.monotonic() > deadline:
                    raise TimeoutError("no reply from the iceoryx2 server")

    def close(self):
        import ctypes

        if self.procs:
            self.client.send_copy(ctypes.c_uint64(2**64 - 1)).delete()
            self.notifier.notify()
        super().close()
        # Dropping the ports and the node removes their files from /dev/shm.
        for attr in ("listener", "notifier", "client", "node"):
            obj = getattr(self, attr)
            if hasattr(obj, "delete"):
                obj.delete()
            setattr(self, attr, None)


class IoxSpinPeer(IoxPeer):
    def __init__(self, workers: int) -> None:
        super().__init__(workers, spin=True)


# ----------------------------------------------------------------------------- the table

PEERS = {
    # name: (class, workers when pipelined (0: same instance as the round trip), why not pipelined)
    "multiprocessing.Pipe": (PipePeer, 0, None),
    "posix_ipc semaphores + shared buffer": (SemPeer, 0, None),
    "futex ping-pong (shmpool core)": (FutexPeer, None, "a floor row: one request in flight"),
    "os.pipe one byte": (BytePipePeer, None, "a floor row: one request in flight"),
    "ZeroMQ REQ/REP (ipc)": (ZmqReqRepPeer, None, "a REQ socket has one request in flight at a time"),
    "ZeroMQ DEALER/ROUTER (ipc)": (ZmqDealerRouterPeer, 2, None),
    "faster-fifo": (FasterFifoPeer, 2, None),
    "multiprocessing.Queue": (QueuePeer, 2, None),
    "mpire apply": (MpirePeer, 2, None),
    "ProcessPoolExecutor": (PpePeer, 2, None),
    "iceoryx2 request-response (event wait)": (IoxPeer, 0, None),
    "iceoryx2 request-response (busy-spin)": (IoxSpinPeer, 0, None),
}
# Started and stopped inside each round: a spinning server would burn a core through every
# other system's turn.
PER_ROUND = {"iceoryx2 request-response (busy-spin)"}
# The optional package (the bench extra) each peer imports: where it is not installed, the peer is
# recorded as skipped without a client process (an interpreter and its imports, ~0.4 s of CPU, to
# learn what the main process can see).
REQUIRES = {"ZeroMQ REQ/REP (ipc)": "zmq", "ZeroMQ DEALER/ROUTER (ipc)": "zmq", "faster-fifo": "faster_fifo",
            "mpire apply": "mpire", "iceoryx2 request-response (event wait)": "iceoryx2",
            "iceoryx2 request-response (busy-spin)": "iceoryx2"}
