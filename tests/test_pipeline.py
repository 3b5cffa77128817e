"""Pipeline (and 3D) parallel training on real processes: the GPT of
examples/train_gpt_3d.py gives the same losses and weights as one process on the
full batch, on every layout and schedule; activation memory; bad input; a stage that
dies."""
import numpy as np
import pytest

import pp_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(600)

LAYOUTS = [(1, 2, 1), (1, 3, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2)]


@pytest.fixture(scope="module")
def reference():
    (ref,) = spawn_ranks(cases.reference, 1, timeout=240)
    return ref


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "dp%d-pp%d-tp%d" % l)
def test_gpt_matches_one_process(layout, reference, shm_guard):
    dp, pp, tp = layout
    ranks = spawn_ranks(cases.gpt_runs, dp * pp * tp, timeout=400, args=(dp, pp, tp))
    ref_params = cases.assemble([reference])
    for sched, m, v, points in cases.RUNS[pp]:
        results = [r[sched] for r in ranks]
        last = [r for r in results if r["losses"] is not None]
        assert len(last) == dp * tp  # the last stage of every (dp, tp) column
        for r in last:
            np.testing.assert_allclose(r["losses"], reference["losses"], rtol=1e-5,
                                       err_msg=f"{sched}: losses")
        params = cases.assemble(results)
        assert sorted(params) == sorted(ref_params), sched
        for name, want in ref_params.items():
            np.testing.assert_allclose(params[name], want, rtol=1e-5, atol=2e-6,
                                       err_msg=f"{sched}: {name}")
        if sched == "1f1b":
            # stage s holds at most p - s microbatches (and never more than m)
            for r in results:
                for s, n in r["peak_live"].items():
                    assert n == min(pp - s, m), (s, n)
        if sched == "gpipe":
            for r in results:
                assert all(n == m for n in r["peak_live"].values())


def test_1f1b_holds_less_activation_memory_than_gpipe(shm_guard):
    m = 8
    ranks = spawn_ranks(cases.memory_runs, 2, timeout=240, args=(m,))
    for s, r in enumerate(ranks):
        assert r["gpipe"]["peak_live"] == m
        assert r["1f1b"]["peak_live"] == 2 - s
    # stage 0: 2 of 8 microbatches held instead of 8: well under half the bytes
    assert ranks[0]["1f1b"]["peak_bytes"] < 0.5 * ranks[0]["gpipe"]["peak_bytes"], ranks


@pytest.mark.parametrize("given", [False, True], ids=["inferred", "input_args"])
def test_shape_mismatch_names_both_stages(given, shm_guard):
    res = spawn_ranks(cases.shape_mismatch, 2, timeout=120, args=(given,),
                      return_errors=True)
    assert res[1].error_type == "PipelineShapeError", res[1].describe()
    assert "stage 0" in res[1].message and "stage 1" in res[1].message
    assert "(2, 16)" in res[1].message
    if given:
        assert "(2, 32)" in res[1].message
    # the other stage fails with a named error instead of waiting forever
    assert res[0].error_type == "PipelineCommError", res[0]


def test_a_dying_stage_fails_the_others_by_name(shm_guard):
    res = spawn_ranks(cases.dying_stage, 3, timeout=120, return_errors=True)
    assert res[1].exitcode == 7
    for r in (0, 2):
        assert res[r].error_type == "PipelineCommError", res[r]
        assert f"stage {r}" in res[r].message and "died" in res[r].message, res[r].message


def test_interleaved_needs_enough_microbatches(shm_guard):
    few, odd = (spawn_ranks(cases.interleaved_bad_m, 2, timeout=120, args=(m,))
                for m in (1, 3))
    assert all("less than the 2 pipeline ranks" in e for e in few), few
    assert all("not a multiple" in e for e in odd), odd


def test_a_leaf_inputs_gradient_is_the_full_batch_one(shm_guard):
    """The first stage's input, a leaf that records its gradient, gets the full-batch
    gradient (its microbatches are leaves of their own, gathered once per step) and
    accumulates it over steps, as on one process."""
    (ref,) = spawn_ranks(cases.input_grad_runs, 1, timeout=120)
    got = spawn_ranks(cases.input_grad_runs, 2, timeout=120)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert np.abs(ref).max() > 0


def test_small_and_large_messages_give_the_same_step(shm_guard):
    """Activations of up to one transport slot are received when needed, larger ones
    through receives posted ahead (streamed through the slots in several chunks):
    with 2 KiB slots every 8 KiB activation and gradient takes the second path, with
    the default 1 MiB slots none does, and both give bit-identical gradients."""
    small = spawn_ranks(cases.receive_paths, 2, timeout=240,
                        env={"DEEPSEEK_SHM_P2P_BYTES": "2048"})
    large = spawn_ranks(cases.receive_paths, 2, timeout=240)
    for name in ("1f1b", "interleaved"):
        for r in range(2):
            a, b = small[r][name], large[r][name]
            assert a["ahead"] > 0 and b["ahead"] == 0, (name, r, a["ahead"], b["ahead"])
            assert a["loss"] == b["loss"]
            assert len(a["grads"]) == len(b["grads"]) > 0
            for ga, gb in zip(a["grads"], b["grads"]):
                assert np.array_equal(ga, gb), (name, r)
        assert small[1][name]["loss"] is not None  # rank 1 holds the last stage
