"""Sharded optimizer state in checkpoints (deepseek.distributed.checkpoint): saved by
3 ranks under one ZeRO stage, loaded on 2 ranks under any stage (or DDP), training
continues as if it had never stopped; and Trainer(strategy='zero2'/'zero3') resumes a
fit exactly."""
import numpy as np
import pytest

import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

SAVES = {1: [0, 3], 2: [1, 2], 3: [0, 1, 2, 3]}   # saving stage -> loading stages


def _close(a, b, what):
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def reference():
    return {kind: cases.optim_ckpt_reference(kind, opt)
            for kind, opt in (("mlp", "adamw"), ("lm", "sgd"))}


@pytest.mark.parametrize("kind,opt", [("mlp", "adamw"), ("lm", "sgd")])
@pytest.mark.parametrize("save_stage", [1, 2, 3])
def test_optimizer_state_reshards_3_to_2_ranks(save_stage, kind, opt, reference, tmp_path,
                                                shm_guard):
    path = str(tmp_path / "ck")
    spawn_ranks(cases.optim_ckpt, 3, timeout=180,
                args=(save_stage, path, "save", kind, opt))
    ref = reference[kind]
    for stage in SAVES[save_stage]:
        got = spawn_ranks(cases.optim_ckpt, 2, timeout=180,
                          args=(stage, path, "resume", kind, opt))
        for r, (params, lr) in enumerate(got):
            assert lr == pytest.approx((1e-2 if opt == "adamw" else 0.1) * 0.5)
            _close(params, ref, f"saved by stage {save_stage} on 3, stage {stage} on 2, "
                                f"rank {r}, {kind}/{opt}")


def test_resume_without_state_would_differ(reference, tmp_path, shm_guard):
    """The test above can fail: continuing with a fresh optimizer (no state loaded)
    ends somewhere else."""
    import deepseek.distributed.checkpoint as dcp
    path = str(tmp_path / "ck")
    spawn_ranks(cases.optim_ckpt, 2, timeout=180, args=(3, path, "save"))
    meta = dcp.read_metadata(path)
    assert any(k.endswith(".exp_avg_sq") for k in meta["tensors"])
    assert meta["extra"]["optim.layout"] == "fsdp"
    # drop the state: load only the model, then train on
    res = spawn_ranks(_resume_model_only, 2, timeout=180, args=(path,))
    diff = max(float(np.abs(res[0][k] - reference["mlp"][k]).max()) for k in res[0])
    assert diff > 1e-3


def _resume_model_only(rank, world, path):
    import deepseek.distributed.checkpoint as dcp
    cases._init()
    model = cases.build_model("mlp", seed=5)
    runner, opt = cases.wrap(model, 3, "adamw")
    dcp.load(dcp.get_state_dict(runner), path)
    opt.param_groups[0]["lr"] *= 0.5
    cases._steps(runner, opt, rank, world, "mlp", 3, start=3)
    return cases.full_params(runner, 3)


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_trainer_resumes_zero_fit_exactly(strategy, tmp_path, shm_guard):
    ck = str(tmp_path / "ck")
    full = spawn_ranks(cases.trainer_resume, 2, timeout=240, args=(strategy, ck, "full"))
    spawn_ranks(cases.trainer_resume, 2, timeout=240, args=(strategy, ck, "first"))
    got = spawn_ranks(cases.trainer_resume, 2, timeout=240, args=(strategy, ck, "resume"))
    for r in range(2):
        params, files = got[r]
        assert set(params) == set(full[r][0])
        for k in params:
            np.testing.assert_array_equal(params[k], full[r][0][k],
                                          err_msg=f"{strategy} rank {r} {k}")
        assert "last.ckpt" in files and "last.ckpt.zero" in files, files
