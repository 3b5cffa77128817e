"""Grad mode: no_grad / enable_grad / inference_mode / set_grad_enabled (thread-local)."""
import functools
import threading


class _State(threading.local):
    enabled = True


_state = _State()


def is_grad_enabled():
    """True when ops record the graph for backward in this thread."""
    return _state.enabled


class _GradModeContext:
    """Base of the grad-mode context managers; also usable as decorators."""

    _target = True

    def __new__(cls, *args, **kwargs):
        # bare decorator: ``@no_grad`` as well as ``@no_grad()`` (PyTorch accepts both)
        if cls is not set_grad_enabled and len(args) == 1 and not kwargs and callable(args[0]):
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        self._prev = _state.enabled
        _state.enabled = self._target
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradModeContext):
    """Disable graph recording (like torch.no_grad)."""
    _target = False


class enable_grad(_GradModeContext):
    """Re-enable graph recording inside a no_grad block."""
    _target = True


class inference_mode(_GradModeContext):
    """Like no_grad; tensors made inside carry no graph (like torch.inference_mode)."""

    def __init__(self, mode=True):
        self._target = not mode

    def __call__(self, fn):
        mode = not self._target

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with inference_mode(mode):
                return fn(*args, **kwargs)
        return wrapper


class set_grad_enabled(_GradModeContext):
    """Set grad mode on or off, as a function call or a context manager."""

    def __init__(self, mode):
        self._prev = _state.enabled
        self._target = bool(mode)
        _state.enabled = self._target

    def __enter__(self):
        return self
