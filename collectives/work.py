"""Async work: the ``Work`` handle and the per-group worker threads.

Collectives of one group run on one background thread, in the order they were issued
(a FIFO queue), so async collectives complete in order. Point-to-point sends and
receives get a thread each (one for sends, one for receives), so that the usual
exchange ``isend(to=next); irecv(from=prev)`` cannot deadlock behind itself. The
waits inside the backends sleep in the kernel (futex, zmq poll, MPI) and numpy copies
and ufuncs release the GIL, so communication overlaps with the caller's compute.
"""
import collections
import threading

from .errors import CollectiveTimeoutError


class Work:
    """Handle of an async operation. ``wait()`` re-raises the op's error."""

    __slots__ = ("desc", "_done", "_exc", "_result", "_callbacks")

    def __init__(self, desc, result=None):
        self.desc = desc
        self._done = threading.Event()
        self._exc = None
        self._result = result
        self._callbacks = []

    def wait(self, timeout=None):
        """Block until done; raise its error. ``timeout`` (s): give up waiting (the op
        keeps running) with CollectiveTimeoutError. Returns True."""
        if not self._done.wait(timeout):
            raise CollectiveTimeoutError(
                f"{self.desc} did not complete within {timeout:g}s (Work.wait timeout; "
                f"the operation is still running)")
        if self._exc is not None:
            raise self._exc
        return True

    def is_completed(self):
        """True once the op finished, successfully or not."""
        return self._done.is_set()

    def is_success(self):
        return self._done.is_set() and self._exc is None

    def exception(self):
        return self._exc

    def result(self):
        """The output (array or list) of the op, after waiting for it."""
        self.wait()
        return self._result

    def _finish(self, exc=None):
        self._exc = exc
        self._done.set()
        for cb in self._callbacks:
            try:
                cb(self)
            except Exception:  # noqa: BLE001 - a callback must not kill the worker
                pass

    def add_done_callback(self, fn):
        """Call ``fn(work)`` when done (at once if already done)."""
        self._callbacks.append(fn)
        if self._done.is_set():
            fn(self)

    def __repr__(self):
        state = ("failed" if self._exc else "done") if self._done.is_set() else "pending"
        return f"<Work {self.desc} {state}>"


def completed_work(desc, result=None, exc=None):
    w = Work(desc, result)
    w._finish(exc)
    return w


class Worker:
    """One daemon thread draining a FIFO of (callable, Work)."""

    def __init__(self, name):
        self.name = name
        self._q = collections.deque()
        self._cv = threading.Condition()
        self._pending = 0
        self._thread = None
        self._stop = False

    def submit(self, fn, work):
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name,
                                                daemon=True)
                self._thread.start()
            self._q.append((fn, work))
            self._pending += 1
            self._cv.notify_all()
        return work

    def drain(self, timeout=None):
        """Wait until everything submitted so far has finished."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    @property
    def idle(self):
        return self._pending == 0

    def _loop(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._q or self._stop)
                if not self._q:
                    return
                fn, work = self._q.popleft()
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - delivered through Work.wait
                work._finish(e)
            else:
                work._finish()
            with self._cv:
                self._pending -= 1
                self._cv.notify_all()

    def stop(self, timeout=5.0):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
