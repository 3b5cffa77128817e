"""The C passes of native/src/dsn_conv.c (im2col, col2im, max pooling, Adadelta) against
the numpy code they replace: the same values through the ops (convolutions, max
pooling, the Adadelta optimizer) over odd geometries, the numpy path with the kernels
switched off, and bad input to the raw kernels."""
import numpy as np
import pytest

import deepseek
from deepseek import native
from deepseek.ops import conv as conv_mod

needs_ext = pytest.mark.skipif(not native.isa_list(),
                               reason="the extension deepseek._native is not built")
F = deepseek.nn.functional
DTYPES = [np.float32, np.float64]

CONVS = [  # (nd, input shape, weight shape, keyword arguments)
    (2, (2, 3, 9, 8), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2))),
    (2, (2, 4, 7, 7), (4, 2, 3, 3), dict(groups=2, padding=1)),
    (2, (3, 3, 6, 6), (2, 3, 2, 2), dict(stride=2)),                  # disjoint offsets
    (2, (2, 3, 6, 7), (2, 3, 3, 4), dict(padding="same")),           # asymmetric padding
    (2, (1, 2, 5, 5), (3, 2, 5, 5), dict(padding=2, stride=3)),
    (2, (0, 3, 5, 5), (2, 3, 2, 2), {}),                              # empty batch
    (2, (3, 5, 5), (2, 3, 3, 3), dict(padding=1)),                    # unbatched
    (1, (3, 2, 10), (5, 2, 3), dict(stride=3, padding=1)),
    (1, (2, 4, 9), (4, 1, 2), dict(groups=4, dilation=3)),
    (3, (1, 2, 5, 6, 4), (3, 2, 2, 3, 1), dict(padding=(1, 0, 0), dilation=(2, 1, 1))),
    (3, (2, 1, 4, 4, 4), (2, 1, 3, 3, 3), dict(stride=2, padding=1)),
]


def _conv(enabled, nd, x, w, b, kw):
    """y, x.grad, w.grad, b.grad of one convolution, with the C passes on or off."""
    with native.use_native(enabled):
        xt = deepseek.tensor(x, requires_grad=True)
        wt = deepseek.tensor(w, requires_grad=True)
        bt = deepseek.tensor(b, requires_grad=True)
        y = getattr(F, f"conv{nd}d")(xt, wt, bt, **kw)
        g = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
        y.backward(deepseek.tensor(g))
        return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CONVS)))
@pytest.mark.parametrize("chunk", [1, 200, None])
def test_convolution_passes_give_the_numpy_values(monkeypatch, dtype, case, chunk):
    """im2col and the chunked column gradient + col2im: numpy's values exactly, whatever
    the number of samples per chunk (1, a few, all)."""
    if chunk is not None:
        monkeypatch.setattr(conv_mod, "_CHUNK_ELEMENTS", chunk)
    nd, xs, ws, kw = CONVS[case]
    rng = np.random.default_rng(case)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    got, want = _conv(True, nd, x, w, b, kw), _conv(False, nd, x, w, b, kw)
    for name, a, e in zip(("y", "x.grad", "w.grad", "b.grad"), got, want):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        assert np.array_equal(a, e), name


@needs_ext
def test_convolution_of_a_strided_input():
    """A transposed (C, N)-ordered input, as a convolution's output is, and a sliced one."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 3, 9, 11)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = np.zeros(2, np.float32)
    for x in (base.transpose(1, 0, 2, 3)[:, :3], base[:, :, ::2, 1:]):
        got = _conv(True, 2, x, w, b, dict(padding=1))
        want = _conv(False, 2, np.ascontiguousarray(x), w, b, dict(padding=1))
        for a, e in zip(got, want):
            assert np.array_equal(a, e)


POOLS = [  # (nd, input shape, keyword arguments)
    (2, (2, 3, 9, 8), dict(kernel_size=2)),
    (2, (2, 3, 9, 8), dict(kernel_size=3, stride=1, padding=1)),     # overlapping windows
    (2, (3, 9, 8), dict(kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2), ceil_mode=True)),
    (2, (1, 2, 7, 7), dict(kernel_size=3, stride=2, ceil_mode=True)),
    (2, (0, 3, 4, 4), dict(kernel_size=2)),                           # empty batch
    (1, (2, 3, 11), dict(kernel_size=3, stride=2, ceil_mode=True, padding=1)),
    (1, (3, 1), dict(kernel_size=1)),
    (3, (1, 2, 5, 6, 4), dict(kernel_size=2, stride=1)),
    (3, (2, 1, 5, 5, 5), dict(kernel_size=(3, 2, 2), stride=2, padding=1, ceil_mode=True)),
]


def _pool(enabled, nd, x, kw, return_indices, backward_enabled=None):
    """y, x.grad (and the indices) of one max pooling; the kernels on or off (backward:
    ``backward_enabled``, by default the same as forward)."""
    with native.use_native(enabled):
        xt = deepseek.tensor(x, requires_grad=True)
        out = getattr(F, f"max_pool{nd}d")(xt, return_indices=return_indices, **kw)
    y, idx = out if return_indices else (out, None)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(x.dtype)
    with native.use_native(enabled if backward_enabled is None else backward_enabled):
        y.backward(deepseek.tensor(g))
    got = [y.detach().numpy(), xt.grad.numpy()]
    return got + ([idx.numpy()] if return_indices else [])


def _with_ties(x):
    """Many equal values (the first maximum of a window must win, as in numpy)."""
    return np.round(x * 2) / 2


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(POOLS)))
@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool_gives_the_numpy_values(dtype, case, return_indices):
    nd, xs, kw = POOLS[case]
    x = _with_ties(np.random.default_rng(case).standard_normal(xs)).astype(dtype)
    got, want = _pool(True, nd, x, kw, return_indices), _pool(False, nd, x, kw, return_indices)
    for a, e in zip(got, want):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert np.array_equal(a, e)


@needs_ext
def test_max_pool_nan_and_infinity_follow_numpy_argmax():
    """A NaN is a window's maximum (the first NaN: numpy's argmax); infinities compare."""
    x = np.random.default_rng(3).standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan
    x[0, 1, 2, 2] = np.inf
    x[1, 0, 4:6, 4:6] = -np.inf
    x[1, 1, 0, 0] = np.nan
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1)):
        got, want = _pool(True, 2, x, kw, True), _pool(False, 2, x, kw, True)
        for a, e in zip(got, want):
            assert np.array_equal(a, e, equal_nan=True)


@needs_ext
@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=1)])
def test_max_pool_of_a_convolution_output_keeps_its_layout(kw):
    """The (C, N)-ordered input of a convolution's output gets its gradient in that
    order; the values are numpy's; the kernels may be switched off before backward."""
    base = np.random.default_rng(4).standard_normal((5, 3, 8, 8)).astype(np.float32)
    x = base.transpose(1, 0, 2, 3)  # (N, C) view of (C, N) memory
    want = _pool(False, 2, np.ascontiguousarray(x), kw, False)
    for backward_enabled in (True, False):
        with native.use_native(True):
            xt = deepseek.tensor(x, requires_grad=True)
            if xt._data.strides[0] > xt._data.strides[1]:
                pytest.skip("deepseek.tensor copied the input into (N, C) order")
        got = _pool(True, 2, x, kw, False, backward_enabled)
        for a, e in zip(got, want):
            assert np.array_equal(a, e)


def test_numpy_path_runs_with_the_kernels_off():
    """DEEPSEEK_NATIVE=0 / use_native(False): no C pass is chosen, the ops still work."""
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    with native.use_native(False):
        assert conv_mod.native_kernel("conv_im2col", x) is None
        xt = deepseek.tensor(x, requires_grad=True)
        w = deepseek.tensor(np.ones((2, 3, 3, 3), np.float32), requires_grad=True)
        y = F.max_pool2d(F.conv2d(xt, w, padding=1), 2)
        y.sum().backward()
    expect = np.zeros((2, 2, 6, 6), np.float32)
    for i in range(6):
        for j in range(6):
            expect[:, :, i, j] = x[:, :, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].sum(axis=(1, 2, 3))[:, None]
    win = expect.reshape(2, 2, 3, 2, 3, 2).max(axis=(3, 5))
    assert np.allclose(y.detach().numpy(), win, rtol=1e-5, atol=1e-5)
    assert xt.grad.shape == x.shape and np.isfinite(xt.grad.numpy()).all()


def test_kernels_are_not_used_for_other_dtypes_and_arrays():
    assert conv_mod.native_kernel("conv_im2col", np.zeros(3, np.float16)) is None
    assert conv_mod.native_kernel("conv_im2col", np.zeros(3, np.float32),
                                  np.zeros(3, np.float64)) is None


# ------------------------------------------------------------------ Adadelta

def _adadelta(enabled, dtype, steps=4, **kw):
    rng = np.random.default_rng(6)
    ps = [deepseek.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True)
          for s in ((33, 7), (5,), (1,))]
    opt = deepseek.optim.Adadelta(ps, **kw)
    with native.use_native(enabled):
        for _ in range(steps):
            for p in ps:
                p.grad = deepseek.tensor(rng.standard_normal(p.shape).astype(dtype))
            opt.step()
    state = [opt.state[p][n].numpy() for p in ps for n in ("square_avg", "acc_delta")]
    return [p.detach().numpy() for p in ps] + state


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1),
                                dict(maximize=True), dict(weight_decay=1e-2, maximize=True)])
def test_adadelta_one_pass_is_the_numpy_sequence_bit_for_bit(dtype, kw):
    got, want = _adadelta(True, dtype, **kw), _adadelta(False, dtype, **kw)
    for a, e in zip(got, want):
        assert a.dtype == e.dtype and np.array_equal(a, e)


def test_adadelta_half_parameters_still_step():
    """float16 parameters keep the float32 numpy math (no one-pass kernel for them)."""
    p = deepseek.tensor(np.ones(8, np.float16), requires_grad=True)
    opt = deepseek.optim.Adadelta([p])
    p.grad = deepseek.tensor(np.ones(8, np.float16))
    opt.step()
    assert p.dtype == deepseek.float16 and (p.detach().numpy() < 1).all()


# ------------------------------------------------------------------ bad input

GEOM = ((1, 1, 2), (1, 1, 1), (0, 0, 0), (1, 1, 1), (1, 1, 3))


@needs_ext
def test_raw_kernels_refuse_bad_input():
    ext = native._ext
    x = np.zeros((1, 1, 1, 1, 4), np.float32)
    with pytest.raises(ValueError, match="whole samples"):
        ext.conv_im2col(x, np.empty(5, np.float32), 0, *GEOM)
    with pytest.raises(ValueError, match="whole samples"):
        ext.conv_im2col(x, np.empty(6, np.float32), 1, *GEOM)
    with pytest.raises(TypeError, match="float32"):
        ext.conv_im2col(x, np.empty(6, np.float64), 0, *GEOM)
    with pytest.raises(TypeError):
        ext.conv_im2col(x.astype(np.int32), np.empty(6, np.int32), 0, *GEOM)
    with pytest.raises(ValueError, match="dims"):
        ext.conv_im2col(x[0], np.empty(6, np.float32), 0, *GEOM)
    with pytest.raises(ValueError, match="geometry"):
        ext.conv_im2col(x, np.empty(6, np.float32), 0, (1, 1, 0), *GEOM[1:])
    with pytest.raises(ValueError, match="whole samples"):
        ext.conv_col2im(np.empty(7, np.float32), np.empty((1, 1, 1, 1, 4), np.float32), 0, *GEOM)
    with pytest.raises(ValueError, match="whole samples"):
        ext.conv_col2im(np.empty(6, np.float32), np.empty((1, 1, 1, 1, 4), np.float32), 1, *GEOM)
    with pytest.raises(ValueError):  # read-only output
        ro = np.empty((1, 1, 1, 1, 4), np.float32)
        ro.flags.writeable = False
        ext.conv_col2im(np.empty(6, np.float32), ro, 0, *GEOM)
    y, idx = np.empty(3, np.float32), np.empty(3, np.int64)
    with pytest.raises(TypeError, match="int64"):
        ext.maxpool_fwd(x, y, idx.astype(np.int32), *GEOM)
    with pytest.raises(ValueError, match="need 3"):
        ext.maxpool_fwd(x, y[:2], idx, *GEOM)
    gx = np.empty((1, 1, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        ext.maxpool_bwd(np.ones(3, np.float32), np.array([0, 4, 1]), gx)
    with pytest.raises(ValueError, match="outside"):
        ext.maxpool_bwd(np.ones(3, np.float32), np.array([0, -1, 1]), gx)
    with pytest.raises(ValueError, match="planes"):
        ext.maxpool_bwd(np.ones(3, np.float32), np.zeros(2, np.int64), gx)
    with pytest.raises(ValueError, match="contiguous"):
        ext.maxpool_bwd(np.ones(3, np.float32), np.zeros(3, np.int64),
                        np.empty((1, 1, 8), np.float32)[:, :, ::2])
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="bytes"):
        ext.adadelta(p, np.zeros(3, np.float32), np.zeros(4, np.float32),
                     np.zeros(4, np.float32), 1.0, 0.9, 1e-6, 0.0)
    with pytest.raises(ValueError, match="overlap"):
        ext.adadelta(p, np.zeros(4, np.float32), p, np.zeros(4, np.float32), 1.0, 0.9, 1e-6, 0.0)
    with pytest.raises(TypeError, match="float64"):
        ext.adadelta(p.astype(np.float64), np.zeros(4, np.float32), np.zeros(4),
                     np.zeros(4), 1.0, 0.9, 1e-6, 0.0)
