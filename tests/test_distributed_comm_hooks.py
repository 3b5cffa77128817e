"""DDP communication hooks (deepseek.distributed.comm_hooks) on real processes."""
import numpy as np
import pytest

import ddp_cases as cases
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(300)


def _close(a, b, rtol, atol):
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("kind", ["sum_then_scale", "tensor_valued", "legacy"])
@pytest.mark.parametrize("world", [2, 3])
def test_user_hook_gives_the_average(kind, world):
    steps = 2
    ref = cases.reference_params(steps)
    results = spawn_ranks(cases.hook_params, world, timeout=120, args=(kind, steps))
    for params, seen, nb, counts in results:
        _close(params, ref, rtol=1e-5, atol=1e-6)
        assert nb >= 3, nb  # small buckets: several per backward
        # called once per bucket per backward, in bucket order; is_last on the last one
        assert seen == [[i, i == nb - 1] for i in range(nb)] * steps, seen
        assert counts == {"hook": nb * steps}, counts
    a = results[0][0]
    for params, *_ in results[1:]:
        for name in a:
            assert np.array_equal(a[name], params[name]), f"ranks diverged on {name}"


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_builtin_compress_hook_is_what_compression_does(compression):
    # compression='fp16' is the short form of register_comm_hook(pg, fp16_compress_hook):
    # the same bits on the wire, so the same parameters to the last bit
    steps = 4
    short = spawn_ranks(cases.ddp_params, 2, timeout=120,
                        kwargs={"steps": steps, "compression": compression,
                                "bucket_cap_mb": 0.001})
    hooked = spawn_ranks(cases.hook_params, 2, timeout=120,
                         args=(f"{compression}_compress_hook", steps))
    for (p_short, c_short), (p_hook, _, nb, c_hook) in zip(short, hooked):
        for name in p_short:
            assert np.array_equal(p_short[name], p_hook[name]), name
        assert c_hook.get(compression, 0) >= nb * (steps - 1), c_hook
        assert c_hook.get(compression) == c_short.get(compression), (c_hook, c_short)


def test_allreduce_hook_is_the_default():
    ref = spawn_ranks(cases.ddp_params, 2, timeout=120,
                      kwargs={"steps": 2, "bucket_cap_mb": 0.001})
    hooked = spawn_ranks(cases.hook_params, 2, timeout=120, args=("allreduce_hook", 2))
    for (a, _), (b, _, nb, counts) in zip(ref, hooked):
        for name in a:
            assert np.array_equal(a[name], b[name]), name
        assert counts == {"fp32": 2 * nb}, counts


def test_register_comm_hook_only_once_and_before_backward():
    for msgs in spawn_ranks(cases.hook_registration_errors, 2, timeout=120):
        assert "only be called once" in msgs.get("twice", ""), msgs
        assert "before the first backward" in msgs.get("after_backward", ""), msgs
        assert "only be called once" in msgs.get("after_compression", ""), msgs
        assert "not both" in msgs.get("both", ""), msgs
