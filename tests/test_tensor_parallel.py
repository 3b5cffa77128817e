"""Tensor-parallel layers on real processes against the unsharded layer built from
the same seed (one process): outputs, input and weight gradients, initialisation,
vocabulary-parallel cross-entropy, parallelize_module and its communication count."""
import numpy as np
import pytest

import mesh_tp_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def runs():
    (ref,) = spawn_ranks(cases.tp_layers, 1, timeout=180)
    return ref, spawn_ranks(cases.tp_layers, 2, timeout=180)


def _full(ranks, case, name):
    arr, dim = ranks[0][case][1][name]
    return arr if dim is None else np.concatenate(
        [r[case][1][name][0] for r in ranks], axis=dim)


@pytest.mark.parametrize("case", ["column", "row", "embedding", "attention"])
def test_layer_matches_unsharded(runs, case):
    ref, ranks = runs
    y, grads, xg = ref[case]
    for r in ranks:
        np.testing.assert_allclose(r[case][0], y, rtol=1e-5, atol=1e-6, err_msg="output")
        if xg is not None:
            np.testing.assert_allclose(r[case][2], xg, rtol=1e-5, atol=1e-6,
                                       err_msg="input grad")
    for name in grads:
        np.testing.assert_allclose(_full(ranks, case, name), grads[name][0], rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_shards_of_the_initial_weight_are_the_unsharded_weight(runs):
    ref, ranks = runs
    np.testing.assert_array_equal(np.concatenate([r["init"] for r in ranks]), ref["init"])
    assert not np.array_equal(ranks[0]["init"], ranks[1]["init"])


def test_vocab_parallel_cross_entropy(runs):
    ref, ranks = runs
    loss, grad = ref["ce"]
    for r in ranks:
        assert abs(r["ce"][0] - loss) < 1e-5 * abs(loss)
    np.testing.assert_allclose(np.concatenate([r["ce"][1] for r in ranks], axis=2), grad,
                               rtol=1e-5, atol=1e-7)


def test_parallelize_module_and_megatron_communication(runs):
    ref, ranks = runs
    y, xg = ref["mlp"][:2]
    for r in ranks:
        out, g, fwd, bwd, c0, c2 = r["mlp"]
        assert (c0, c2) == ("ColumnParallelLinear", "RowParallelLinear")
        np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, xg, rtol=1e-5, atol=1e-6)
        assert (fwd, bwd) == (1, 1)  # one all-reduce forward, one backward per MLP
