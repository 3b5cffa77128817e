"""The C float32 kernels that repeat numpy sequences of the ops (layer norm, softmax
rows, the GELU gradient's tail): bit for bit, on every instruction set this CPU runs,
through the ops and called directly; bad input."""
import numpy as np
import pytest

import deepseek
from deepseek import native
from deepseek.ops.normalization import _norm_backward, _stats
from deepseek.ops.elementwise import _SQRT2PI_INV
from deepseek.ops.softmax import _stable_exp

ISAS = native.isa_list()
needs_ext = pytest.mark.skipif(not ISAS, reason="the extension deepseek._native is not built")
F = deepseek.nn.functional


def _numpy_forward(x, w, b, eps):
    xhat, rstd, _, _ = _stats(np, x, (x.ndim - 1,), eps)
    y = xhat * w if w is not None else xhat.copy()
    if b is not None:
        y += b
    return y, xhat, rstd.reshape(-1)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 17, 64, 127, 128, 129, 384, 1031, 4096])
def test_kernels_are_the_numpy_sequence_bit_for_bit(isa, n):
    rng = np.random.default_rng(n)
    rows = 13
    x = (rng.standard_normal((rows, n)) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal((rows, n)).astype(np.float32)
    for wi, bi in ((w, b), (w, None), (None, b), (None, None)):
        y_ref, xhat_ref, rstd_ref = _numpy_forward(x, wi, bi, 1e-5)
        y, xhat, rstd = np.empty_like(x), np.empty_like(x), np.empty(rows, np.float32)
        with native.use_isa(isa):
            native._ext.layer_norm(x, wi, bi, y, xhat, rstd, n, 1e-5)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(xhat, xhat_ref)
        np.testing.assert_array_equal(rstd, rstd_ref)
        gx, gw, gb = np.empty_like(x), np.empty(n, np.float32), np.empty(n, np.float32)
        with native.use_isa(isa):
            native._ext.layer_norm_backward(g, xhat, rstd, wi, gx, gw, gb, n)
        gxhat = g * wi if wi is not None else g
        np.testing.assert_array_equal(gx, _norm_backward(np, gxhat, xhat_ref,
                                                         rstd_ref[:, None], (1,)))
        np.testing.assert_array_equal(gw, (g * xhat_ref).sum(axis=0))
        np.testing.assert_array_equal(gb, g.sum(axis=0))


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape,ns", [((32, 16, 64), (64,)), ((4, 6, 10), (6, 10)),
                                      ((5, 130), (130,)), ((3, 1), (1,))])
def test_layer_norm_op_native_and_numpy_agree_exactly(isa, shape, ns):
    """F.layer_norm forward and all three gradients, C kernels against numpy."""
    def run(use):
        rng = np.random.default_rng(7)
        x = deepseek.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
        k = int(np.prod(ns))
        w = deepseek.tensor(rng.standard_normal(ns).astype(np.float32), requires_grad=True)
        b = deepseek.tensor(np.linspace(-1, 1, k, dtype=np.float32).reshape(ns),
                            requires_grad=True)
        gy = deepseek.tensor(rng.standard_normal(shape).astype(np.float32))
        with native.use_native(use), native.use_isa(isa):
            y = F.layer_norm(x, ns, w, b)
            y.backward(gy)
        return [y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()]
    for got, want in zip(run(True), run(False)):
        np.testing.assert_array_equal(got, want)


@needs_ext
def test_layer_norm_op_takes_numpy_for_strided_and_other_dtypes():
    """Strided input and float64 run the numpy sequence (the kernel's order is numpy's
    only on C-contiguous float32 rows) and still match PyTorch's formula."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((8, 40)).astype(np.float64)
    for x in (deepseek.tensor(base.astype(np.float32))[:, ::2], deepseek.tensor(base)[:, :20]):
        a = x.detach().numpy().astype(np.float64)
        want = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(F.layer_norm(x, (20,)).numpy(), want, rtol=1e-5, atol=1e-5)


@needs_ext
def test_kernels_reject_bad_input():
    ln, lnb = native._ext.layer_norm, native._ext.layer_norm_backward
    x = np.zeros((2, 4), np.float32)
    y, h, r = np.empty_like(x), np.empty_like(x), np.empty(2, np.float32)
    with pytest.raises(ValueError, match="row length must be >= 1"):
        ln(x, None, None, y, h, r, 0, 1e-5)
    with pytest.raises(ValueError, match="8 elements are not rows of 3"):
        ln(x, None, None, y, h, r, 3, 1e-5)
    with pytest.raises(ValueError, match="'weight' has 3 elements, expected 4"):
        ln(x, np.zeros(3, np.float32), None, y, h, r, 4, 1e-5)
    with pytest.raises(ValueError, match="'rstd' has 1 elements, expected 2"):
        ln(x, None, None, y, h, r[:1], 4, 1e-5)
    with pytest.raises(TypeError, match="must have dtype float32"):
        ln(x.astype(np.float64), None, None, y, h, r, 4, 1e-5)
    with pytest.raises(ValueError, match="overlap in memory"):
        ln(x, None, None, x, h, r, 4, 1e-5)
    with pytest.raises(TypeError, match="'y' must be an array, got None"):
        ln(x, None, None, None, h, r, 4, 1e-5)
    with pytest.raises(ValueError, match="must be writeable"):
        ro = np.empty_like(x)
        ro.flags.writeable = False
        ln(x, None, None, ro, h, r, 4, 1e-5)
    with pytest.raises(ValueError, match="'grad_input' and 'grad_weight' overlap|overlap"):
        gx = np.empty(8, np.float32)
        lnb(x, h, r, None, gx, gx[:4], None, 4)
    lnb(x, h, r, None, None, None, None, 4)  # every output skipped: nothing to do


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 7, 8, 16, 127, 128, 129, 300, 1031])
def test_softmax_kernels_are_the_numpy_sequence_bit_for_bit(isa, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal((9, n)) * 4).astype(np.float32)
    a[1, 0] = np.nan          # a NaN row, a fully masked row, rows holding +inf
    a[2, :] = -np.inf
    a[3, -1] = np.inf
    a[4, :] = np.inf
    g = rng.standard_normal((9, n)).astype(np.float32)
    rows = native._ext.softmax_rows
    with np.errstate(invalid="ignore", over="ignore"):
        z_ref, e_ref = _stable_exp(np, a, 1)
        e_ref /= e_ref.sum(axis=1, keepdims=True)
        z = np.empty_like(a)
        with native.use_isa(isa):
            rows(0, a, z, None, n)
            np.testing.assert_array_equal(np.exp(z), np.exp(z_ref))  # (a zero's sign may differ)
            e = np.exp(z)
            kept = e.copy()
            rows(1, e, None, None, n)
            rows(3, kept, None, None, n)          # rows summing to 0 left as they are
            inplace = a.copy()
            rows(0, inplace, inplace, None, n)
            np.testing.assert_array_equal(np.exp(inplace), np.exp(z_ref))
    np.testing.assert_array_equal(e, e_ref)
    np.testing.assert_array_equal(kept[2], 0)
    np.testing.assert_array_equal(np.delete(kept, 2, 0), np.delete(e_ref, 2, 0))
    y = np.nan_to_num(e_ref)
    want = g * y
    want -= y * want.sum(axis=1, keepdims=True)
    gx = np.empty_like(g)
    with native.use_isa(isa):
        rows(2, g, y, gx, n)
        np.testing.assert_array_equal(gx, want)
        rows(2, g, y, g, n)                      # in place over the gradient
    np.testing.assert_array_equal(g, want)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
def test_softmax_op_native_and_numpy_agree_exactly(isa):
    def run(use, dim):
        rng = np.random.default_rng(11)
        x = deepseek.tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32),
                            requires_grad=True)
        mask = deepseek.tensor(np.triu(np.ones((16, 16), bool), 1))
        gy = deepseek.tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
        with native.use_native(use), native.use_isa(isa):
            y = F.softmax(x.masked_fill(mask, float("-inf")), dim=dim)
            y.backward(gy)
        return [y.detach().numpy(), x.grad.numpy()]
    for dim in (-1, 1):
        for got, want in zip(run(True, dim), run(False, dim)):
            np.testing.assert_array_equal(got, want)


@needs_ext
def test_softmax_rows_rejects_bad_input():
    rows = native._ext.softmax_rows
    a = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="kind must be 0"):
        rows(4, a, a, None, 4)
    with pytest.raises(ValueError, match="'z' has 4 elements, expected 8"):
        rows(0, a, np.empty(4, np.float32), None, 4)
    buf = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="overlap in memory"):
        rows(0, buf[:8], buf[4:], None, 4)     # in place is allowed, a partial overlap not
    with pytest.raises(ValueError, match="'grad_input' has 7 elements"):
        rows(2, a, a.copy(), np.empty(7, np.float32), 4)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
@pytest.mark.parametrize("grad", [True, False])
def test_sdpa_native_and_numpy_agree_exactly(isa, mask, grad):
    """scaled_dot_product_attention's row softmax (training and the inference form that
    normalises the output), C row passes against numpy, fully masked rows included."""
    def run(use):
        rng = np.random.default_rng(5)
        q, k, v = [deepseek.tensor(rng.standard_normal((2, 3, 24, 8)).astype(np.float32),
                                   requires_grad=grad) for _ in range(3)]
        m = None
        if mask == "bool":
            keep = rng.random((24, 24)) > 0.3
            keep[0] = False
            m = deepseek.tensor(keep)
        elif mask == "float":
            m = deepseek.tensor(rng.standard_normal((24, 24)).astype(np.float32))
        with native.use_native(use), native.use_isa(isa):
            with deepseek.set_grad_enabled(grad):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                   is_causal=mask == "causal")
            if not grad:
                return [y.numpy()]
            y.backward(deepseek.tensor(rng.standard_normal(y.shape).astype(np.float32)))
        return [y.detach().numpy(), q.grad.numpy(), k.grad.numpy(), v.grad.numpy()]
    for got, want in zip(run(True), run(False)):
        np.testing.assert_array_equal(got, want)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 64, 1000, 131072])
def test_gelu_backward_tail_is_the_numpy_expression_bit_for_bit(isa, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 3).astype(np.float32)
    a[0] = np.inf if n > 1 else a[0]
    g = rng.standard_normal(n).astype(np.float32)
    cdf = np.empty_like(a)
    native.gelu(a, cdf=cdf)
    with np.errstate(invalid="ignore"):
        want = g * (cdf + a * _SQRT2PI_INV * np.exp(-0.5 * a * a))
        t = np.exp((-0.5 * a) * a)
    out = np.empty_like(a)
    with native.use_isa(isa):
        native._ext.gelu_backward_tail(g, a, cdf, t, out, _SQRT2PI_INV)
        np.testing.assert_array_equal(out, want)
        native._ext.gelu_backward_tail(g, a, cdf, t, t, _SQRT2PI_INV)   # in place over t
    np.testing.assert_array_equal(t, want)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
def test_gelu_op_gradient_is_the_numpy_expression(isa):
    """F.gelu's backward (C tail for contiguous float32, numpy for a strided gradient)
    against the expression it replaces, from the same forward CDF."""
    rng = np.random.default_rng(2)
    x0 = (rng.standard_normal((16, 33)) * 3).astype(np.float32)
    cdf = np.empty_like(x0)
    native.gelu(x0, cdf=cdf)
    for gv in (rng.standard_normal((16, 33)).astype(np.float32),
               rng.standard_normal((16, 66)).astype(np.float32)[:, ::2]):
        x = deepseek.tensor(x0, requires_grad=True)
        with native.use_isa(isa):
            F.gelu(x).backward(deepseek.tensor(gv))
        want = gv * (cdf + x0 * _SQRT2PI_INV * np.exp(-0.5 * x0 * x0))
        np.testing.assert_array_equal(x.grad.numpy(), want)


@needs_ext
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 1000, 65537])
def test_erf_and_gelu_kernels_are_the_same_bits_on_every_isa(isa, n):
    """The erf and GELU passes (the vector width the instruction set gives) against the
    portable build and against the numpy sequence around that erf; specials, in place."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, -0.0, 4.5][:min(5, n)]
    with native.use_isa("scalar"):
        erf_ref = native.erf(x)
        cdf_ref = np.empty_like(x)
        y_ref = native.gelu(x, cdf=cdf_ref)
    want_cdf = np.float32(0.5) * (np.float32(1.0) + native.erf(x * np.float32(0.7071067811865476)))
    with native.use_isa(isa):
        bits = (lambda a: a.view(np.uint32))
        np.testing.assert_array_equal(bits(native.erf(x)), bits(erf_ref))
        cdf = np.empty_like(x)
        np.testing.assert_array_equal(bits(native.gelu(x, cdf=cdf)), bits(y_ref))
        np.testing.assert_array_equal(bits(cdf), bits(cdf_ref))
        same = x.copy()
        native.gelu(same, out=same)
        np.testing.assert_array_equal(bits(same), bits(y_ref))
    np.testing.assert_array_equal(cdf_ref, want_cdf)
    with np.errstate(invalid="ignore"):                 # -inf * 0
        np.testing.assert_array_equal(y_ref, x * want_cdf)


@needs_ext
def test_gelu_backward_tail_rejects_bad_input():
    tail = native._ext.gelu_backward_tail
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="'cdf' has 3 elements, expected 4"):
        tail(a, a, np.zeros(3, np.float32), a.copy(), a.copy(), 0.5)
    with pytest.raises(ValueError, match="overlap in memory"):
        tail(a, a, a, a, a.copy(), 0.5)            # t (written) over the gradient
    with pytest.raises(TypeError, match="must have dtype float32"):
        tail(a.astype(np.float64), a, a, a.copy(), a.copy(), 0.5)
