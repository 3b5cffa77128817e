"""The autograd replay executor: a graph as one generated Python function of
``Function.apply`` calls.

When autograd records (training), the compiled callable reruns the traced ops
through ``Function.apply`` on the live parameters, so gradients, version checks and
DDP hooks are exactly eager's. Interpreting the graph per call (walking each node's
args to swap refs for tensors, a dict of values) cost more than the ops themselves on
small models; instead each signature (and batch size) gets straight-line source, like
the inference plan's::

    def replay(x0):
        v3 = _f0(x0, _p1, _p2)
        v4 = _f1(v3, shape=_c3)
        ...
        return v32

where every function, parameter tensor and non-tensor argument is a constant of the
generated code. ``ReplayProgram.code`` is that source.
"""
from .._tensor import Tensor
from .graph import Ref, container_source, map_syms
from .tracer import tensor_method

__all__ = ["ReplayProgram"]


class ReplayProgram:
    """The replay function of ``graph`` at ``batch`` (None: the graph's own shapes),
    bound to ``params`` (name -> Tensor). ``run(*input_tensors)`` returns the result
    structure of tensors."""

    def __init__(self, graph, params, batch=None):
        self.ns = {}
        lines = []
        env = {}
        for k, vid in enumerate(graph.inputs):
            env[vid] = f"x{k}"
        for v in graph.values.values():
            if v.kind == "param":
                env[v.vid] = self._const(params[v.name], "p")
            elif v.kind == "const":
                env[v.vid] = self._const(Tensor._make(v.array), "t")
        self.env = env
        dyn = graph.dynamic_batch
        for n in graph.nodes:
            args = map_syms(n.args, batch) if dyn else n.args
            kwargs = map_syms(n.kwargs, batch) if dyn else n.kwargs
            if n.kind == "function":
                f = self._const(n.fn.apply, "f")
            else:
                f = self._const(tensor_method(n.fn), "m")
            parts = [self._expr(a) for a in args]
            parts += [f"{k}={self._expr(v)}" for k, v in kwargs.items() if k.isidentifier()]
            odd = {k: v for k, v in kwargs.items() if not k.isidentifier()}
            if odd:  # keyword names Python can't spell in a call: pass a dict
                parts.append("**" + self._expr(odd))
            call = f"{f}({', '.join(parts)})"
            names = [f"v{o}" for o in n.outs]
            if n.multi:
                lines.append(f"_r = {call}  # {n.name}")
                lines += [f"{nm} = _r[{i}]" for i, nm in enumerate(names)]
            else:
                lines.append(f"{names[0]} = {call}  # {n.name}")
            for o, nm in zip(n.outs, names):
                env[o] = nm
        out_spec = map_syms(graph.out_spec, batch) if dyn else graph.out_spec
        lines.append(f"return {self._expr(out_spec)}")
        params_src = ", ".join(f"x{k}" for k in range(len(graph.inputs)))
        self.code = f"def replay({params_src}):\n    " + "\n    ".join(lines) + "\n"
        exec(compile(self.code, "<deepseek.jit replay>", "exec"), self.ns)
        self.run = self.ns["replay"]

    def _const(self, obj, prefix="c"):
        name = f"_{prefix}{len(self.ns)}"
        self.ns[name] = obj
        return name

    def _expr(self, obj):
        """Source for an argument: refs become their variable, containers holding refs
        are rebuilt per call, anything else is one constant."""
        if isinstance(obj, Ref):
            return self.env[obj.vid]
        if not _has_ref(obj):
            return self._const(obj)
        src = container_source(obj, self._expr)
        if src is not None:
            return src
        raise TypeError(f"jit replay: cannot rebuild an argument of type {type(obj).__name__} "
                        f"holding graph values")


def _has_ref(obj):
    if isinstance(obj, Ref):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_ref(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_ref(o) for o in obj.values())
    if isinstance(obj, slice):
        return any(_has_ref(o) for o in (obj.start, obj.stop, obj.step))
    return False
