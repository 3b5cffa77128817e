"""How tensors print: PyTorch's formatter (torch/_tensor_str.py), so ``print(loss)``
shows ``tensor(1.5000)`` and a matrix prints with PyTorch's widths, precision,
scientific/integer modes, line wrapping and summarisation (``set_printoptions``)."""
import math

import numpy as np

from . import dtypes as _dt


def _opts():
    from ._api_extra import _print_options
    return _print_options


class _Formatter:
    def __init__(self, values, floating):
        o = _opts()
        self.floating, self.precision = floating, o["precision"]
        self.int_mode, self.sci_mode, self.max_width = True, False, 1
        if not floating:
            for v in values:
                self.max_width = max(self.max_width, len(str(v)))
            return
        finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
        if finite:
            lo, hi = min(finite), max(finite)
            self.int_mode = all(v == math.ceil(v) for v in finite)
            if self.int_mode:
                if hi / lo > 1000.0 or hi > 1.0e8:
                    self.sci_mode = True
                    self.max_width = max(len(f"{v:.{self.precision}e}") for v in self._signed(values))
                else:
                    self.max_width = max(len(f"{v:.0f}") + 1 for v in self._signed(values))
            else:
                if hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4:
                    self.sci_mode = True
                    self.max_width = max(len(f"{v:.{self.precision}e}") for v in self._signed(values))
                else:
                    self.max_width = max(len(f"{v:.{self.precision}f}") for v in self._signed(values))
        if o["sci_mode"] is not None:
            self.sci_mode = o["sci_mode"]

    @staticmethod
    def _signed(values):
        return [v for v in values if math.isfinite(v) and v != 0]

    def width(self):
        return self.max_width

    def format(self, v):
        if self.floating:
            if self.sci_mode:
                s = f"{v:{self.max_width}.{self.precision}e}"
            elif self.int_mode:
                s = f"{v:.0f}"
                if not (math.isinf(v) or math.isnan(v)):
                    s += "."
            else:
                s = f"{v:.{self.precision}f}"
        else:
            s = str(v)
        return (self.max_width - len(s)) * " " + s


def _summarized(a, edge):
    if a.ndim == 0:
        return a
    if a.shape[0] > 2 * edge:
        a = np.concatenate([a[:edge], a[-edge:]])
    return np.stack([_summarized(x, edge) for x in a]) if a.ndim > 1 else a


def _body(a, fmt, indent, summarize, edge, linewidth):
    dim = a.ndim
    if dim == 0:
        return fmt.format(a.item())
    if dim == 1:
        n = a.shape[0]
        if summarize and n > 2 * edge:
            data = [fmt.format(v) for v in a[:edge].tolist()] + [" ..."] + [fmt.format(v) for v in a[-edge:].tolist()]
        else:
            data = [fmt.format(v) for v in a.tolist()]
        per_line = max(1, int(math.floor((linewidth - indent) / (fmt.width() + 2))))
        lines = [", ".join(data[i:i + per_line]) for i in range(0, len(data), per_line)]
        return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"
    n = a.shape[0]
    if summarize and n > 2 * edge:
        parts = ([_body(a[i], fmt, indent + 1, summarize, edge, linewidth) for i in range(edge)] + ["..."]
                 + [_body(a[i], fmt, indent + 1, summarize, edge, linewidth) for i in range(n - edge, n)])
    else:
        parts = [_body(a[i], fmt, indent + 1, summarize, edge, linewidth) for i in range(n)]
    return "[" + ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(parts) + "]"


def array_str(arr, indent):
    """The bracketed body of ``arr`` as PyTorch prints it (after ``indent`` columns)."""
    o = _opts()
    floating = _dt.is_floating(arr.dtype)
    a = arr.astype(np.float64) if floating else arr
    if a.dtype == np.bool_:
        a = a.astype(object)
    summarize = a.size > o["threshold"]
    vals = _summarized(a, o["edgeitems"]) if summarize else a
    fmt = _Formatter([float(v) for v in np.asarray(vals).reshape(-1).tolist()] if floating
                     else np.asarray(vals).reshape(-1).tolist(), floating)
    return _body(a, fmt, indent, summarize, o["edgeitems"], o["linewidth"])


def tensor_repr(t):
    """``repr(tensor)`` in PyTorch's form: ``tensor([...], dtype=..., grad_fn=<...>)``."""
    from .backend import to_device
    arr = np.asarray(to_device(t._data, "cpu"))
    prefix = "tensor("
    extra = []
    if arr.size == 0:
        body = "[]"
        if arr.shape != (0,):
            extra.append(f"size={tuple(arr.shape)}")
    else:
        body = array_str(arr, len(prefix))
    if t.dtype not in (_dt.float32, _dt.int64, _dt.bool_) or (t.dtype == _dt.float32 and
                                                               _dt.get_default_dtype() != _dt.float32):
        extra.append(f"dtype=deepseek.{t.dtype.name}")
    if t.device.type != "cpu":
        extra.append(f"device='{t.device}'")
    if t.grad_fn is not None:
        extra.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extra.append("requires_grad=True")
    return prefix + body + "".join(", " + e for e in extra) + ")"
