"""quantize_dynamic / quantize_weights / prepare / convert / model_size."""
import copy
import os
import tempfile
import warnings
from collections import namedtuple

import numpy as np

from .. import dtypes as _dt
from .. import nn
from ..nn import quantized as nnq
from ..nn.quantized import dynamic as nnqd
from .observer import QConfig, default_qconfig

_INT8_NAMES = ("int8", "qint8")


def _check_int8(fn, dtype):
    if isinstance(dtype, str):
        if dtype.lower() in _INT8_NAMES:
            return
    else:
        try:
            if np.dtype(dtype) == _dt.qint8:
                return
        except TypeError:
            pass
    raise ValueError(f"{fn}(): unsupported dtype {dtype!r}; supported: deepseek.qint8 or "
                     f"'int8'" + (" (weight-only 'int4': quantize_weights)"
                                  if fn == "quantize_dynamic" else ""))


def _eval_copy(fn, model, inplace):
    if not inplace:
        model = copy.deepcopy(model)
    if model.training:
        warnings.warn(f"{fn}(): the model is in training mode; quantizing for inference "
                      "switches it to eval() (as torch does)", UserWarning, stacklevel=3)
        model.eval()
    return model


def _swap(model, pick, make):
    """Replace every submodule m with pick(name, m) truthy by make(m); returns the root."""
    if pick("", model):
        return make(model)
    for qual, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            full = f"{qual}.{name}" if qual else name
            if pick(full, child):
                setattr(parent, name, make(child))
    return model


# --------------------------------------------------------------------- dynamic

_DYNAMIC = {nn.Linear: nnqd.Linear, nn.Embedding: nnq.Embedding}


def quantize_dynamic(model, qconfig_spec=None, dtype=_dt.qint8, mapping=None, inplace=False,
                     act_mode="per_row", reduce_range=False):
    """Replace the module types (or qualified names) of ``qconfig_spec`` by dynamically
    quantized int8 modules; returns the quantized model (a copy unless inplace).

    ``act_mode``: "per_row" or "per_tensor" activation scales. ``reduce_range=True``
    quantizes activations to 7 bits ([-63, 63], as PyTorch's fbgemm default does): a
    little less precise, and faster on CPUs without VNNI (the AVX2 kernel skips a step)."""
    _check_int8("quantize_dynamic", dtype)
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_dynamic(): model must be a deepseek.nn.Module, got "
                        f"{type(model).__name__}")
    mapping = dict(_DYNAMIC if mapping is None else mapping)
    spec = {nn.Linear} if qconfig_spec is None else qconfig_spec
    if isinstance(spec, type) or isinstance(spec, str):
        spec = {spec}
    types, names = set(), set()
    for s in spec:
        if isinstance(s, str):
            names.add(s)
        elif isinstance(s, type):
            if s not in mapping:
                raise ValueError(
                    f"quantize_dynamic(): module type {s.__module__}.{s.__name__} is not "
                    f"supported; supported: "
                    f"{', '.join('nn.' + t.__name__ for t in mapping)}")
            types.add(s)
        else:
            raise TypeError(f"quantize_dynamic(): qconfig_spec entries must be module types "
                            f"or qualified names, got {type(s).__name__}")
    model = _eval_copy("quantize_dynamic", model, inplace)
    for n in names:
        sub = model.get_submodule(n) if n else model
        if type(sub) not in mapping:
            raise ValueError(f"quantize_dynamic(): submodule {n!r} is "
                             f"{type(sub).__name__}, not a supported type "
                             f"({', '.join(t.__name__ for t in mapping)})")

    def pick(name, m):
        return type(m) in types or (name in names and type(m) in mapping)
    return _swap(model, pick, lambda m: mapping[type(m)].from_float(
        m, act_mode=act_mode, reduce_range=bool(reduce_range)))


# ------------------------------------------------------------------ weight-only

def quantize_weights(model, dtype="int8", group_size=128, inplace=False):
    """Weight-only quantization of every nn.Linear: int8 or int4 (two per byte) with one
    fp32 scale per ``group_size`` input features (None: one per output channel);
    activations stay fp32."""
    d = dtype if isinstance(dtype, str) else None
    if d is None:
        try:
            d = "int8" if np.dtype(dtype) == _dt.qint8 else None
        except TypeError:
            d = None
    if d not in ("int8", "qint8", "int4"):
        raise ValueError(f"quantize_weights(): unsupported dtype {dtype!r}; supported: "
                         "'int8', 'int4'")
    bits = 4 if d == "int4" else 8
    if group_size is not None and (not isinstance(group_size, int) or group_size < 2 or
                                   group_size % 2):
        raise ValueError(f"quantize_weights(): group_size must be an even int >= 2 or None "
                         f"(one group per output channel), got "
                         f"{group_size!r}")
    model = _eval_copy("quantize_weights", model, inplace)
    return _swap(model, lambda n, m: type(m) is nn.Linear,
                 lambda m: nnq.WeightOnlyLinear.from_float(m, bits=bits, group_size=group_size))


# ------------------------------------------------------------------ static PTQ

_STATIC = {nn.Linear: nnq.Linear, nn.Conv2d: nnq.Conv2d}


def _observe_input(module, args):
    module.activation_pre_process(args[0])


def prepare(model, qconfig=None, inplace=False):
    """Attach an input observer (``activation_pre_process``) to every nn.Linear /
    nn.Conv2d; run calibration batches through the returned model, then convert()."""
    qconfig = default_qconfig if qconfig is None else qconfig
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"prepare(): qconfig must be a deepseek.quantization.QConfig, got "
                        f"{type(qconfig).__name__}")
    if qconfig.weight != "per_channel":
        raise ValueError(f"prepare(): weight scheme {qconfig.weight!r} is not supported "
                         "(supported: 'per_channel')")
    model = _eval_copy("prepare", model, inplace)
    found = 0
    for _, m in model.named_modules():
        if type(m) in _STATIC:
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
                continue           # stays fp32 (int8 Conv2d: groups=1, zero padding only)
            m.add_module("activation_pre_process", qconfig.activation())
            m._quant_hook = m.register_forward_pre_hook(_observe_input)
            found += 1
    if not found:
        warnings.warn("prepare(): the model has no nn.Linear / nn.Conv2d to quantize",
                      UserWarning, stacklevel=2)
    return model


def convert(model, inplace=False):
    """Replace every observed nn.Linear / nn.Conv2d by its static int8 module (fixed
    activation scale from its observer)."""
    if not inplace:
        model = copy.deepcopy(model)

    def make(m):
        return _STATIC[type(m)].from_observed(m, m.activation_pre_process.scale())
    return _swap(model, lambda n, m: type(m) in _STATIC and
                 "activation_pre_process" in m._modules, make)


# ------------------------------------------------------------------------ size

ModelSize = namedtuple("ModelSize", ["memory_bytes", "disk_bytes", "parameters"])


def model_size(model):
    """Bytes held in memory (parameters, buffers, packed int8 weights counted once), bytes
    of its state_dict saved by deepseek.save (safetensors), and the number of weights."""
    from .. import serialization
    mem, count = 0, 0
    for m in model.modules():
        if hasattr(m, "memory_bytes") and isinstance(m, nnq.QuantizedModule):
            mem += m.memory_bytes()
            count += m.weight_count()
            continue
        for p in m._parameters.values():
            if p is not None:
                mem += p._data.nbytes
                count += p._data.size
        for name, b in m._buffers.items():
            if b is not None:
                mem += b._data.nbytes
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        serialization.save(model.state_dict(), path)
        disk = os.path.getsize(path)
    finally:
        os.unlink(path)
    return ModelSize(mem, disk, count)
