"""Future: the deferred result of a communication hook.

The shape of ``torch.futures.Future`` that comm hooks use: ``wait()`` returns the value,
``value()`` returns it once done, ``then(fn)`` chains a continuation. One difference,
on purpose: a continuation runs *lazily, in the thread that waits*, not on the
communication thread when the op completes. DDP waits its buckets in bucket order on
every rank, so a continuation may itself issue a collective (fp16_compress_hook
resends an overflowed bucket in fp32) and the collectives still line up across ranks;
it also keeps the decoding work off the thread that moves the next bucket.
"""


class Future:
    """A value that becomes available later.

    Made from a collectives ``Work`` (:meth:`from_work`), an immediate value
    (:meth:`completed`), or a continuation of another future (:meth:`then`).
    """

    __slots__ = ("_work", "_fn", "_parent", "_done", "_value", "_exc", "wire_dtypes")

    def __init__(self, work=None, value=None, fn=None, parent=None):
        self._work = work
        self._fn = fn
        self._parent = parent
        self._done = work is None and parent is None
        self._value = value
        self._exc = None
        # what went on the wire (e.g. ["fp16"], then "fp32-resend"): DDP's counters
        # read it after wait; hooks that do not say are counted as "hook"
        self.wire_dtypes = None

    @classmethod
    def from_work(cls, work, value=None):
        """A future done when the collectives ``work`` is (None: done already, as
        a blocking op returns); its value is ``value`` (the array the op wrote)."""
        return cls(work=work, value=value) if work is not None else cls.completed(value)

    @classmethod
    def completed(cls, value=None):
        """A future that is already done with ``value``."""
        return cls(value=value)

    def then(self, fn):
        """A future whose value is ``fn(self)``, run once, in the first thread that
        waits for it (after this future is done)."""
        return Future(fn=fn, parent=self)

    def done(self):
        """True once the value is there (a pending continuation counts as not done)."""
        if self._done:
            return True
        return self._parent is None and self._work.is_completed()

    def wait(self, timeout=None):
        """Block until done, run pending continuations, and return the value; raises
        the op's (or the continuation's) error."""
        if not self._done:
            self._resolve(timeout)
        if self._exc is not None:
            raise self._exc
        return self._value

    def value(self):
        """The value (waiting for it if need be)."""
        return self.wait()

    def _resolve(self, timeout=None):
        # the op's error (and a wait timeout, after which the op is still running) is
        # not cached: waiting again asks the work again. A continuation runs once; its
        # error is kept and raised by every later wait().
        if self._parent is not None:
            parent = self._parent
            parent.wait(timeout)
            try:
                self._value = self._fn(parent)
            except BaseException as e:  # noqa: BLE001 - delivered by every wait()
                self._exc = e
        else:
            self._work.wait(timeout)
        self._done = True
        self._work = self._parent = self._fn = None

    def __repr__(self):
        return f"<Future {'done' if self._done else 'pending'}>"
