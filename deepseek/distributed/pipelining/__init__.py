"""deepseek.distributed.pipelining: pipeline parallelism (PyTorch's module names).

``PipelineStage`` (stage.py) runs one piece of a model and moves activations and
their gradients to its neighbours; ``pipeline`` / ``split_sequential`` (split.py) cut
a Sequential into stages; ``ScheduleGPipe``, ``Schedule1F1B`` and
``ScheduleInterleaved1F1B`` (schedules.py) run microbatches through them and leave the
full-batch gradient in ``.grad``.
"""
from .stage import PipelineCommError, PipelineError, PipelineShapeError, PipelineStage
from .split import pipeline, split_sequential
from .schedules import (Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B, bubble_formula,
                        gpipe_order, interleaved_order, measured_bubble, one_f_one_b_order,
                        simulate)

__all__ = ["PipelineStage", "PipelineError", "PipelineShapeError", "PipelineCommError",
           "pipeline", "split_sequential", "ScheduleGPipe", "Schedule1F1B",
           "ScheduleInterleaved1F1B", "simulate", "bubble_formula", "gpipe_order",
           "one_f_one_b_order", "interleaved_order", "measured_bubble"]
