"""``export``: trace, map every node to ONNX through its rule, check, write atomically."""
import inspect
import os
import warnings

import numpy as np

from ..jit.graph import Ref
from ._builder import GraphBuilder, RuleError
from ._dims import Dim
from ._trace import ExportError, LeafModule, _LEAF_RULES, generalise, trace
from . import _lookup

__all__ = ["export", "UnsupportedOpError"]

MIN_OPSET, MAX_OPSET = 14, 21


class UnsupportedOpError(ExportError):
    """An op of the traced model has no ONNX export mapping."""


def _import_onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise ImportError("deepseek.onnx.export needs the `onnx` package: pip install "
                          "'deepseek[onnx]'") from e
    return onnx


def _as_tensor(a):
    from .._tensor import Tensor
    if isinstance(a, Tensor):
        return a
    if isinstance(a, np.ndarray):
        return Tensor._make(a)
    return a


def _split_args(args, kwargs):
    if not isinstance(args, (tuple, list)):
        args = (args,)
    args = list(args)
    kw = dict(kwargs or {})
    if args and isinstance(args[-1], dict) and kwargs is None:
        kw = args.pop()
    return [_as_tensor(a) for a in args], {k: _as_tensor(v) for k, v in kw.items()}


def _default_names(model, args, kwargs):
    fwd = getattr(model, "forward", model)
    try:
        params = [p for p in inspect.signature(fwd).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    from .._tensor import Tensor
    names = []
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            names.append(params[i].name if i < len(params) else f"input_{i}")
    names += [k for k, v in kwargs.items() if isinstance(v, Tensor)]
    return names


def _flatten_outputs(spec, prefix=""):
    """[(default name, Ref)] of the result's tensors, in order (dict keys name them)."""
    out = []
    if isinstance(spec, Ref):
        out.append((prefix or "output", spec))
    elif isinstance(spec, dict):
        for k, v in spec.items():
            out += _flatten_outputs(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(spec, (tuple, list)):
        for i, v in enumerate(spec):
            out += _flatten_outputs(v, f"{prefix}.{i}" if prefix else f"output_{i}")
    return out


def _axes_spec(dynamic_axes, name):
    spec = (dynamic_axes or {}).get(name)
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {int(k): str(v) for k, v in spec.items()}
    return {int(a): f"{name}_dynamic_axes_{i + 1}" for i, a in enumerate(spec)}


def export(model, args=(), f=None, *, kwargs=None, input_names=None, output_names=None,
           dynamic_axes=None, opset_version=17, export_params=True, training=False,
           do_constant_folding=True, keep_initializers_as_inputs=False, verbose=False,
           check=True):
    """Export ``model`` (an ``nn.Module`` or a function of tensors) to ONNX, PyTorch's way.

    ``args``: the example inputs (a tensor or a tuple; a trailing dict is keyword
    arguments). ``f``: a path or a binary file object (None: only return the model).
    ``input_names``/``output_names``: graph input/output names (defaults: the forward's
    parameter names; the result's dict keys, or ``output``/``output_i``).
    ``dynamic_axes``: ``{name: {axis: "dim_name"}}`` or ``{name: [axes]}`` for inputs and
    outputs: those axes become named ``dim_param`` dims and the graph computes every
    shape that depends on them at run time. ``opset_version``: 14 to 21.
    ``export_params=False`` makes the weights graph inputs instead of initializers (as
    does ``keep_initializers_as_inputs``, which also keeps them as initializers).
    The model runs in eval mode unless ``training=True``. The result is checked with
    ``onnx.checker.check_model`` and written atomically; a model over protobuf's 2 GB limit
    is written with its weights in ``<f>.data`` beside it (``f`` must then be a path, and
    the returned proto refers to that file). Returns the ``onnx.ModelProto``.
    Raises :class:`UnsupportedOpError` naming the op and the module path it was called in
    when an op has no export mapping (``deepseek.onnx.supported_ops()``)."""
    onnx = _import_onnx()
    if not MIN_OPSET <= int(opset_version) <= MAX_OPSET:
        raise ValueError(f"opset_version must be between {MIN_OPSET} and {MAX_OPSET}, got {opset_version}")
    opset = int(opset_version)
    from .._tensor import Tensor
    from ..nn.module import Module
    pos, kw = _split_args(args, kwargs)
    layout = [isinstance(a, Tensor) for a in pos]
    kw_keys = [k for k, v in kw.items() if isinstance(v, Tensor)]
    tensors = tuple([a for a in pos if isinstance(a, Tensor)] + [kw[k] for k in kw_keys])
    if not tensors:
        raise ExportError("export: args has no tensor; pass the example input(s) the model is called with")

    def fn(*ts):
        it = iter(ts)
        p = [next(it) if t else a for a, t in zip(pos, layout)]
        k = dict(kw)
        for key in kw_keys:
            k[key] = next(it)
        return model(*p, **k)

    in_names = list(input_names) if input_names is not None else _default_names(model, pos, kw)
    if len(in_names) < len(tensors):
        in_names += [f"input_{i}" for i in range(len(in_names), len(tensors))]
    in_names = in_names[:len(tensors)]
    if len(set(in_names)) != len(in_names):
        raise ValueError(f"export: input_names must be distinct, got {in_names}")
    unknown = set(dynamic_axes or {}) - set(in_names) - set(output_names or ())
    is_module = isinstance(model, Module)
    was_training = model.training if is_module else None
    if is_module and not training:
        model.eval()
    try:
        graph, _, _, (paths, op_names) = trace(fn, model, tensors)
        axes_of = {}
        for i, (name, t) in enumerate(zip(in_names, tensors)):
            spec = _axes_spec(dynamic_axes, name)
            for ax in spec:
                if not -t.ndim <= ax < t.ndim:
                    raise ValueError(f"dynamic_axes[{name!r}]: axis {ax} out of range for an input of "
                                     f"shape {tuple(t.shape)}")
            if spec:
                axes_of[i] = {ax % t.ndim: s for ax, s in spec.items()}
        const_rules = {}
        if axes_of:
            graph, const_rules = generalise(fn, model, tensors, axes_of, graph)
    finally:
        if is_module and not training:
            model.train(was_training)
    outputs = _flatten_outputs(graph.out_spec)
    if not outputs:
        raise ExportError("export: the model returned no tensor")
    out_names = list(output_names) if output_names is not None else [n for n, _ in outputs]
    out_names += [f"output_{i}" for i in range(len(out_names), len(outputs))]
    out_names = out_names[:len(outputs)]
    unknown -= set(out_names)
    if unknown:
        raise ValueError(f"dynamic_axes names {sorted(unknown)} are neither inputs {in_names} nor "
                         f"outputs {out_names}")
    from ..jit import passes
    graph = passes.dce(graph)
    _check_inputs(graph, in_names)
    _check_mapped(graph, paths, op_names)

    dim_sources = {}
    for i, axes in axes_of.items():
        for ax, sym in axes.items():
            dim_sources.setdefault(sym, (in_names[i], ax))
    g = GraphBuilder(graph, opset, dim_sources)
    helper = onnx.helper
    inputs_pb = []
    for vid, name in zip(graph.inputs, in_names):
        g.names[vid] = name
        v = graph.values[vid]
        axes = axes_of.get(in_names.index(name), {})
        dims = [axes.get(i, d) if not isinstance(d, Dim) else _dim_str(d) for i, d in enumerate(v.shape)]
        inputs_pb.append(helper.make_tensor_value_info(name, _elem(v.dtype), dims))
    param_inputs = []
    used_names = set(in_names)
    for v in graph.values.values():
        if v.kind == "param":
            name = v.name
            g.names[v.vid] = name
            if name not in g.initializers:
                arr = np.asarray(_param_array(v, graph, _params_of(model)))
                g.add_initializer(name, arr)
                used_names.add(name)
                if not export_params or keep_initializers_as_inputs:
                    param_inputs.append(helper.make_tensor_value_info(name, _elem(arr.dtype), list(arr.shape)))
        elif v.kind == "const":
            if v.vid in const_rules:
                g.names[v.vid] = _const_from_rule(g, const_rules[v.vid], v)
            else:
                g.names[v.vid] = g.const(v.array)
    for node in graph.nodes:
        _emit(g, node, paths)
    outputs_pb = []
    out_axes = {}
    for (dname, ref), name in zip(outputs, out_names):
        g.path = ""
        src = g.names[ref.vid]
        g.nodes.append(helper.make_node("Identity", [src], [name], name=f"/output/{name}"))
        v = graph.values[ref.vid]
        spec = _axes_spec(dynamic_axes, name)
        dims = [spec.get(i, _dim_str(d) if isinstance(d, Dim) else d) for i, d in enumerate(v.shape)]
        out_axes[name] = dims
        outputs_pb.append(helper.make_tensor_value_info(name, _elem(v.dtype), dims))
    inits = list(g.initializers.values())
    if not export_params:
        keep = {p.name for p in param_inputs}
        inits = [t for t in inits if t.name not in keep]
    gpb = helper.make_graph(g.nodes, type(model).__name__ if is_module else getattr(model, "__name__", "graph"),
                            inputs_pb + param_inputs, outputs_pb, initializer=inits)
    mpb = helper.make_model(gpb, opset_imports=[helper.make_opsetid("", opset)],
                            producer_name="deepseek", producer_version=_version())
    mpb.ir_version = min(mpb.ir_version, 10)
    if verbose:
        print(onnx.helper.printable_graph(mpb.graph))
    if mpb.ByteSize() >= _PROTO_LIMIT:
        # protobuf's 2 GB limit: the weights go to a side file next to the model
        if not isinstance(f, (str, os.PathLike)):
            raise ExportError(f"export: the model is {mpb.ByteSize() / 2**30:.1f} GB, over protobuf's "
                              f"2 GB limit: export to a path (the weights are written to "
                              f"<path>.data beside it)")
        _write_large(onnx, mpb, os.fspath(f), check)
        return mpb
    if check:
        _check(onnx, mpb)
    if f is not None:
        _write(mpb, f)
    return mpb


_PROTO_LIMIT = 2 ** 31 - 2 ** 24   # a margin under protobuf's 2 GB


def _check(onnx, model_or_path):
    try:
        onnx.checker.check_model(model_or_path, full_check=True)
    except Exception as e:
        raise ExportError(f"export: the ONNX model failed onnx.checker: {e}") from e


def _write_large(onnx, mpb, path, check):
    """Model and external weights written into a temp folder beside ``path``, checked, then
    renamed into place (weights first, so a reader never sees a model without them)."""
    import shutil
    import tempfile
    from .._atomic import fsync_dir
    directory = os.path.dirname(os.path.abspath(path))
    location = os.path.basename(path) + ".data"
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        tpath = os.path.join(tmp, os.path.basename(path))
        onnx.save_model(mpb, tpath, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        if check:
            _check(onnx, tpath)
        for name in (location, os.path.basename(path)):
            with open(os.path.join(tmp, name), "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
        fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _version():
    from .. import __version__
    return __version__


def _params_of(model):
    out = {}
    if hasattr(model, "named_parameters"):
        out.update({n: p for n, p in model.named_parameters()})
        out.update({n: b for n, b in model.named_buffers() if n not in out})
    return out


def _param_array(v, graph, params):
    t = params.get(v.name)
    if t is None:
        raise ExportError(f"export: parameter {v.name!r} is not a parameter or buffer of the model")
    return t._data if hasattr(t, "_data") else t


def _dim_str(d):
    return repr(d).replace(" ", "")


def _elem(dtype):
    from .. import dtypes as _dt
    import onnx
    if np.dtype(dtype) == _dt.bfloat16:
        return onnx.TensorProto.BFLOAT16
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _const_from_rule(g, rule, v):
    shape = tuple(v.shape)
    if rule[0] == "fill":
        return g.op("Expand", g.const(np.asarray(rule[1], rule[2])), g.ints(shape))
    _, ax, start, step, dt = rule
    n = shape[ax]
    stop = g.op("Add", g.const(np.array(start, np.int64)),
                g.op("Mul", g.dim(n, scalar=True), g.const(np.array(step, np.int64))))
    r = g.op("Range", g.const(np.array(start, np.int64)), stop, g.const(np.array(step, np.int64)))
    r = g.cast(r, dt) if np.dtype(dt) != np.int64 else r
    r = g.op("Reshape", r, g.ints([-1 if i == ax else 1 for i in range(len(shape))]))
    return g.op("Expand", r, g.ints(shape))


def _check_inputs(graph, in_names):
    used = set()
    for n in graph.nodes:
        used.update(n.inputs())
    used.update(graph.outputs())
    for vid, name in zip(graph.inputs, in_names):
        if vid not in used:
            warnings.warn(f"deepseek.onnx.export: input {name!r} is not used by the exported graph: the "
                          f"model reads it outside the op dispatch (through numpy, e.g. a mask built "
                          f"with numpy from it), so its example value is baked in as a constant. The "
                          f"exported model ignores this input.", UserWarning, stacklevel=3)


def _where(paths, node):
    path = paths.get(node.outs[0], "")
    loc = f"called in {path}" if path else "called in the model's own forward"
    return loc + (f", at {node.src}" if node.src else "")


def _check_mapped(graph, paths, op_names):
    missing = []
    for node in graph.nodes:
        if node.kind == "function" and node.fn is LeafModule:
            mod = node.kwargs.get("module")
            if type(mod) not in _LEAF_RULES:  # pragma: no cover - patched only when registered
                missing.append((type(mod).__name__, node))
            continue
        if _lookup.rule_for(node) is None:
            name = op_names.get(node.outs[0]) or _lookup.describe_node(node)
            missing.append((name, node))
    if not missing:
        return
    name, node = missing[0]
    fn = f"Tensor.{node.fn}" if node.kind == "method" else f"Function {node.name}"
    others = sorted({n for n, _ in missing[1:]} - {name})
    more = f"; also without export: {', '.join(repr(o) for o in others)}" if others else ""
    raise UnsupportedOpError(
        f"no ONNX export for op {name!r} ({fn}, {_where(paths, node)}){more}; ops with export: "
        f"{', '.join(_lookup.supported_ops())}. Add one: an `export=` rule on the op's entry in "
        f"deepseek/ops/_table_*.py (docs/onnx.md)")


def _emit(g, node, paths):
    g.path = paths.get(node.outs[0], "")
    g.node = node
    if node.kind == "function" and node.fn is LeafModule:
        mod = node.kwargs["module"]
        rule, swap = _LEAF_RULES[type(mod)], False
        args, kwargs = (mod,) + tuple(node.args), {}
    else:
        rule, swap = _lookup.rule_for(node)
        args, kwargs = tuple(node.args), dict(node.kwargs)
        if swap:
            args = (args[1], args[0]) + args[2:]
    try:
        res = rule(g, *args, **kwargs)
    except RuleError as e:
        what = f"Tensor.{node.fn}" if node.kind == "method" else f"Function {node.name}"
        raise UnsupportedOpError(f"ONNX export of op {_lookup.describe_node(node)!r} ({what}, "
                                 f"{_where(paths, node)}) failed: {e}") from None
    outs = res if isinstance(res, (list, tuple)) else [res]
    if len(outs) != len(node.outs):
        raise ExportError(f"export rule {getattr(rule, '__name__', rule)} of {node.name} returned "
                          f"{len(outs)} outputs, the op has {len(node.outs)}")
    for vid, name in zip(node.outs, outs):
        g.names[vid] = name


def _write(mpb, f):
    data = mpb.SerializeToString()
    if isinstance(f, (str, os.PathLike)):
        from .._atomic import write_atomic
        write_atomic(f, lambda fh: fh.write(data))
    elif hasattr(f, "write"):
        f.write(data)
    else:
        raise TypeError(f"export: f must be a path or a binary file object, got {type(f).__name__}")

