"""deepseek.native reductions and unscale_: every instruction set against the numpy path."""
import concurrent.futures
import contextlib

import ml_dtypes
import numpy as np
import pytest

from deepseek import native as N

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = [0, 1, 7, 15, 16, 17, 1023, (1 << 20) + 3]
SMALL = SIZES[:-1]
BACKENDS = ["numpy"] + (N.isa_list() or ["native"])
NATIVE = N.isa_list() or ["native"]
DTYPES = [np.float32, np.float64, np.float16, BF16, np.int32, np.int64]


@contextlib.contextmanager
def backend(name):
    if name == "numpy":
        with N.use_native(False):
            yield
        return
    if not N.isa_list():
        pytest.skip("deepseek._native is not built")
    with N.use_native(True), N.use_isa(name):
        yield


def unaligned(n, dtype):
    return np.empty(n + 1, dtype)[1:]


def make_inputs(n, dtype, k, seed, specials=True):
    rng = np.random.default_rng(seed)
    out = []
    for j in range(k):
        a = unaligned(n, dtype)
        if np.dtype(dtype).kind == "i":
            info = np.iinfo(dtype)
            a[:] = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        else:
            a[:] = rng.uniform(0.5, 1.5, n).astype(np.float32) * (j + 1)
            if specials and n > 3:
                a[rng.integers(0, n, 2)] = np.nan if j == 1 else -np.inf
        out.append(a)
    return out


def run(name, op, inputs, out=None):
    if out is None:
        out = unaligned(inputs[0].size, inputs[0].dtype)
    with backend(name), np.errstate(all="ignore"):
        N.reduce(op, inputs, out)
    return out


def assert_same(a, b):
    """Same values (NaN where NaN); integers and conversions are bit-exact anyway."""
    if a.dtype == BF16:
        a, b = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(a, b)


COMBOS = [pytest.param(d, op, id=f"{np.dtype(d).name}-{op}") for d in DTYPES
          for op in N.REDUCE_OPS if not (op == "avg" and np.dtype(d).kind == "i")]


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("dtype,op", COMBOS)
@pytest.mark.parametrize("n", SMALL)
@pytest.mark.parametrize("k", [2, 3])
def test_native_matches_numpy(name, dtype, op, n, k):
    inputs = make_inputs(n, dtype, k, seed=n)
    assert_same(run(name, op, inputs), run("numpy", op, inputs))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.int64],
                         ids=lambda d: np.dtype(d).name)
def test_large_and_reference(name, dtype):
    n = SIZES[-1]
    inputs = make_inputs(n, dtype, 4, seed=1, specials=False)
    got = run(name, "sum", inputs)
    if np.dtype(dtype).kind == "i":
        ref = inputs[0].copy()
        for x in inputs[1:]:
            ref += x                      # wraps around like the kernel
        np.testing.assert_array_equal(got, ref)
    else:
        ref = sum(x.astype(np.float64) for x in inputs)
        rtol = {np.dtype(np.float32): 1e-6}.get(np.dtype(dtype), 1e-2)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol)
    if np.dtype(dtype).kind == "f":
        avg = run(name, "avg", inputs)
        np.testing.assert_allclose(avg.astype(np.float64), ref / 4, rtol=rtol)


@pytest.mark.parametrize("name", BACKENDS)
def test_semantics(name):
    a = np.array([1, np.nan, 3, -np.inf, 5], np.float32)
    b = np.array([2, 0, np.nan, 1, 4], np.float32)
    with backend(name):
        np.testing.assert_array_equal(N.reduce("max", [a, b], np.empty(5, np.float32)),
                                      [2, np.nan, np.nan, 1, 5])
        np.testing.assert_array_equal(N.reduce("min", [a, b], np.empty(5, np.float32)),
                                      [1, np.nan, np.nan, -np.inf, 4])
        i = np.array([2**31 - 1, -2**31, 65536], np.int32)
        np.testing.assert_array_equal(N.reduce("sum", [i, i], np.empty(3, np.int32)),
                                      [-2, 0, 131072])
        np.testing.assert_array_equal(N.reduce("prod", [i, i], np.empty(3, np.int32)),
                                      [1, 0, 0])
        # fp16 accumulates in fp32: 2048 + 1 + 1 is 2050, not 2048 (fp16 steps by 2 there)
        h = [np.full(3, v, np.float16) for v in (2048, 1, 1)]
        np.testing.assert_array_equal(N.reduce("sum", h, np.empty(3, np.float16)), 2050)
        one = [np.arange(5, dtype=np.float64)]
        np.testing.assert_array_equal(N.reduce("avg", one, np.empty(5)), one[0])


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, BF16, np.int32], ids=lambda d: np.dtype(d).name)
def test_out_aliases_an_input(name, dtype):
    n = 1029
    inputs = make_inputs(n, dtype, 3, seed=7, specials=False)
    for nin in (1, 2, 3, 5):
        ins = (inputs * 2)[:nin]
        for op in ("sum", "max"):
            expected = run("numpy", op, [x.copy() for x in ins])
            assert_same(run(name, op, ins), expected)
            for k in range(nin):           # out is inputs[k]: 2-input fast paths included
                xs = [x.copy() for x in ins]
                run(name, op, xs, out=xs[k])
                assert_same(xs[k], expected)
    acc, other = inputs[0].copy(), inputs[1]
    with backend(name):
        assert N.reduce_inplace("max", acc, other) is acc
    assert_same(acc, run("numpy", "max", inputs[:2]))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", SIZES)
def test_unscale(name, dtype, n):
    rng = np.random.default_rng(n)
    g = unaligned(n, dtype)
    g[:] = rng.standard_normal(n).astype(np.float32) * 1000
    ref = (g.astype(np.float32) * np.float32(1 / 1024)).astype(dtype)
    with backend(name):
        assert N.unscale_(g, 1 / 1024) is False
        np.testing.assert_array_equal(g.view(np.uint16 if g.itemsize == 2 else np.uint32),
                                      ref.view(np.uint16 if g.itemsize == 2 else np.uint32))
        if n:
            for pos, bad in ((n - 1, np.inf), (0, np.nan), (n // 2, -np.inf)):
                g2 = g.copy()
                g2[pos] = bad
                assert N.unscale_([g.copy(), g2], 0.5) is True


@pytest.mark.parametrize("name", NATIVE)
def test_unscale_matches_numpy_with_nonfinite(name):
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float16, BF16):
        g = (rng.standard_normal(4099) * 1e4).astype(dtype)
        g[::97] = np.nan
        g[5::101] = np.inf
        a, b = g.copy(), g.copy()
        with backend("numpy"):
            fa = N.unscale_(a, 3.0)
        with backend(name):
            fb = N.unscale_(b, 3.0)
        assert fa is fb is True
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_threads_share_the_kernels():
    """Kernels release the GIL and keep no shared state: run them concurrently."""
    xs = [np.full(1 << 18, i, np.float32) for i in range(8)]

    def job(i):
        out = np.empty_like(xs[0])
        N.reduce("sum", [xs[i], xs[(i + 1) % 8]], out)
        return float(out[0]), float(out[-1])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, range(8)))
    assert results == [(float(i + (i + 1) % 8),) * 2 for i in range(8)]
