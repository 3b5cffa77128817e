"""FSDP's collectives inline (the default on the shared-memory transport) and async
with prefetching (``overlap_collectives=True``): the same training, and what each
holds gathered."""
import zero_cases as cases
from deepseek.testing.multiprocess import spawn_ranks
from test_zero import _close

CONFIGS = [{"kind": "mlp", "opt": "adamw"}, {"kind": "lm", "opt": "sgd", "accum": 2},
           {"kind": "mlp", "clip": 0.5}]


def test_async_and_inline_collectives_equal_ddp(shm_guard):
    ddp = spawn_ranks(cases.train_many, 2, timeout=240, args=(0, CONFIGS))
    for overlap in (False, True):
        cfgs = [dict(c, overlap_collectives=overlap, forward_prefetch=overlap)
                for c in CONFIGS]
        got = spawn_ranks(cases.train_many, 2, timeout=240, args=(3, cfgs))
        for r in range(2):
            for i, cfg in enumerate(cfgs):
                _close(got[r][i][0], ddp[r][i][0], what=f"rank {r}, {cfg} vs DDP")


def test_inline_holds_one_unit_async_prefetch_holds_two(shm_guard):
    """Inline: no prefetch, so at most one block's parameters (plus the root's, kept
    from forward for backward) are gathered at once; async: the prefetched block too."""
    pad = 2 * (2 - 1) * 4   # each of the two buckets padded to a multiple of 2 ranks
    for peaks, unit, root in spawn_ranks(cases.gathered_peaks, 2, timeout=240):
        assert peaks[False] <= unit + root + pad, (peaks, unit, root)
        assert peaks[True] >= 2 * unit, (peaks, unit, root)
