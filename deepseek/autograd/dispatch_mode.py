"""Dispatch modes: per-thread, nestable interception of every op at ``Function.apply``.

A mode is an object with ``__dispatch__(fn, args, kwargs)``; while it is active (``with
mode:`` or ``with dispatch_mode(mode):``) every ``Function.apply`` in *this thread*
(or asyncio task: the stack lives in a ``contextvars.ContextVar``) is routed to it
instead of running the op. AMP casting, the JIT tracer and the profiler are modes.
The model is PyTorch's ``TorchDispatchMode``::

    class Count(DispatchMode):
        def __init__(self):
            self.n = 0
        def __dispatch__(self, fn, args, kwargs):
            self.n += 1
            return fn.apply(*args, **kwargs)   # run the op (through the modes below)

    with Count() as c:
        y = (x * 2).sum()
    assert c.n == 2

Nesting composes: the innermost (last entered) mode sees an op first; while its
``__dispatch__`` runs it is taken off the stack, so calling ``fn.apply`` inside it
goes to the next mode out and finally to the op itself. Another thread sees none of
this thread's modes. When no mode is active anywhere, ``Function.apply`` pays one
test of a module global (see ``function._hooked``); the context variable is only read
when some thread has a mode or a global dispatch hook is installed.
"""
import contextvars
import threading

# The stack of active modes of this context, innermost last. A tuple: pushing and
# popping make new ones, so a token reset restores exactly the previous stack.
_modes = contextvars.ContextVar("deepseek_dispatch_modes", default=())

_lock = threading.Lock()
_n_entered = 0  # modes entered and not yet exited, over all threads


class DispatchMode:
    """Base class of dispatch modes; override ``__dispatch__``.

    The default ``__dispatch__`` runs the op unchanged, so a subclass that only
    observes (a profiler, a tracer) calls ``super().__dispatch__(...)`` or
    ``fn.apply(*args, **kwargs)`` and looks at the result. One mode object may be
    entered again while it is active (it is then on the stack twice).
    """

    def __dispatch__(self, fn, args, kwargs):
        """Handle one op call: ``fn`` is the ``Function`` subclass, ``args``/``kwargs``
        what ``fn.apply`` got. Return what the op should return."""
        return fn.apply(*args, **kwargs)

    def __enter__(self):
        tokens = self.__dict__.setdefault("_dispatch_tokens", [])
        tokens.append(_push(self))
        return self

    def __exit__(self, *exc):
        _pop(self.__dict__["_dispatch_tokens"].pop())
        return False


class dispatch_mode:
    """``with dispatch_mode(mode):`` makes ``mode`` active in this thread for the block.

    ``mode`` is a ``DispatchMode`` or any object with ``__dispatch__``. Returns the mode
    from ``__enter__``.
    """

    def __init__(self, mode):
        if not callable(getattr(mode, "__dispatch__", None)):
            raise TypeError(f"dispatch_mode: {type(mode).__name__} has no __dispatch__(fn, args, kwargs)")
        self.mode = mode
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_push(self.mode))
        return self.mode

    def __exit__(self, *exc):
        _pop(self._tokens.pop())
        return False


def active_modes():
    """The dispatch modes active in this thread, outermost first (a tuple)."""
    return _modes.get()


def _push(mode):
    global _n_entered
    token = _modes.set(_modes.get() + (mode,))
    with _lock:
        _n_entered += 1
        _refresh()
    return token


def _pop(token):
    global _n_entered
    _modes.reset(token)
    with _lock:
        _n_entered -= 1
        _refresh()


def _refresh():
    from . import function
    function._refresh_hooked()


def run_in_mode(cls, args, kwargs, modes):
    """Give the op to the innermost mode, with that mode off the stack meanwhile."""
    token = _modes.set(modes[:-1])
    try:
        return modes[-1].__dispatch__(cls, args, kwargs)
    finally:
        _modes.reset(token)


def any_entered():
    """True while some thread has a mode entered (read under no lock: a hint)."""
    return _n_entered > 0
