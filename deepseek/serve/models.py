"""What a worker serves: MODEL (a ``deepseek.jit.save`` file, a hub name or directory, or an
``.onnx`` file) loaded as a :class:`Runner`.

A runner has a ``spec`` (JSON-able: the platform, each input's name, dtype and shape with
``None`` for a free dimension, the outputs' names, and ``batchable``: whether dim 0 is free
so that requests may be stacked along it) and ``run({name: array}) -> [(name, array)]``.
The server validates requests against the spec before they are queued; the worker never
sees a request that does not match it.
"""
import inspect
import logging
import os
import threading

import numpy as np

from .parallel import SlicedRunner

__all__ = ["Runner", "load_runner", "model_kind"]

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
               "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
               "tensor(bool)": "bool", "tensor(int16)": "int16"}


def model_kind(model):
    """``"onnx"``, ``"jit"`` or ``"hub"`` for a MODEL argument (by suffix, then by content)."""
    if model.endswith(".onnx"):
        return "onnx"
    if os.path.isfile(model):
        with open(model, "rb") as f:
            head = f.read(8)
        # ONNX files are protobufs; jit files are safetensors (8-byte header length + JSON)
        if len(head) == 8 and int.from_bytes(head, "little") < (1 << 32):
            return "jit"
        return "onnx"
    return "hub"


class Runner:
    """A loaded model: ``spec``, ``run(inputs) -> [(name, array)]`` and ``plans`` (the
    JIT's compiled plans so far, a :class:`PlanCount`; None for a model without them)."""

    def __init__(self, spec, fn, plans=None):
        self.spec, self._fn, self.plans = spec, fn, plans

    def run(self, inputs):
        """Outputs for ``inputs`` (``{name: array}``, already checked against the spec)."""
        return self._fn(inputs)


class PlanCount:
    """The distinct input shapes each JIT copy has run: a dynamic-batch graph compiles
    one inference plan per shape (per copy), so this counts the plans built (traces and
    compiles cost tens to hundreds of ms each: a steady load should not add any)."""

    def __init__(self):
        self._seen = set()

    def note(self, copy, arrays):
        """Record that ``copy`` (any hashable id) ran ``arrays``."""
        self._seen.add((copy, tuple(a.shape for a in arrays)))    # one set.add: thread-safe

    def __len__(self):
        return len(self._seen)


def load_runner(model, threads=1, jit=True):
    """Load ``model`` (see the module docstring) using ``threads`` intra-op threads: the
    session's own for onnxruntime; for deepseek's engine, ``threads`` copies of the model
    fed row slices of a batch (:mod:`.parallel`). ``jit=False`` runs a sentence-transformers
    directory on the eager engine instead of its traced graph."""
    kind = model_kind(model)
    if kind == "onnx":
        return _onnx_runner(model, threads)
    plans = PlanCount() if kind == "jit" or jit else None
    spec, make_fn = _jit_runner(model, plans) if kind == "jit" else \
        _hub_runner(model, jit, plans)
    return Runner(spec, SlicedRunner(make_fn, threads, spec["batchable"], plans=plans).run,
                  plans)


def _onnx_runner(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def dims(shape):
        return [d if isinstance(d, int) and d >= 0 else None for d in shape]

    ins = [{"name": i.name, "dtype": _ORT_DTYPES.get(i.type, i.type), "shape": dims(i.shape)}
           for i in sess.get_inputs()]
    outs = [{"name": o.name, "dtype": _ORT_DTYPES.get(o.type, o.type), "shape": dims(o.shape)}
            for o in sess.get_outputs()]
    names = [o["name"] for o in outs]
    spec = {"platform": "onnxruntime_onnx", "inputs": ins, "outputs": outs,
            "batchable": all(i["shape"] and i["shape"][0] is None for i in ins)}

    def run(inputs):
        return list(zip(names, sess.run(names, inputs)))
    return Runner(spec, run)


def _flatten_names(out_spec):
    from ..jit.graph import Ref
    if isinstance(out_spec, Ref):
        return ["output"], lambda o: [o]
    if isinstance(out_spec, dict):
        keys = list(out_spec)
        return keys, lambda o: [o[k] for k in keys]
    if isinstance(out_spec, (tuple, list)):
        return ([f"output_{i}" for i in range(len(out_spec))], lambda o: list(o))
    raise ValueError(f"jit graph output {type(out_spec).__name__} is not a tensor, tuple or dict")


def _jit_runner(path, plans):
    import deepseek
    from ..jit.graph import Sym
    cf0 = deepseek.jit.load(path)
    g = cf0._last.graph
    n_in = len(g.inputs)
    in_names = ["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)]

    def dims(shape):
        return [None if isinstance(d, Sym) else int(d) for d in shape]

    ins = [{"name": n, "dtype": g.values[v].dtype.name, "shape": dims(g.values[v].shape)}
           for n, v in zip(in_names, g.inputs)]
    out_names, flat = _flatten_names(g.out_spec)
    spec = {"platform": "deepseek_jit", "inputs": ins,
            "outputs": [{"name": n, "dtype": None, "shape": None} for n in out_names],
            "batchable": bool(g.dynamic_batch)}

    def runner(cf):
        def run(inputs):
            arrays = [np.ascontiguousarray(inputs[n]) for n in in_names]
            plans.note(id(cf), arrays)
            with deepseek.no_grad():
                out = cf(*[deepseek.from_numpy(a) for a in arrays])
            return [(n, np.asarray(t.numpy())) for n, t in zip(out_names, flat(out))]
        return run
    # one loaded copy per slice thread: a compiled plan owns its buffers, not reentrant
    copies = iter([cf0])
    return spec, lambda: runner(next(copies, None) or deepseek.jit.load(path))


def _hub_runner(name, jit, plans):
    import deepseek
    from .. import hub
    path = hub.resolve(name)
    if os.path.exists(os.path.join(path, "modules.json")):
        return _sentence_runner(path, jit, plans)
    model = hub.load(path)
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.name not in ("labels", "self")]
    ins = [{"name": p.name, "shape": [None, None],
            "dtype": "int64" if p.name.endswith(("ids", "mask")) else "float32",
            "optional": p.default is not inspect.Parameter.empty} for p in params]
    if not any(p.name.endswith("ids") for p in params):      # images: (N, C, H, W)
        for i in ins:
            i["shape"] = [None, None, None, None]

    def run(inputs):
        with deepseek.no_grad():
            out = model(**{k: deepseek.from_numpy(np.ascontiguousarray(v))
                           for k, v in inputs.items()})
        if isinstance(out, dict):
            return [(k, v.numpy()) for k, v in out.items() if v is not None]
        return [("output", out.numpy())]
    spec = {"platform": "deepseek_hub", "inputs": ins, "outputs": [], "batchable": True}
    # eager inference keeps no state between calls (grad mode is per thread): one model
    # serves every slice thread
    return spec, lambda: run


def _sentence_runner(path, jit, plans):
    """A sentence-transformers directory: token ids + mask in, pooled embeddings out (what
    ``SentenceEncoder.encode`` computes after tokenizing). The encoder runs as a JIT graph
    traced with a free batch dim (one per sequence length, traced on its first batch; one
    per thread), the pooling eagerly, as ``encode`` does; ``jit=False`` runs it all eagerly."""
    import deepseek
    import deepseek.nn as nn
    import deepseek.nn.functional as F
    from ..models import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(path)
    dim = enc.model.config.hidden_size
    ins = [{"name": "input_ids", "dtype": "int64", "shape": [None, None]},
           {"name": "attention_mask", "dtype": "int64", "shape": [None, None]}]
    spec = {"platform": "deepseek_hub", "inputs": ins,
            "outputs": [{"name": "embedding", "dtype": "float32", "shape": [None, dim]}],
            "batchable": True}

    class Encoder(nn.Module):
        """The transformer's token vectors: what the JIT traces."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(ids, attention_mask=mask).last_hidden_state

    eager = Encoder(enc.model).eval()

    def runner(encoder):
        def run(inputs):
            ids = np.ascontiguousarray(inputs["input_ids"])
            mask = np.ascontiguousarray(inputs["attention_mask"])
            with deepseek.no_grad():
                h = encoder(deepseek.from_numpy(ids), deepseek.from_numpy(mask))
                e = enc._pool(h, mask)
                if enc.normalize:
                    e = F.normalize(e, p=2, dim=1)
            return [("embedding", np.asarray(e.numpy(), dtype=np.float32))]
        return run
    if not jit:
        return spec, lambda: runner(eager)
    # one JIT graph per slice thread (each traced on its first batch), the weights shared
    return spec, lambda: runner(_TracedOrEager(eager, plans))


_TRACE_LOCK = threading.Lock()


class _TracedOrEager:
    """``module``'s JIT graph (traced with a free batch dim on its first call, retraced for
    a new sequence length), or ``module`` itself once the JIT has failed on inputs that
    the eager module takes (logged: the model keeps serving, on the eager engine)."""

    def __init__(self, module, plans):
        import deepseek
        self.module, self.plans = module, plans
        self.compiled = deepseek.jit.compile(module, dynamic=True)
        self._traced = set()            # trailing shapes this graph has been traced for

    def __call__(self, *args):
        if self.compiled is None:
            return self.module(*args)
        self.plans.note(id(self), args)
        key = tuple(tuple(a.shape[1:]) for a in args)
        try:
            if key in self._traced:
                return self.compiled(*args)
            # the slice threads trace their copies on the same first batch: one at a time
            with _TRACE_LOCK:
                out = self.compiled(*args)
            self._traced.add(key)
            return out
        except Exception as e:  # noqa: BLE001 - the input's fault or the tracer's?
            out = self.module(*args)        # raises again when it is the input's
            logging.getLogger("deepseek.serve").warning(
                "jit: the traced graph failed where the eager model runs (%s: %s); serving "
                "it eagerly from now on", type(e).__name__, e)
            self.compiled = None
            return out
