"""C code generation for fused kernels, compiled once and cached on disk.

Each plan's kernels become one C translation unit: one function per fused
elementwise group (written from its expression, with eager's formulas) plus the
row kernels (layer norm, softmax) the plan uses. The unit is compiled with the system
C compiler (``$CC``, default ``cc``) into a shared library named by the SHA-256 of its
source and compiler command, in the kernel cache directory:
``$DEEPSEEK_JIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/deepseek/jit``, else
``~/.cache/deepseek/jit``. The library is written to a temp file and renamed into
place, so concurrent processes never see half a file; a process that finds the file
loads it with ctypes without running the compiler (``stats`` counts both).
"""
import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading

import numpy as np

from .fusion import SQRT1_2, TANH_C, _ERF_POLY

__all__ = ["CompileError", "cache_dir", "compiler", "build", "group_kernel", "stats",
           "ROW_KERNELS"]

stats = {"compiled": 0, "loaded": 0, "hits": 0}
_lock = threading.Lock()
_libs = {}  # source hash -> CDLL

_CTYPE = {"float32": "float", "float64": "double"}
_SUFFIX = {"float32": "f", "float64": ""}


class CompileError(RuntimeError):
    """The C compiler is missing or failed."""


def cache_dir():
    """The kernel cache directory (created on first use)."""
    from .. import env
    d = env.get("DEEPSEEK_JIT_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "deepseek", "jit")
    return d


def compiler():
    """The compiler command (a list): ``$CC`` split like a shell would, else ``cc``."""
    return shlex.split(os.environ.get("CC") or "cc")


_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off"]


# ---- source -----------------------------------------------------------------------------
def _helpers(dt):
    T, s = _CTYPE[dt], _SUFFIX[dt]
    c = [f"({T}){v!r}" for v in _ERF_POLY]
    poly = c[9]
    for k in range(8, 0, -1):
        poly = f"({c[k]} + t * {poly})"
    return f"""
static inline {T} ds_erf_{dt}({T} x) {{
    {T} z = fabs{s}(x);
    {T} t = ({T})1.0 / (({T})1.0 + ({T})0.5 * z);
    {T} poly = -z * z + {c[0]} + t * {poly};
    {T} r = ({T})1.0 - t * exp{s}(poly);
    return x >= 0 ? r : -r;
}}
static inline {T} ds_sigmoid_{dt}({T} x) {{
    {T} e = exp{s}(-fabs{s}(x));
    return x >= 0 ? ({T})1 / (({T})1 + e) : e / (({T})1 + e);
}}
"""


def _row_kernels(dt):
    T, s = _CTYPE[dt], _SUFFIX[dt]
    return f"""
void ds_layernorm_{dt}(long rows, long d, const {T}* x, const {T}* w, const {T}* b,
                       double eps, {T}* out) {{
    for (long r = 0; r < rows; r++) {{
        const {T}* xr = x + r * d; {T}* o = out + r * d;
        double acc = 0;
        for (long j = 0; j < d; j++) acc += xr[j];
        {T} mu = ({T})(acc / d);
        double acc2 = 0;
        for (long j = 0; j < d; j++) {{ {T} c = xr[j] - mu; acc2 += c * c; }}
        {T} var = ({T})(acc2 / d);
        {T} rstd = ({T})1.0 / sqrt{s}(var + ({T})eps);
        for (long j = 0; j < d; j++) {{
            {T} y = (xr[j] - mu) * rstd;
            if (w) y = y * w[j];
            if (b) y = y + b[j];
            o[j] = y;
        }}
    }}
}}
void ds_softmax_{dt}(long rows, long d, long causal_l, const {T}* x, {T}* out) {{
    for (long r = 0; r < rows; r++) {{
        const {T}* xr = x + r * d; {T}* o = out + r * d;
        long n = causal_l > 0 ? (r % causal_l) + 1 : d;
        if (n > d) n = d;
        {T} m = -INFINITY;
        for (long j = 0; j < n; j++) if (xr[j] > m || xr[j] != xr[j]) m = xr[j];
        if (!isfinite(m)) m = 0;
        double tot = 0;
        for (long j = 0; j < n; j++) {{ {T} e = exp{s}(xr[j] - m); o[j] = e; tot += e; }}
        {T} t = ({T})tot;
        if (causal_l > 0 && t == 0) t = 1;
        for (long j = 0; j < n; j++) o[j] = o[j] / t;
        for (long j = n; j < d; j++) o[j] = 0;
    }}
}}
"""


ROW_KERNELS = ("layernorm", "softmax")


# C text of the ops that are one expression of their operands: {x} (or {a}, {b}) the
# operands' C text, {T} the C type, {s} libm's suffix ("f" for float), {dt} the dtype
_C_TEMPLATES = {
    "add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
    "neg": "(-{x})", "exp": "exp{s}({x})", "log": "log{s}({x})", "sqrt": "sqrt{s}({x})",
    "tanh": "tanh{s}({x})", "abs": "fabs{s}({x})", "rsqrt": "(({T})1 / sqrt{s}({x}))",
    "relu": "ds_relu_{dt}({x})", "max": "ds_max_{dt}({a}, {b})", "min": "ds_min_{dt}({a}, {b})",
    "sigmoid": "ds_sigmoid_{dt}({x})", "silu": "({x} * ds_sigmoid_{dt}({x}))",
    "gelu": "({x} * (({T})0.5 * (({T})1.0 + ds_erf_{dt}({x} * ({T})" + repr(SQRT1_2) + "))))",
    "gelu_tanh": ("(({T})0.5 * {x} * (({T})1 + tanh{s}(({T})" + repr(TANH_C)
                  + " * ({x} + ({T})0.044715 * {x} * {x} * {x}))))"),
}


def _c_expr(e, dt, in_types):
    """C text of expression ``e`` computed in type ``dt`` (float32/float64)."""
    T, s = _CTYPE[dt], _SUFFIX[dt]
    op = e[0]
    if op == "in":
        return f"v{e[1]}"
    if op == "c":
        return f"(({T}){float(e[1])!r})"
    kids = [c for c in e[1:] if isinstance(c, tuple)]
    a = [_c_expr(c, dt, in_types) for c in kids]
    x = a[0] if a else None
    simple = _C_TEMPLATES.get(op)
    if simple is not None:
        return simple.format(x=x, a=x, b=a[1] if len(a) > 1 else None, T=T, s=s, dt=dt)
    if op == "pow":
        p = float(kids[1][1])
        if p == 2:
            return f"({x} * {x})"
        if p == 1:
            return x
        if p == 0.5:
            return f"sqrt{s}({x})"
        if p == -1:
            return f"(({T})1 / {x})"
        return f"pow{s}({x}, ({T}){p!r})"
    if op == "cast":
        src = _dtype_of(kids[0], in_types, dt)
        inner = _c_expr(kids[0], src, in_types)
        return f"(({_CTYPE[e[2]]}){inner})"
    raise KeyError(op)


def _dtype_of(e, in_types, default):
    if e[0] == "in":
        return in_types[e[1]]
    if e[0] == "cast":
        return e[2]
    for c in e[1:]:
        if isinstance(c, tuple) and c[0] != "c":
            return _dtype_of(c, in_types, default)
    return default


def group_kernel(name, expr, dt, in_types, patterns):
    """C source of one fused kernel ``void name(long outer, long inner, T* out, ...)``.

    ``patterns[k]``: how input k is read at element (o, j) of an (outer, inner) walk
    of the output: "full" (o * inner + j), "inner" (j) or "scalar" (0)."""
    T = _CTYPE[dt]
    params = ", ".join(f"const {_CTYPE[t]}* in{k}" for k, t in enumerate(in_types))
    loads = []
    for k, (t, p) in enumerate(zip(in_types, patterns)):
        idx = {"full": "o * inner + j", "inner": "j", "scalar": "0"}[p]
        loads.append(f"            {_CTYPE[t]} v{k} = in{k}[{idx}];")
    body = _c_expr(expr, dt, in_types)
    return (f"void {name}(long outer, long inner, {T}* out{', ' if params else ''}{params}) {{\n"
            f"    for (long o = 0; o < outer; o++) {{\n"
            f"        for (long j = 0; j < inner; j++) {{\n" + "\n".join(loads) + "\n"
            f"            out[o * inner + j] = {body};\n"
            f"        }}\n    }}\n}}\n")


def unit_source(kernels):
    """The whole translation unit for kernel sources ``kernels`` (with helpers)."""
    head = ["#include <math.h>", "#include <stddef.h>"]
    for dt in ("float32", "float64"):
        T = _CTYPE[dt]
        head.append(f"static inline {T} ds_relu_{dt}({T} x) {{ return (x > 0 || x != x) ? x : ({T})0; }}")
        head.append(f"static inline {T} ds_max_{dt}({T} a, {T} b) {{ return (a >= b || a != a) ? a : b; }}")
        head.append(f"static inline {T} ds_min_{dt}({T} a, {T} b) {{ return (a <= b || a != a) ? a : b; }}")
        head.append(_helpers(dt))
        head.append(_row_kernels(dt))
    return "\n".join(head) + "\n" + "\n".join(kernels)


# ---- building -------------------------------------------------------------------------
def build(source):
    """The ctypes library for C ``source``: from this process's table, from the disk
    cache, or compiled now (then cached). Raises CompileError."""
    cc = compiler()
    # keyed by source, flags and machine -- not by the compiler's name, so a process
    # whose $CC differs (or is missing) still finds what another one built
    key = hashlib.sha256("\0".join([source, " ".join(_FLAGS), platform.machine()])
                         .encode()).hexdigest()[:32]
    with _lock:
        lib = _libs.get(key)
        if lib is not None:
            stats["hits"] += 1
            return lib
        d = cache_dir()
        path = os.path.join(d, f"k{key}.so")
        if not os.path.isfile(path):
            _compile(cc, source, d, path)
            stats["compiled"] += 1
        else:
            stats["loaded"] += 1
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise CompileError(f"jit: could not load the kernel library {path}: {e}") from None
        _libs[key] = lib
        return lib


def _compile(cc, source, d, path):
    os.makedirs(d, exist_ok=True)
    fd, tmp_c = tempfile.mkstemp(prefix=".src.", suffix=".c", dir=d)
    tmp_so = tmp_c[:-2] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        cmd = cc + _FLAGS + ["-o", tmp_so, tmp_c, "-lm"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CompileError(f"jit: the C compiler {cc[0]!r} could not run: {e}") from None
        if r.returncode != 0 or not os.path.isfile(tmp_so):
            raise CompileError(f"jit: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
        os.replace(tmp_so, path)  # atomic: readers see no file or the whole library
    finally:
        for p in (tmp_c, tmp_so):
            try:
                os.unlink(p)
            except OSError:
                pass


def c_function(lib, name, n_ptr, n_long=2, doubles=()):
    """``lib.name`` with argtypes: ``n_long`` longs, then ``n_ptr`` pointers."""
    f = getattr(lib, name)
    f.argtypes = [ctypes.c_long] * n_long + [ctypes.c_void_p] * n_ptr
    f.restype = None
    return f


_probed = {}


def available():
    """True when the C compiler (``$CC``) runs here (checked once per command)."""
    cc = tuple(compiler())
    if cc not in _probed:
        try:
            r = subprocess.run(list(cc) + ["--version"], capture_output=True, timeout=30)
            _probed[cc] = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _probed[cc] = False
    return _probed[cc]


def addr(a):
    """The data address of numpy array ``a`` (an int for ctypes)."""
    return a.ctypes.data if a is not None else None


_ = np  # numpy is used by callers through addr()
