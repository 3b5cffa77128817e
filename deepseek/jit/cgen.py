"""C code generation for fused kernels, compiled once and cached on disk.

Each plan's fused kernels become one C translation unit: one function per fused
elementwise group (written from its expression, with eager's formulas); the row
kernels (layer norm, softmax) are a second unit, the same for every plan of a dtype,
built at the same time (``build_many``). A unit is compiled with the system C
compiler (``$CC``, default ``cc``) into a shared library named by the SHA-256 of its
source and compiler flags, in the kernel cache directory:
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

from .fusion import SQRT1_2, TANH_C

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


# -fno-trapping-math: comparisons may not trap, or GCC will not vectorise the selects
# (clamps, relu, max); no value changes, and -ffp-contract=off keeps eager's roundings.
# -O2 with the vectoriser (dynamic cost model: alias checks allowed) instead of -O3:
# half the compile time, and the row kernels run as fast or faster (less unrolling).
_FLAGS = ["-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-fPIC", "-shared",
          "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]


def _cpu_flags():
    """-mavx2 where this CPU has AVX2 (twice the lanes for the vectorised loops; the
    same IEEE operations, so the same values). The flags are part of the cache key, so
    a cache shared with a machine without AVX2 never hands it these libraries."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return ["-mavx2"] if " avx2" in line else []
    except OSError:
        pass
    return []


_FLAGS += _cpu_flags()


# ---- source -----------------------------------------------------------------------------
# eager's float32 erf (native/src/dsn_module.c: erf_f32, the Eigen/XLA rational form on
# [-4, 4]), term for term: no libm call, so the loop vectorises, and the same float32
# operations in the same order give eager's bits. float64 is libm's erf, as eager's.
_ERF_F32_P = ("-2.72614225801306e-10f", "2.77068142495902e-08f", "-2.10102402082508e-06f",
              "-5.69250639462346e-05f", "-7.34990630326855e-04f", "-2.95459980854025e-03f",
              "-1.60960333262415e-02f")
_ERF_F32_Q = ("-1.45660718464996e-05f", "-2.13374055278905e-04f", "-1.68282697438203e-03f",
              "-7.37332916720468e-03f", "-1.42647390514189e-02f")


def _erf_source(dt):
    if dt != "float32":
        return f"static inline double ds_erf_{dt}(double x) {{ return erf(x); }}"
    p, q = _ERF_F32_P, _ERF_F32_Q
    lines = [f"    float p = x2 * {p[0]} + {p[1]};"]
    lines += [f"    p = x2 * p + {c};" for c in p[2:]]
    lines += ["    p = x * p;", f"    float q = x2 * {q[0]} + {q[1]};"]
    lines += [f"    q = x2 * q + {c};" for c in q[2:]]
    body = "\n".join(lines)
    return f"""static inline float ds_erf_float32(float a) {{
    float x = a < -4.0f ? -4.0f : a;
    x = x > 4.0f ? 4.0f : x;
    float x2 = x * x;
{body}
    return p / q;
}}"""


# exp for the softmax rows: float32 is Cephes' expf (range reduction by ln 2, a degree-6
# polynomial, 2^n from the exponent bits; relative error ~1.5e-7), with no libm call so
# the row loops vectorise (libm's expf is a call per element, ~10x slower); below
# -87.34 it is 0 (exp(-inf) of a masked score), above 88.72 inf as libm's, NaN stays
# NaN. float64 is libm's exp.
_EXP_F32 = """static inline float ds_exp_float32(float x) {
    float xc = x < -87.33654f ? -87.33654f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    xc = x != x ? 0.0f : xc;
    /* n = round(xc / ln 2) by adding 1.5 * 2^23: the sum's low mantissa bits are n */
    union { float f; int i; } t;
    t.f = xc * 1.44269504088896341f + 12582912.0f;
    float nf = t.f - 12582912.0f;
    int n = t.i - 0x4B400000;
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    union { unsigned u; float f; } sc;
    sc.u = (unsigned)(n + 127) << 23;
    float res = y * sc.f;
    res = x < -87.33654f ? 0.0f : res;
    res = x > 88.72283f ? INFINITY : res;
    return x != x ? x : res;
}
"""


def _helpers(dt):
    T, s = _CTYPE[dt], _SUFFIX[dt]
    exp = _EXP_F32 if dt == "float32" else "static inline double ds_exp_float64(double x) { return exp(x); }\n"
    return _erf_source(dt) + "\n" + exp + f"""
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
        /* double sums in 8 independent lanes, so the loops vectorise */
        double al[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};
        long j = 0;
        for (; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; l++) al[l] += xr[j + l];
        double acc = 0;
        for (int l = 0; l < 8; l++) acc += al[l];
        for (; j < d; j++) acc += xr[j];
        {T} mu = ({T})(acc / d);
        for (int l = 0; l < 8; l++) al[l] = 0;
        for (j = 0; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; l++) {{ {T} c = xr[j + l] - mu; al[l] += c * c; }}
        double acc2 = 0;
        for (int l = 0; l < 8; l++) acc2 += al[l];
        for (; j < d; j++) {{ {T} c = xr[j] - mu; acc2 += c * c; }}
        {T} var = ({T})(acc2 / d);
        {T} rstd = ({T})1.0 / sqrt{s}(var + ({T})eps);
        for (j = 0; j < d; j++) {{
            {T} y = (xr[j] - mu) * rstd;
            if (w) y = y * w[j];
            if (b) y = y + b[j];
            o[j] = y;
        }}
    }}
}}
void ds_softmax_{dt}(long rows, long d, long causal_l, const {T}* x, {T}* out,
                     const void* mask, long mkind, long d1, long d2, long s0, long s1,
                     long s2) {{
    for (long r = 0; r < rows; r++) {{
        const {T}* xr = x + r * d; {T}* o = out + r * d;
        long n = causal_l > 0 ? (r % causal_l) + 1 : d;
        if (n > d) n = d;
        if (mkind) {{
            /* row r is (i0, i1, i2) of the scores' leading dims (., d1, d2) */
            long i2 = r % d2, i1 = (r / d2) % d1, i0 = r / d2 / d1;
            long off = i0 * s0 + i1 * s1 + i2 * s2;
            if (mkind == 1) {{
                const {T}* mr = (const {T}*)mask + off;
                for (long j = 0; j < n; j++) o[j] = xr[j] + mr[j];
            }} else {{
                const unsigned char* mr = (const unsigned char*)mask + off;
                for (long j = 0; j < n; j++) o[j] = mr[j] ? xr[j] : ({T})-INFINITY;
            }}
            xr = o;
        }}
        /* 8 independent lanes: the loops vectorise (a max and a double sum in any
           order are the same max and, to double precision, the same sum) */
        {T} ml[8];
        for (int l = 0; l < 8; l++) ml[l] = -INFINITY;
        long j = 0;
        for (; j + 8 <= n; j += 8)
            for (int l = 0; l < 8; l++) {{ {T} v = xr[j + l]; ml[l] = (v > ml[l] || v != v) ? v : ml[l]; }}
        {T} m = -INFINITY;
        for (int l = 0; l < 8; l++) m = (ml[l] > m || ml[l] != ml[l]) ? ml[l] : m;
        for (; j < n; j++) if (xr[j] > m || xr[j] != xr[j]) m = xr[j];
        if (!isfinite(m)) m = 0;
        for (j = 0; j < n; j++) o[j] = ds_exp_{dt}(xr[j] - m);
        double tl[8] = {{0, 0, 0, 0, 0, 0, 0, 0}};
        for (j = 0; j + 8 <= n; j += 8)
            for (int l = 0; l < 8; l++) tl[l] += o[j + l];
        double tot = 0;
        for (int l = 0; l < 8; l++) tot += tl[l];
        for (; j < n; j++) tot += o[j];
        {T} t = ({T})tot;
        if ((causal_l > 0 || mkind) && t == 0) t = 1;
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


def _head():
    head = ["#include <math.h>", "#include <stddef.h>"]
    for dt in ("float32", "float64"):
        T = _CTYPE[dt]
        head.append(f"static inline {T} ds_relu_{dt}({T} x) {{ return (x > 0 || x != x) ? x : ({T})0; }}")
        head.append(f"static inline {T} ds_max_{dt}({T} a, {T} b) {{ return (a >= b || a != a) ? a : b; }}")
        head.append(f"static inline {T} ds_min_{dt}({T} a, {T} b) {{ return (a <= b || a != a) ? a : b; }}")
        head.append(_helpers(dt))
    return head


def unit_source(kernels):
    """The translation unit of the fused kernel sources ``kernels`` (with helpers)."""
    return "\n".join(_head()) + "\n" + "\n".join(kernels)


def row_source(dtypes):
    """The translation unit of the row kernels (layer norm, softmax) of ``dtypes``: the
    same for every plan, so one library per cache serves them all, and it is built
    next to (at the same time as) a plan's own unit (``build_many``)."""
    return "\n".join(_head() + [_row_kernels(dt) for dt in dtypes]) + "\n"


# ---- building -------------------------------------------------------------------------
_building = {}  # source hash -> the lock its (one) compilation holds


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
        once = _building.setdefault(key, threading.Lock())
    # one lock per library, not one for all: different units compile in parallel
    with once:
        with _lock:
            lib = _libs.get(key)
            if lib is not None:
                stats["hits"] += 1
                return lib
        d = cache_dir()
        path = os.path.join(d, f"k{key}.so")
        compiled = not os.path.isfile(path)
        if compiled:
            _compile(cc, source, d, path)
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise CompileError(f"jit: could not load the kernel library {path}: {e}") from None
        with _lock:
            stats["compiled" if compiled else "loaded"] += 1
            _libs[key] = lib
        return lib


def build_many(sources):
    """``[build(s) for s in sources]``, the compilations running at the same time (the
    compiler is a subprocess: the threads only wait). Raises the first error."""
    if len(sources) <= 1:
        return [build(s) for s in sources]
    out = [None] * len(sources)
    errs = []

    def one(i):
        try:
            out[i] = build(sources[i])
        except Exception as e:  # re-raised in the caller's thread below
            errs.append(e)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(1, len(sources))]
    for t in threads:
        t.start()
    one(0)
    for t in threads:
        t.join()
    if errs:
        raise errs[0]
    return out


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
