"""deepseek.profiler: PyTorch's ``torch.profiler`` API on the deepseek engine.

::

    with deepseek.profiler.profile(record_shapes=True, profile_memory=True, with_flops=True,
                                   schedule=deepseek.profiler.schedule(wait=1, warmup=1, active=3),
                                   on_trace_ready=handler) as prof:
        for batch in loader:
            with deepseek.profiler.record_function("forward"):
                loss = model(batch).sum()
            loss.backward(); opt.step()
            prof.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    prof.export_chrome_trace("trace.json")

On the GPU (``activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]``, the default
when cupy sees one) every op on a CUDA tensor also gets its device time from CUDA
events: ``self_cuda_time_total`` / ``cuda_time_total`` (or ``*_device_*``) in
``key_averages()`` and its table, a ``GPU (CUDA events)`` row in the chrome trace.

Ops are named ``deepseek::<op>`` (the op table's name) and their backward nodes like
PyTorch's (``AddmmBackward0``). See :mod:`deepseek.profiler.profiler` for what is
recorded and how; :mod:`deepseek.profiler.timeline` for the whole-job timeline
(``DEEPSEEK_TIMELINE``) and ``python -m deepseek.profiler.merge``.
"""
from .profiler import (profile, record_function, schedule, ProfilerActivity, ProfilerAction,
                       tensorboard_trace_handler, FunctionEvent, FunctionEventAvg, EventList,
                       op_flops, op_names, chrome_trace)

__all__ = ["profile", "record_function", "schedule", "ProfilerActivity", "ProfilerAction",
           "tensorboard_trace_handler", "FunctionEvent", "FunctionEventAvg", "EventList",
           "op_flops", "op_names", "chrome_trace"]
