"""GraphBuilder: what an export rule writes ONNX nodes with (``g`` in ``rules``).

A rule is called as ``rule(g, *args, **kwargs)`` with the arguments the op's
``Function.apply`` got, tensors replaced by :class:`deepseek.jit.graph.Ref` and sizes of
dynamic axes by :class:`Dim`. It returns the ONNX value name of its output (a list
for several outputs). ``g.op("Add", a, b)`` accepts Refs, ONNX names, Python numbers
and numpy arrays as inputs (numbers and arrays become initializers); ``g.ints([...])``
makes an int64 shape tensor, computing Dims from the inputs' runtime shapes.
"""
import numpy as np

from ..jit.graph import Ref
from ._dims import Dim

__all__ = ["GraphBuilder", "RuleError"]


class RuleError(Exception):
    """Raised by a rule for a call it cannot export (the exporter adds op and path)."""


class GraphBuilder:
    def __init__(self, graph, opset, dim_sources):
        import onnx
        self.onnx = onnx
        self.helper = onnx.helper
        self.graph = graph
        self.opset = opset
        self.nodes = []
        self.initializers = {}
        self.names = {}               # vid -> onnx name
        self.dim_sources = dim_sources  # symbol -> (onnx input name, axis)
        self._dim_cache = {}
        self._const_cache = {}
        self._count = 0
        self.path = ""
        self.node = None              # the graph node being exported

    # ---- values ------------------------------------------------------------------
    def fresh(self, hint="t"):
        self._count += 1
        return f"_{hint}{self._count}"

    def dtype(self, x):
        """numpy dtype of a Ref (or of a number/array)."""
        if isinstance(x, Ref):
            return self.graph.values[x.vid].dtype
        return np.asarray(x).dtype

    def shape(self, x):
        """Shape of a Ref: a tuple of ints and Dims."""
        return tuple(self.graph.values[x.vid].shape) if isinstance(x, Ref) else np.shape(x)

    def rank(self, x):
        return len(self.shape(x))

    def array(self, x):
        """The value of a const/param Ref (numpy) or None when computed at run time."""
        if not isinstance(x, Ref):
            return np.asarray(x) if x is not None else None
        v = self.graph.values[x.vid]
        if v.kind == "const" and v.array is not None:
            return np.asarray(v.array)
        return None

    def out_dtype(self, i=0):
        return self.graph.values[self.node.outs[i]].dtype

    def out_shape(self, i=0):
        return tuple(self.graph.values[self.node.outs[i]].shape)

    def const(self, value, dtype=None):
        """An initializer holding ``value`` (cast to ``dtype``); returns its name."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh("c")
        self.add_initializer(name, arr)
        if key is not None:
            self._const_cache[key] = name
        return name

    def add_initializer(self, name, arr):
        from .. import dtypes as _dt
        arr = np.asarray(arr, order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype == _dt.bfloat16:
            t = self.helper.make_tensor(name, self.onnx.TensorProto.BFLOAT16, arr.shape,
                                        arr.view(np.uint16).tobytes(), raw=True)
        else:
            t = self.onnx.numpy_helper.from_array(arr, name)
        self.initializers[name] = t

    def name(self, x, dtype=None):
        """The ONNX name of ``x`` (Ref, name, number, array), cast to ``dtype`` if given."""
        if x is None:
            return ""
        if isinstance(x, str):
            return x
        if isinstance(x, Ref):
            n = self.names[x.vid]
            if dtype is not None and np.dtype(dtype) != self.dtype(x):
                return self.cast(n, dtype)
            return n
        if isinstance(x, Dim):
            return self.dim(x, scalar=True) if dtype is None else self.cast(self.dim(x, scalar=True), dtype)
        return self.const(x, dtype=dtype if dtype is not None else _default_dtype(x))

    def cast(self, x, dtype):
        return self.op("Cast", x, to=self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    # ---- nodes -------------------------------------------------------------------
    def op(self, op_type, *inputs, outputs=1, domain="", **attrs):
        """Append a node; returns its output name (a list when ``outputs`` > 1)."""
        ins = [self.name(i) for i in inputs]
        while ins and not ins[-1]:   # omitted trailing optional inputs are left out
            ins.pop()
        outs = [self.fresh() for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = self.helper.make_node(op_type, ins, outs, name=f"/{self.path}/{op_type}_{self._count}"
                                     if self.path else f"/{op_type}_{self._count}", domain=domain or None,
                                     **attrs)
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    # ---- shapes ------------------------------------------------------------------
    def dim(self, d, scalar=False):
        """An int64 tensor of shape [1] (``scalar``: shape []) holding ``d`` (int or Dim)."""
        if not isinstance(d, Dim):
            return self.const(np.array(int(d) if scalar else [int(d)], np.int64))
        key = (d, scalar)
        if key in self._dim_cache:
            return self._dim_cache[key]
        total = None
        for mono, coef in sorted(d.terms.items()):
            term = None
            for s in mono:
                src = self._symbol(s)
                term = src if term is None else self.op("Mul", term, src)
            if term is None:
                term = self.const(np.array([coef], np.int64))
            elif coef != 1:
                term = self.op("Mul", term, self.const(np.array([coef], np.int64)))
            total = term if total is None else self.op("Add", total, term)
        if scalar:
            total = self.op("Squeeze", total, self.const(np.array([0], np.int64)))
        self._dim_cache[key] = total
        return total

    def _symbol(self, s):
        key = ("sym", s)
        if key not in self._dim_cache:
            name, axis = self.dim_sources[s]
            shp = self.op("Shape", name)
            self._dim_cache[key] = self.op("Gather", shp, self.const(np.array([axis], np.int64)), axis=0)
        return self._dim_cache[key]

    def ints(self, values):
        """A 1-D int64 tensor of ``values`` (ints and Dims)."""
        values = list(values)
        if all(not isinstance(v, Dim) for v in values):
            return self.const(np.array([int(v) for v in values], np.int64).reshape(len(values)))
        parts, run = [], []
        for v in values:
            if isinstance(v, Dim):
                if run:
                    parts.append(self.const(np.array(run, np.int64)))
                    run = []
                parts.append(self.dim(v))
            else:
                run.append(int(v))
        if run:
            parts.append(self.const(np.array(run, np.int64)))
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)

    def static(self, v, what):
        """``v`` as plain ints (RuleError when it depends on a dynamic axis)."""
        def chk(x):
            if isinstance(x, Dim):
                raise RuleError(f"{what} depends on a dynamic axis ({x!r}); it must be static")
            if isinstance(x, (tuple, list)):
                return type(x)(chk(i) for i in x)
            return x
        return chk(v)

    # ---- opset-dependent forms -----------------------------------------------------
    def reduce(self, op_type, x, axes, keepdims):
        """Reduce* over ``axes`` (None: all); axes are an input from opset 18 (ReduceSum: 13)."""
        if axes is None:
            return self.op(op_type, x, keepdims=int(keepdims))
        axes = [int(a) for a in axes]
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.const(np.array(axes, np.int64)), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", x, self.const(np.array(list(axes), np.int64)))

    def squeeze(self, x, axes):
        return self.op("Squeeze", x, self.const(np.array(list(axes), np.int64)))


def _default_dtype(x):
    if isinstance(x, bool):
        return np.bool_
    if isinstance(x, int):
        return np.int64
    if isinstance(x, float):
        return np.float32
    return None
