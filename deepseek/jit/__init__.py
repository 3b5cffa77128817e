"""deepseek.jit: dynamic graphs to static ones -- trace, optimise, fuse, run, save.

The seed's form::

    @deepseek.jit.trace
    def optimized_forward(model, x):
        return model.forward(x)
    static_model = optimized_forward.compile(model)   # then static_model(x)

PyTorch's forms: ``deepseek.jit.trace(module_or_fn, example_inputs)`` (traced at once)
and ``deepseek.compile(model)`` (traced on the first call, retraced per new input
signature). ``static_model.graph`` prints the graph; ``static_model.save(path)`` and
``deepseek.jit.load(path)`` store and run it without the model's class.

Modules: ``tracer`` (the DispatchMode recording ops; TracerWarning), ``graph`` (the
IR), ``passes`` (DCE, CSE, simplification, constant folding), ``fusion`` (elementwise
groups), ``cgen`` (C kernels and their disk cache), ``plan`` (the inference executor
with its memory plan), ``replay`` (the autograd executor), ``module`` (guards,
signature cache), ``serialize`` (save/load).
"""
from .tracer import TracerWarning
from .module import CompiledFunction, GuardError
from .serialize import load
from .graph import Graph

__all__ = ["trace", "compile", "load", "TracerWarning", "GuardError", "CompiledFunction", "Graph"]


def trace(fn=None, example_inputs=None, *, dynamic=False, strict=False, backend=None,
          static_outputs=False):
    """Trace ``fn`` (a function or an ``nn.Module``) into a static graph.

    - ``@trace`` on ``def f(model, x)``: returns a CompiledFunction; ``f.compile(model)``
      binds the model (the seed's API), calling ``f(model, x)`` works too;
    - ``trace(module_or_fn, example_inputs)``: traces now on ``example_inputs`` (a
      tensor or a tuple) and returns the compiled callable.

    ``dynamic=True`` frees dim 0 (the batch) of the inputs: one graph serves every batch
    size. ``strict=True`` fixes the signature: other shapes/dtypes raise GuardError
    instead of retracing. ``backend``: "c", "numexpr", "numpy" or None
    (DEEPSEEK_JIT_BACKEND). ``static_outputs=True`` returns the plan's own output
    buffers (overwritten by the next call: no allocation at all per step)."""
    kw = dict(dynamic=dynamic, strict=strict, backend=backend, static_outputs=static_outputs)
    if fn is None:
        return lambda f: trace(f, example_inputs, **kw)
    from ..nn.module import Module
    model = fn if isinstance(fn, Module) else None
    cf = CompiledFunction(fn, model, **kw)
    if example_inputs is not None:
        if not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)
        cf(*example_inputs)
    return cf


def compile(model, *, dynamic=False, backend=None, static_outputs=False, strict=False):
    """``deepseek.compile(model)``: a callable that traces ``model`` on its first call
    and again for each new input signature (see ``trace`` for the options); works in
    training loops (backward, optimizer steps, DDP hooks) and in inference."""
    from ..nn.module import Module
    return CompiledFunction(model, model if isinstance(model, Module) else None,
                            dynamic=dynamic, strict=strict, backend=backend,
                            static_outputs=static_outputs)
