"""ShardedGradScaler: a GradScaler whose inf/NaN decision is global over a group
(PyTorch's ``torch.distributed.fsdp.sharded_grad_scaler.ShardedGradScaler``).

Under ZeRO each rank unscales only the gradients it holds (ZeRO-2/3: its shard), so
an inf/NaN may be seen by one rank alone. If that rank skipped the step and the
others took it, the replicas would diverge -- and under ZeRO-1/3 the step itself
has collectives (the parameter all-gather), so the job would hang. The found-inf
flag is therefore all-reduced (MAX) over the group before the decision: every rank
skips the same steps and halves its scale at the same time.
"""
from ...amp import GradScaler
from ...collectives import ReduceOp, get_default_group

__all__ = ["ShardedGradScaler"]


class ShardedGradScaler(GradScaler):
    """``GradScaler`` (same arguments) plus ``process_group``: the ranks that must
    agree on skipping a step (default: the default group)."""

    def __init__(self, init_scale=2.0 ** 16, backoff_factor=0.5, growth_factor=2.0,
                 growth_interval=2000, enabled=True, process_group=None, *, device="cpu"):
        super().__init__(init_scale=init_scale, growth_factor=growth_factor,
                         backoff_factor=backoff_factor, growth_interval=growth_interval,
                         enabled=enabled, device=device)
        self.process_group = process_group or get_default_group()
        self.found_inf_reduce = agree_on_inf(self.process_group)


def agree_on_inf(pg):
    """A ``GradScaler.found_inf_reduce`` that makes the flag the MAX over ``pg``."""
    def reduce(flag):
        if pg.size > 1:
            pg.allreduce(flag, ReduceOp.MAX)
        return flag
    return reduce
