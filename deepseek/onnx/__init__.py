"""deepseek.onnx: export models to ONNX (``deepseek.onnx.export``, PyTorch's signature).

The model is traced through the op dispatch (the JIT's tracer, ``deepseek.jit.tracer``);
each traced op is written as ONNX nodes by the export rule its op-table entry declares
(``export=`` in ``deepseek/ops/_table_*.py``; the rule functions live in
``deepseek.onnx.rules``). Weights and buffers become initializers, dynamic axes named
``dim_param`` dims. The model is built with ``onnx.helper``, checked with
``onnx.checker.check_model`` and written atomically. See docs/onnx.md.

- ``export(model, args, f, input_names=, output_names=, dynamic_axes=, opset_version=17)``
- ``supported_ops()``: the op-table entries that export
- ``register_op(FunctionClass, rule)``: export a Function outside the table (a user op)
- ``register_module(ModuleClass, rule)``: export a module that computes outside the op
  dispatch as one unit (the quantized modules: ``deepseek.onnx.quantized``)
- ``UnsupportedOpError``, ``ExportError``
"""
from ._export import export, UnsupportedOpError
from ._lookup import supported_ops, register_op
from ._trace import ExportError, _LEAF_RULES
from ._builder import RuleError

__all__ = ["export", "supported_ops", "register_op", "register_module", "UnsupportedOpError",
           "ExportError", "RuleError"]


def register_module(module_cls, rule):
    """Export every ``module_cls`` instance as one unit: ``rule(g, module, *args)`` writes its
    nodes (``g``: the graph builder, see ``deepseek.onnx.rules``). For modules whose forward
    does not run through the op dispatch (numpy or native kernels), which tracing cannot
    see into."""
    if not isinstance(module_cls, type):
        raise TypeError(f"register_module: expected a Module class, got {module_cls!r}")
    if not callable(rule):
        raise TypeError(f"register_module: rule must be callable, got {type(rule).__name__}")
    _LEAF_RULES[module_cls] = rule


from . import quantized as _quantized  # noqa: E402,F401  (registers the quantized modules)
