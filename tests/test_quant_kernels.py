"""deepseek.native int8 kernels: int32 sums exactly equal to numpy's int32 matmul on
every path (each int8 instruction set this CPU runs, and the numpy fallback)."""
import contextlib

import numpy as np
import pytest

from deepseek import native as N

BACKENDS = ["numpy"] + N.int8_isa_list()
SIZES = [(1, 1, 1), (1, 31, 3), (2, 33, 5), (3, 64, 4), (5, 97, 13), (8, 768, 30),
         (1, 3072, 7), (17, 130, 9), (64, 200, 37)]


@contextlib.contextmanager
def backend(name):
    if name == "numpy":
        with N.use_native(False):
            assert N.int8_isa() == "numpy"
            yield
        return
    with N.use_native(True), N.use_int8_isa(name):
        assert N.int8_isa() == name
        yield


def ref(a, w):
    return a.astype(np.int32) @ w.astype(np.int32).T


def test_isa_list_has_scalar_and_avx2_where_the_cpu_has_it():
    if not N.int8_isa_list():
        pytest.skip("deepseek._native is not built")
    isas = N.int8_isa_list()
    assert isas[-1] == "scalar"
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    if " avx2" in flags:
        assert "avx2" in isas
    with pytest.raises(ValueError, match="unknown int8 instruction set"):
        with N.use_int8_isa("sse9"):
            pass


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("m,k,n", SIZES)
def test_gemm_exact_random(name, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    with backend(name):
        got = N.int8_gemm(a, N.int8_pack(w))
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, ref(a, w))


@pytest.mark.parametrize("name", BACKENDS)
def test_gemm_exact_extremes_no_saturation(name):
    """-128 / 127 activations against -127 / 127 weights: the pairs vpmaddubsw sums
    into int16 reach +-2 * 128 * 127; a saturating kernel would clip them."""
    k = 4096
    a = np.array([[-128] * k, [127] * k, [-128, 127] * (k // 2), [-128, -128, 127, 127] * (k // 4),
                  [0] * k], np.int8)
    w = np.array([[-127] * k, [127] * k, [127, -127] * (k // 2), [-127] * k, [1] * k,
                  [-127, -127, 127, 127] * (k // 4)], np.int8)
    with backend(name):
        got = N.int8_gemm(a, N.int8_pack(w))
    np.testing.assert_array_equal(got, ref(a, w))
    assert got[0, 0] == 128 * 127 * k     # beyond what any int16 step could hold


@pytest.mark.parametrize("name", BACKENDS)
def test_gemm_exact_with_minus_128_weights(name):
    """-128 weights (outside the symmetric quantizers' range) are still exact: flagged
    at packing and run on the exact loop."""
    rng = np.random.default_rng(1)
    a = rng.choice(np.int8([-128, 127, -1, 0]), (5, 67))
    w = rng.choice(np.int8([-128, 127, 1]), (6, 67))
    p = N.int8_pack(w)
    assert p.full_range
    with backend(name):
        np.testing.assert_array_equal(N.int8_gemm(a, p), ref(a, w))


@pytest.mark.parametrize("bits", [8, 7])
@pytest.mark.parametrize("m,k,n", [(1, 768, 30), (7, 33, 5), (16, 300, 17)])
def test_fused_epilogue_bit_identical_across_paths(m, k, n, bits):
    """The fp32 epilogue (vector in the SIMD loops, full blocks of 4 and the tail) equals
    numpy's; 7-bit activations run the AVX2 offset loop."""
    rng = np.random.default_rng(k)
    a = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    p = N.int8_pack(w)
    sa = rng.random(m, dtype=np.float32) + 0.01
    sw = rng.random(n, dtype=np.float32) + 0.01
    bias = rng.standard_normal(n).astype(np.float32)
    expect = ref(a, w).astype(np.float32) * (sa[:, None] * sw[None, :]) + bias
    for name in BACKENDS:
        with backend(name):
            got = N.int8_linear(a, sa, p, sw, bias)
            got_nb = N.int8_linear(a, sa, p, sw, None)
        np.testing.assert_array_equal(got, expect, err_msg=name)
        np.testing.assert_array_equal(got_nb, ref(a, w).astype(np.float32) *
                                      (sa[:, None] * sw[None, :]), err_msg=name)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_quantize_rows_bit_identical_across_paths(per_tensor):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 77)).astype(np.float32) * np.float32([[1], [10], [1e-3], [0],
                                                                      [100], [1]])
    x[5, :4] = [127.0, -127.0, 0.5, -0.5]        # exact ties: rint rounds half to even
    outs = []
    for name in BACKENDS:
        with backend(name):
            q, s = N.int8_quantize_rows(x, per_tensor=per_tensor, kp=96)
        assert q.shape == (6, 96) and (q[:, 77:] == 0).all()
        assert q.min() >= -127
        outs.append((name, q, s))
    for name, q, s in outs[1:]:
        np.testing.assert_array_equal(q, outs[0][1], err_msg=name)
        np.testing.assert_array_equal(s, outs[0][2], err_msg=name)
    q, s = outs[0][1], outs[0][2]
    if per_tensor:
        assert np.all(s == s[0])
    else:
        assert s[3] == 1.0 and (q[3] == 0).all()         # zero row: scale 1, zeros
        assert np.abs(q[1]).max() == 127
    err = np.abs(q[:, :77] * s[:, None] - x).max(axis=1)
    assert np.all(err <= s / 2 * 1.0001)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m,k,n,g", [(1, 256, 33, 128), (3, 96, 5, 32), (2, 40, 3, 8)])
def test_weight_only_kernel_matches_dequantized_matmul(bits, m, k, n, g):
    from deepseek.nn.quantized.weight_only import pack_int4, quantize_groupwise, unpack_int4
    rng = np.random.default_rng(bits + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    q, s = quantize_groupwise(w, bits, g)
    stored = pack_int4(q) if bits == 4 else q
    if bits == 4:
        np.testing.assert_array_equal(unpack_int4(stored), q)
        assert stored.nbytes * 2 == q.size
    kg = q.shape[1]
    deq = (q.reshape(n, kg // g, g).astype(np.float64) * s[:, :, None]).reshape(n, kg)[:, :k]
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    expect = x.astype(np.float64) @ deq.T + b
    for name in BACKENDS:
        with backend(name):
            got = N.wq_linear(x, stored, s, bits, g, b)
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4, err_msg=name)


def test_errors():
    w = N.int8_pack(np.zeros((3, 8), np.int8))
    with pytest.raises(TypeError, match="int8"):
        N.int8_gemm(np.zeros((2, 8), np.float32), w)
    with pytest.raises(ValueError, match="columns"):
        N.int8_gemm(np.zeros((2, 9), np.int8), w)
    with pytest.raises(TypeError, match="int8_pack"):
        N.int8_gemm(np.zeros((2, 8), np.int8), np.zeros((3, 8), np.int8))
    with pytest.raises(TypeError, match="2-D int8"):
        N.int8_pack(np.zeros((3, 8), np.int16))
    with pytest.raises(ValueError, match="a_scale"):
        N.int8_linear(np.zeros((2, 8), np.int8), np.ones(3, np.float32), w, np.ones(3))


# ---- 7-bit activations (reduce_range): the AVX2 loop without the sign step ----
def _last_kernel():
    from deepseek import _native
    return _native.int8_last_kernel()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(1, 31, 3), (2, 33, 5), (5, 97, 13), (8, 768, 30),
                                   (17, 130, 9)])
def test_gemm_exact_7bit_activations(name, m, k, n):
    """Activations in [-64, 63] take the AVX2 unsigned-offset loop; against weights at
    both ends (-128 too) the vpmaddubsw pairs reach 2 * 127 * 128 and must not clip."""
    rng = np.random.default_rng(m + k * n)
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    a[0, :2] = [-64, 63]
    w = rng.choice(np.int8([-128, -127, 127, 1, 0]), (n, k))
    p = N.int8_pack(w)
    with backend(name):
        got = N.int8_gemm(a, p)
        if name == "avx2":
            assert _last_kernel() == "avx2-u7"
        elif name != "numpy":
            assert _last_kernel() == name
    np.testing.assert_array_equal(got, ref(a, w))
    ext = np.full((4, 2048), 63, np.int8)
    ext[1] = -64
    ext[2, ::2] = -64
    we = np.array([[-128] * 2048, [127] * 2048, [-128, 127] * 1024], np.int8)
    with backend(name):
        np.testing.assert_array_equal(N.int8_gemm(ext, N.int8_pack(we)), ref(ext, we))


@pytest.mark.parametrize("name", [b for b in BACKENDS if b != "numpy"])
def test_one_8bit_activation_leaves_the_7bit_loop(name):
    rng = np.random.default_rng(9)
    a = rng.integers(-64, 64, (6, 200), dtype=np.int8)
    w = rng.integers(-127, 128, (7, 200), dtype=np.int8)
    a[5, 199] = -65                               # the last element, past the vector body
    with backend(name):
        got = N.int8_gemm(a, N.int8_pack(w))
        assert _last_kernel() == name            # the 8-bit loop of this ISA
    np.testing.assert_array_equal(got, ref(a, w))


@pytest.mark.parametrize("qmax", [127, 63])
def test_quantize_rows_long_rows_and_non_finite_bit_identical(qmax):
    """Rows long enough for the vector body and its tail, NaN (quantized to 0, ignored by
    the max) and inf (scale inf: the row quantizes to 0), with qmax 127 and 63."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 1003)).astype(np.float32) * 3
    x[1, 10] = np.nan
    x[2, 500] = np.inf
    x[3, 1002] = -1e30
    x[4, :] = 0
    outs = []
    for name in BACKENDS:
        with backend(name), np.errstate(invalid="ignore"):
            q, s = N.int8_quantize_rows(x, kp=1024, qmax=qmax)
        assert q.min() >= -qmax and q.max() <= qmax
        outs.append((name, q, s))
    for name, q, s in outs[1:]:
        np.testing.assert_array_equal(q, outs[0][1], err_msg=name)
        np.testing.assert_array_equal(s, outs[0][2], err_msg=name)
    q, s = outs[0][1], outs[0][2]
    assert q[1, 10] == 0 and np.abs(q[1]).max() == qmax
    assert s[2] == np.inf and (q[2] == 0).all()
    assert s[4] == 1.0 and (q[4] == 0).all()
    fin = np.isfinite(x[0])
    assert np.abs(q[0, :1003][fin] * s[0] - x[0][fin]).max() <= s[0] / 2 * 1.0001
    with pytest.raises(ValueError, match="qmax"):
        N.int8_quantize_rows(x, qmax=128)



# ---- blocking and alignment of the SIMD loops (row chunks, aligned scratch copies) ----
def _misaligned(a, offset=16):
    """A copy of the int8 array ``a`` whose data starts ``offset`` bytes past a 64-byte
    boundary (numpy only promises 16-byte alignment; the kernels copy such rows)."""
    raw = np.empty(a.nbytes + 128, np.int8)
    start = (-raw.ctypes.data % 64) + offset
    out = raw[start:start + a.nbytes].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset
    return out


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bits,lo,loop", [(8, -127, "avx2"), (8, -128, "avx2-sign"),
                                          (7, -64, "avx2-u7")])
def test_gemm_exact_over_several_row_chunks_and_misaligned_rows(name, bits, lo, loop):
    """K = 4096 makes the SIMD loops split A into chunks of 32 rows (their unsigned
    copies held in 256 KiB): 70 rows = two full chunks and a tail of 6, on rows that
    start 16 bytes past a cache line (the vpsignb loop copies them to aligned scratch)
    and aligned ones; each AVX2 loop in turn (``loop``: what AVX2 runs)."""
    rng = np.random.default_rng(bits - lo)
    m, k, n = 70, 4096, 9
    a = rng.integers(lo, 2 ** (bits - 1), (m, k), dtype=np.int8)
    a[:, :2] = lo                                  # the extremes the unsigned copies map
    a[:, 2:4] = 2 ** (bits - 1) - 1
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    p = N.int8_pack(w)
    sa = rng.random(m, dtype=np.float32) + 0.5
    sw = rng.random(n, dtype=np.float32) + 0.5
    expect = ref(a, w)
    with backend(name):
        for arr in (a, _misaligned(a, 16), _misaligned(a, 0)):
            np.testing.assert_array_equal(N.int8_gemm(arr, p), expect, err_msg=name)
            np.testing.assert_array_equal(
                N.int8_linear(arr, sa, p, sw), expect.astype(np.float32) *
                (sa[:, None] * sw[None, :]), err_msg=name)
            if name == "avx2":
                assert _last_kernel() == loop


def test_modules_pack_their_weight_64_byte_aligned():
    """The quantized modules move the packed weight to 64-byte aligned memory (so no
    32-byte weight load straddles two cache lines); the ``weight`` buffer stays its
    [N, K] view, results equal the plain packing's, and edits in place still reach it."""
    from deepseek.nn.quantized._common import pack_aligned
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (37, 300), dtype=np.int8)
    a = rng.integers(-127, 128, (5, 300), dtype=np.int8)
    for _ in range(4):                             # numpy's own placement varies
        p = pack_aligned(w)
        assert p.data.ctypes.data % 64 == 0
        assert p._w.shape == (37, 300) and np.shares_memory(p._w, p.data)
        np.testing.assert_array_equal(p._w, w)
        np.testing.assert_array_equal(N.int8_gemm(a, p), ref(a, w))
        np.testing.assert_array_equal(p.rowsum, N.int8_pack(w).rowsum)


@pytest.mark.parametrize("name", BACKENDS)
def test_xor_loop_exact_at_the_extremes_and_its_fallbacks(name):
    """The AVX2 8-bit loop (vpmaddubsw(|a|, w ^ (a < 0)) plus the row's sum of negative
    |a|): +-127 activations against -128 / 127 / -127 weights reach int16 pair sums of
    2 * 127 * 128 and must not clip; a -128 activation moves the call to the vpsignb loop,
    and to the scalar loop when the weight holds -128 too (vpsignb needs |w| <= 127)."""
    k = 2048
    a = np.array([[-127] * k, [127] * k, [-127, 127] * (k // 2), [127, -127, -127, 127] * (k // 4),
                  [0] * k, [-1] * k, [-127, 0] * (k // 2)], np.int8)
    w = np.array([[127] * k, [-128] * k, [-128, 127] * (k // 2), [-127] * k, [1] * k,
                  [127, -128, -128, 127] * (k // 4), [0] * k], np.int8)
    p = N.int8_pack(w)
    with backend(name):
        got = N.int8_gemm(a, p)
        if name == "avx2":
            assert _last_kernel() == "avx2"
    np.testing.assert_array_equal(got, ref(a, w))
    assert got[0, 1] == 127 * 128 * k
    rng = np.random.default_rng(11)
    b = rng.integers(-127, 128, (9, 300), dtype=np.int8)
    w2 = rng.integers(-127, 128, (6, 300), dtype=np.int8)
    for wt, loop in ((w2, "avx2-sign"), (np.where(w2 == 5, -128, w2).astype(np.int8), "scalar")):
        b[4, 299] = -128                             # the last element, past the vector body
        pk = N.int8_pack(wt)
        with backend(name):
            got = N.int8_gemm(b, pk)
            if name == "avx2":
                assert _last_kernel() == loop
        np.testing.assert_array_equal(got, ref(b, wt))


@pytest.mark.parametrize("bits,loop", [(8, "avx2"), (7, "avx2-u7")])
def test_blocks_of_8_channels_their_tail_and_prefetch_rows_exact(bits, loop):
    """The AVX2 loops run blocks of 8 channels (the asm row kernel), a last block of 4
    channels on the C loop (N padded to 12, 20, ...), and prefetch the next block from
    the first row (fewer than 8 rows) or from rows 0-7: every such mix of M and N gives
    numpy's int32 sums and fp32 outputs, on every path."""
    rng = np.random.default_rng(bits)
    lo, hi = -2 ** (bits - 1) + (bits == 8), 2 ** (bits - 1)
    for m in (1, 3, 8, 11):
        for n in (4, 8, 12, 20, 24, 29):
            for k in (64, 96):
                a = rng.integers(lo, hi, (m, k), dtype=np.int8)
                a[0, :2] = [lo, hi - 1]
                w = rng.integers(-127, 128, (n, k), dtype=np.int8)
                w[:, :2] = [127, -128]             # both AVX2 loops take any weight
                p = N.int8_pack(w)
                sa = rng.random(m, dtype=np.float32) + 0.01
                sw = rng.random(n, dtype=np.float32) + 0.01
                bias = rng.standard_normal(n).astype(np.float32)
                expect = ref(a, w)
                for name in BACKENDS:
                    with backend(name):
                        got = N.int8_gemm(a, p)
                        if name == "avx2":
                            assert _last_kernel() == loop
                        y = N.int8_linear(a, sa, p, sw, bias)
                    np.testing.assert_array_equal(got, expect, err_msg=f"{name} {m} {n} {k}")
                    np.testing.assert_array_equal(
                        y, expect.astype(np.float32) * (sa[:, None] * sw[None, :]) + bias,
                        err_msg=f"{name} {m} {n} {k}")
