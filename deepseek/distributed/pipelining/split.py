"""Cutting a ``Sequential`` into pipeline stages, so nobody writes stage classes.

    stages = pipeline(model, split_points=[2, 5], group=mesh["pp"])  # this rank's
    schedule = Schedule1F1B(stages[0], n_microbatches=8, loss_fn=loss_fn)

``split_points`` are layer indices where a new stage starts (any sizes: uneven splits
are fine). The pieces are ``model[a:b]`` slices, so their parameters keep the full
model's names ("3.attn.q_proj.weight"): state dicts of the stages are pieces of the
model's.
"""
from ...nn import Sequential
from .stage import PipelineError, PipelineStage

__all__ = ["split_sequential", "pipeline"]


def split_sequential(model, split_points):
    """``model`` (a Sequential) cut before each index of ``split_points``: a list of
    len(split_points) + 1 Sequentials sharing the model's modules."""
    if not isinstance(model, Sequential):
        raise TypeError(f"split_sequential: expected a Sequential, got {type(model).__name__}")
    n = len(model)
    pts = [int(p) for p in split_points]
    if any(b <= a for a, b in zip([0] + pts, pts + [n])):
        raise PipelineError(f"split_points {list(split_points)} must increase strictly "
                            f"inside 1..{n - 1} (the model has {n} layers)")
    bounds = [0] + pts + [n]
    return [model[a:b] for a, b in zip(bounds, bounds[1:])]


def pipeline(model, split_points, group=None, input_args=None):
    """Split ``model`` at ``split_points`` and wrap this rank's pieces as
    PipelineStages of ``group`` (stage i on group rank i % group.size): one stage per
    rank, or several for interleaved schedules. ``input_args``: optional dict
    stage index -> example input (checked against what arrives)."""
    from ...collectives import get_default_group

    group = group if group is not None else get_default_group()
    pieces = split_sequential(model, split_points)
    n = len(pieces)
    if n % group.size:
        raise PipelineError(f"{n} stages do not divide evenly over the {group.size} ranks "
                            f"of the pipeline group")
    ex = input_args or {}
    return [PipelineStage(pieces[i], i, n, group, input_args=ex.get(i))
            for i in range(group.rank, n, group.size)]
