"""The zoo's models (BERT, GPT-2, ResNet) are plain modules: they train under DDP and ZeRO
(FSDP, one unit per block) on real processes to the same parameters as one process, and
run under the JIT and CPU autocast (BERT and GPT-2 under the JIT: test_models_bert.py)."""
import numpy as np
import pytest

import models_dist_cases as cases
import deepseek
from deepseek.testing.multiprocess import spawn_ranks

WORLD = 2


@pytest.mark.parametrize("kind", ["bert", "gpt2", "resnet"])
def test_ddp_and_zero3_train_like_one_process(kind, shm_guard):
    want = cases.single(kind, WORLD)
    for stage in (0, 3):
        got = spawn_ranks(cases.train, WORLD, timeout=240, args=(kind, stage))
        for r, params in enumerate(got):
            # FSDP's state dict also holds buffers (BatchNorm's running stats): compare the
            # parameters, which are what the optimizer moved
            params = {k: v for k, v in params.items() if k in want}
            assert set(params) == set(want), (kind, stage, sorted(set(want) - set(params)))
            for name in want:
                np.testing.assert_allclose(params[name], want[name], rtol=2e-5, atol=2e-6,
                                           err_msg=f"{kind}, stage {stage}, rank {r}: {name}")
            moved = any(not np.allclose(v, cases.build(kind)[0].state_dict()[k].detach().numpy())
                        for k, v in want.items())
            assert moved, "the optimizer moved no parameter: the comparison proves nothing"


def test_resnet_under_jit_and_autocast():
    model, _ = cases.build("resnet")
    model.eval()
    x = deepseek.tensor(np.random.default_rng(0).standard_normal((2, 3, 16, 16))
                        .astype(np.float32))
    with deepseek.no_grad():
        ref = model(x).numpy()
        compiled = deepseek.jit.trace(lambda m, inp: m(inp)).compile(model)
        np.testing.assert_allclose(compiled(x).numpy(), ref, rtol=1e-4, atol=1e-5)
        with deepseek.amp.autocast("cpu"):
            low = model(x)
    assert low.dtype == deepseek.bfloat16
    assert np.abs(low.float().numpy() - ref).max() < 0.05 * max(1.0, np.abs(ref).max())
