"""Reading PyTorch checkpoints (``torch.save``'s zip format) without running their code.

A ``.pt`` file is a zip archive: ``<name>/data.pkl`` is a pickle of the structure,
``<name>/data/<key>`` the raw bytes of each storage, ``<name>/byteorder`` their byte
order. The pickle is read by an Unpickler whose ``find_class`` knows only a fixed table
of names (PyTorch's ``weights_only=True`` allowlist: tensor and parameter rebuild
functions, storage types, OrderedDict, and a few builtins) and maps each to a function
of ours that builds numpy arrays. Any other global, including every import of a module
or class from the file, raises ``UnpicklingError``, so a checkpoint can't run code.
"""
import collections
import io
import pickle
import zipfile

import numpy as np

from . import dtypes as _dt

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _dt.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {"float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
                 "float16": np.float16, "half": np.float16, "bfloat16": _dt.bfloat16, "int64": np.int64,
                 "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8,
                 "uint8": np.uint8, "bool": np.bool_}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only its dtype is used."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _DType:
    """Stands in for a ``torch.dtype`` global (``torch.float32``)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    from ._tensor import Tensor
    arr = storage
    itemsize = arr.dtype.itemsize
    size, stride = tuple(size), tuple(stride)
    if not size:
        out = arr[storage_offset:storage_offset + 1].reshape(())
    else:
        need = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
        if need > arr.size:
            raise pickle.UnpicklingError(f"tensor of size {size} and stride {stride} at offset "
                                         f"{storage_offset} does not fit its storage of {arr.size} elements")
        out = np.lib.stride_tricks.as_strided(arr[storage_offset:], shape=size,
                                              strides=tuple(s * itemsize for s in stride)) if all(size) \
            else np.zeros(size, arr.dtype)
    requires_grad = bool(rest[0]) if rest and isinstance(rest[0], bool) else False
    t = Tensor._make(np.array(out, copy=True, order="C"))  # (ascontiguousarray makes 0-d 1-d)
    if requires_grad and _dt.is_floating(t.dtype):
        t.requires_grad_(True)
    return t


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    from .nn.parameter import Parameter
    return Parameter(data.detach(), requires_grad=requires_grad)


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


def _codecs_encode(obj, encoding="latin1"):
    # protocol-2 pickles store bytes as codecs.encode(str, 'latin1'): a pure conversion
    return obj.encode(encoding)


def _size(*args):
    return tuple(*args) if args else ()


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages, where):
        super().__init__(f)
        self._storages, self._where = storages, where

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(_TORCH_DTYPES[name])
        if module == "torch" and name == "Size":
            return _size
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "_codecs" and name == "encode":
            return _codecs_encode
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict", "int", "float",
                                             "bool", "str", "slice", "range"):
            return getattr(__builtins__, name) if hasattr(__builtins__, name) else __builtins__[name]
        raise pickle.UnpicklingError(
            f"{self._where}: refusing to load {module}.{name}: a PyTorch checkpoint may hold only "
            "tensors, parameters and plain containers here (PyTorch's weights_only=True); deepseek "
            "never runs code from a file. Re-save it in PyTorch with torch.save(model.state_dict(), f)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._where}: unknown persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        dtype = stype.dtype if isinstance(stype, (_StorageType, _DType)) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"{self._where}: unsupported storage type {stype!r}")
        raw = self._storages(str(key))
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size < numel:
            raise pickle.UnpicklingError(f"{self._where}: storage {key} has {arr.size} elements, "
                                         f"expected {numel}")
        return arr[:numel]


def load_pt_bytes(data, where="<bytes>"):
    """The structure of a PyTorch zip checkpoint given as bytes (see the module docstring)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise pickle.UnpicklingError(f"{where}: not a PyTorch zip checkpoint ({e})") from None
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
        raise pickle.UnpicklingError(f"{where}: no data.pkl in the archive (not a torch.save file; the "
                                     "legacy non-zip format is not supported)")
    prefix = pkl[:-len("data.pkl")]
    big = False
    if prefix + "byteorder" in names:
        big = zf.read(prefix + "byteorder").strip() == b"big"

    if big:
        raise pickle.UnpicklingError(f"{where}: big-endian checkpoints are not supported")
    return _Unpickler(io.BytesIO(zf.read(pkl)), lambda key: zf.read(prefix + "data/" + key), where).load()


def load_pt(path):
    """The structure of the PyTorch zip checkpoint at ``path``."""
    with open(path, "rb") as f:
        return load_pt_bytes(f.read(), str(path))
