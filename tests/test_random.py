"""Random numbers: seeding, generator state, distributions, in-place fills."""
import numpy as np
import pytest

import deepseek as ds


def test_manual_seed_reproduces():
    ds.manual_seed(123)
    a = ds.randn(5)
    b = ds.rand(3)
    ds.manual_seed(123)
    assert ds.randn(5).tolist() == a.tolist() and ds.rand(3).tolist() == b.tolist()
    assert ds.initial_seed() == 123


def test_generators_have_independent_state():
    g1 = ds.Generator().manual_seed(7)
    g2 = ds.Generator().manual_seed(7)
    ds.manual_seed(0)
    x = ds.randn(4, generator=g1)
    ds.randn(10)  # the default generator does not disturb g2
    y = ds.randn(4, generator=g2)
    assert x.tolist() == y.tolist()
    with pytest.raises(TypeError):
        g1.manual_seed(1.5)


def test_rng_state_roundtrip():
    ds.manual_seed(5)
    state = ds.get_rng_state()
    a = ds.randn(3)
    ds.randn(7)
    ds.set_rng_state(state)
    assert ds.randn(3).tolist() == a.tolist()
    import json
    json.dumps(state)  # checkpointable as JSON
    g = ds.Generator().manual_seed(1)
    st = g.get_state()
    u = ds.rand(2, generator=g)
    g.set_state(st)
    assert ds.rand(2, generator=g).tolist() == u.tolist()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes_and_shapes(dtype):
    assert ds.randn(2, 3, dtype=dtype).dtype.name == dtype
    assert ds.rand((4,), dtype=dtype).shape == (4,)
    assert ds.randn(0, 2).shape == (0, 2)
    assert ds.randn(()).shape == ()


def test_distribution_moments():
    ds.manual_seed(0)
    n = ds.randn(20000).numpy()
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05
    u = ds.rand(20000).numpy()
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    x = ds.normal(2.0, 3.0, size=(20000,)).numpy()
    assert abs(x.mean() - 2) < 0.1 and abs(x.std() - 3) < 0.1


def test_randint_and_randperm():
    ds.manual_seed(0)
    r = ds.randint(3, 7, (1000,))
    assert r.dtype == ds.int64 and r.numpy().min() >= 3 and r.numpy().max() <= 6
    r2 = ds.randint(10, (2, 3))  # torch.randint(high, size)
    assert r2.shape == (2, 3) and r2.numpy().max() < 10
    assert ds.randint(0, 5, size=4).shape == (4,)
    with pytest.raises(RuntimeError, match="'from' to be less than 'to'"):  # as PyTorch
        ds.randint(5, 5, (2,))
    p = ds.randperm(10)
    assert sorted(p.tolist()) == list(range(10)) and p.dtype == ds.int64


def test_bernoulli_and_multinomial():
    ds.manual_seed(0)
    p = ds.full((10000,), 0.3)
    b = ds.bernoulli(p)
    assert set(np.unique(b.numpy())) <= {0.0, 1.0} and abs(b.numpy().mean() - 0.3) < 0.03
    m = ds.multinomial(ds.tensor([[0.0, 1.0, 0.0]]), 2, replacement=True)
    assert m.tolist() == [[1, 1]]


def test_inplace_fills():
    ds.manual_seed(0)
    x = ds.empty(5000)
    v = x._version
    x.normal_(1.0, 2.0)
    assert x._version == v + 1
    assert abs(x.numpy().mean() - 1) < 0.1 and abs(x.numpy().std() - 2) < 0.1
    x.uniform_(-1, 1)
    assert x.numpy().min() >= -1 and x.numpy().max() <= 1
    x.bernoulli_(0.5)
    assert set(np.unique(x.numpy())) <= {0.0, 1.0}
    h = ds.empty(100, dtype=ds.bfloat16).normal_()
    assert h.dtype == ds.bfloat16 and np.isfinite(h.float().numpy()).all()
    ds.manual_seed(3)
    a = ds.empty(4).normal_()
    ds.manual_seed(3)
    assert ds.empty(4).normal_().tolist() == a.tolist()
