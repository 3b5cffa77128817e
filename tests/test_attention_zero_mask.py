"""scaled_dot_product_attention with an additive mask of zeros (a batch without
padding): the mask's pass is skipped, with the bits of the masked computation; kept
when its gradient is asked for or when it broadcasts the scores larger."""
import numpy as np
import pytest

import deepseek
from deepseek.ops import attention as A

F = deepseek.nn.functional


def _qkv(shape=(2, 3, 16, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [deepseek.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
            for _ in range(3)]


@pytest.mark.parametrize("threaded", [False, True])
def test_zero_mask_gives_the_bits_of_adding_it(monkeypatch, threaded):
    if threaded:
        monkeypatch.setattr(A, "_PAR_MIN_WORK", 0)
        monkeypatch.setattr(A, "blas_threads", lambda: 2)
    q, k, v = _qkv()
    zeros = np.zeros((2, 1, 1, 16), np.float32)
    zeros[0, 0, 0, 3] = -0.0
    tiny = zeros.copy()
    tiny[1, 0, 0, 5] = 1e-30          # not zero: the mask is added; 1e-30 changes no score
    outs = []
    for m in (deepseek.tensor(zeros), deepseek.tensor(tiny), None):
        for t in (q, k, v):
            t.grad = None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        y.sum().backward()
        outs.append([y.detach().numpy(), q.grad.numpy(), k.grad.numpy(), v.grad.numpy()])
    for a, b, c in zip(*outs):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        np.testing.assert_array_equal(a.view(np.uint32), c.view(np.uint32))


def test_zero_mask_kept_for_its_gradient_and_for_a_larger_broadcast():
    q, k, v = _qkv((3, 16, 8))
    m = deepseek.tensor(np.zeros((3, 16, 16), np.float32), requires_grad=True)
    F.scaled_dot_product_attention(q, k, v, attn_mask=m).sum().backward()
    assert m.grad is not None and m.grad.shape == (3, 16, 16)
    wide = deepseek.tensor(np.zeros((4, 3, 16, 16), np.float32))
    with deepseek.no_grad():
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=wide)
    assert y.shape == (4, 3, 16, 8)
