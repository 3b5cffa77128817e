"""Checkpoints: one safetensors file, nested structure as JSON in its metadata.

File layout (https://github.com/huggingface/safetensors, written here without the
dependency)::

    8 bytes      N, the header length (unsigned little-endian)
    N bytes      JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
                        ..., "__metadata__": {str: str}}, padded with spaces to 8 bytes
    the rest     the tensors' raw little-endian bytes; offsets are relative to here

``save(obj, path)`` stores any nesting of dict / list / tuple whose leaves are Tensors,
numpy arrays and plain JSON values (str, int, float incl. nan/inf, bool, None). The
arrays become safetensors entries; the structure, with references to them, goes in
``__metadata__["deepseek.structure"]`` as a JSON string, next to a CRC-32 of the data
section so a damaged file is refused instead of loaded with garbage. ``load`` never
unpickles: it only parses JSON and copies bytes into arrays.

``save_file`` / ``load_file`` read and write plain flat safetensors files
(``{name: tensor}``), interchangeable with the ``safetensors`` library.
"""
import json
import math
import os
import sys
import zlib

import numpy as np

from . import dtypes as _dt
from ._atomic import write_atomic

__all__ = ["save", "load", "save_file", "load_file", "CheckpointError", "FORMAT"]

FORMAT = "deepseek/1"
_STRUCT_KEY = "deepseek.structure"
_FORMAT_KEY = "deepseek.format"
_CRC_KEY = "deepseek.crc32"
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's limit too

_DTYPES = {
    "F16": _dt.float16, "BF16": _dt.bfloat16, "F32": _dt.float32, "F64": _dt.float64,
    "I8": _dt.int8, "U8": _dt.uint8, "I16": _dt.int16, "I32": _dt.int32, "I64": _dt.int64,
    "BOOL": _dt.bool_,
}
_CODES = {v: k for k, v in _DTYPES.items()}
_BIG_ENDIAN = sys.byteorder == "big"


class CheckpointError(ValueError):
    """A file that is not a valid checkpoint: truncated, altered, or of another format."""


# ---- writing ----------------------------------------------------------------------------

def _host_array(x, what):
    """A C-contiguous little-endian numpy array of a Tensor / ndarray (cupy: copied)."""
    from ._tensor import Tensor
    from .backend import to_device
    arr = x._data if isinstance(x, Tensor) else x
    arr = to_device(arr, "cpu") if not isinstance(arr, np.ndarray) else arr
    if arr.dtype not in _CODES:
        raise TypeError(f"{what}: dtype {arr.dtype} cannot be stored; supported: "
                        f"{', '.join(str(d) for d in _CODES)}")
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make 0-d arrays 1-d)
        arr = arr.copy(order="C")
    if _BIG_ENDIAN and arr.dtype.itemsize > 1:  # the format is little-endian
        arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}")).byteswap().view(arr.dtype)
    return arr


def _write_atomic(path, header, arrays):
    """Write header + arrays to ``path`` atomically (see :mod:`deepseek._atomic`: readers
    see the old file or the new one, and no temp file outlives an error or SIGTERM)."""
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=True,
                        allow_nan=False).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # the data section starts 8-byte aligned

    def write(f):
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for arr in arrays:
            if arr.size:
                f.write(_bytes_view(arr))

    write_atomic(path, write)


def _bytes_view(arr):
    """The array's bytes without a copy (bfloat16 exports no buffer: view as uint8)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _layout(named):
    """Order entries like the safetensors library (larger alignment first, then by name)
    and give each its [begin, end) offsets. ``named``: [(name, array)]."""
    named = sorted(named, key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
    header, arrays, offset = {}, [], 0
    for name, arr in named:
        end = offset + arr.nbytes
        header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, end]}
        arrays.append(arr)
        offset = end
    return header, arrays


def save_file(tensors, path, metadata=None):
    """Write ``{name: Tensor | ndarray}`` as a plain safetensors file (atomically).

    ``metadata``: optional ``{str: str}`` stored in the header's ``__metadata__``.
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"save_file expects a dict of name -> tensor, got {type(tensors).__name__}")
    named = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_file: tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("save_file: '__metadata__' is reserved for the header")
        named.append((name, _host_array(t, f"save_file: tensor {name!r}")))
    header, arrays = _layout(named)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save_file: metadata must be a dict of str -> str")
        header = {"__metadata__": dict(metadata), **header}
    _write_atomic(path, header, arrays)


class _Encoder:
    """Turns a nested object into JSON-able structure plus a list of arrays.

    Encoding: JSON-native values as themselves; non-finite floats as {"__float__": "nan"};
    a tensor as {"__tensor__": name} (+ "requires_grad": true); a numpy array as
    {"__ndarray__": name}; a tuple as {"__tuple__": [...]}; a dict with str keys as a
    JSON object unless a key starts with "__" (then, like any dict with other keys, as
    {"__dict__": [[key, value], ...]}). The same tensor object saved twice is stored once.
    """

    def __init__(self):
        self.named = []
        self.by_id = {}

    def array_ref(self, x, kind):
        key = id(x)
        if key in self.by_id:
            return self.by_id[key][0]
        name = f"t{len(self.named)}"
        self.named.append((name, _host_array(x, f"save: {kind} at {name}")))
        self.by_id[key] = (name, x)  # keep x alive so its id is not reused meanwhile
        return name

    def encode(self, obj, where="obj"):
        from ._tensor import Tensor
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
            return int(obj)
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, (float, np.floating)):
            obj = float(obj)
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, Tensor):
            ref = {"__tensor__": self.array_ref(obj, "tensor")}
            if obj.requires_grad:
                ref["requires_grad"] = True
            return ref
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": self.array_ref(obj, "array")}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{where}[{k!r}]") for k, v in obj.items()}
            items = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (str, int, float, bool, tuple, np.integer))):
                    raise TypeError(f"save: {where} has a key of type {type(k).__name__} "
                                    f"({k!r}); keys must be str, int, float, bool, None or tuples")
                items.append([self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")])
            return {"__dict__": items}
        from .nn.module import Module
        if isinstance(obj, Module):
            raise TypeError(f"save: {where} is a whole module ({type(obj).__name__}); deepseek never "
                            "pickles objects: save its weights with save(model.state_dict(), f) and "
                            "rebuild the model in code, then model.load_state_dict(load(f))")
        raise TypeError(f"save: {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                        "only Tensors, numpy arrays, dict/list/tuple and str/int/float/bool/None "
                        "can be saved (nothing is pickled)")


def save(obj, path, **kwargs):
    """Save ``obj`` (nested dict/list/tuple of Tensors, arrays and JSON values) to ``path``
    (a path, or a writable binary file object such as ``io.BytesIO``). PyTorch's extra
    arguments (``pickle_protocol``, ``_use_new_zipfile_serialization``) are accepted and
    ignored: nothing is pickled.

    One safetensors file, written atomically (temp file in the same directory, fsync,
    rename): a crash leaves the previous file intact. ``model.state_dict()`` and
    ``optimizer.state_dict()`` round-trip through :func:`save` / :func:`load`.
    """
    enc = _Encoder()
    structure = enc.encode(obj)
    header, arrays = _layout(enc.named)
    crc = 0
    for arr in arrays:
        if arr.size:
            crc = zlib.crc32(_bytes_view(arr), crc)
    meta = {_FORMAT_KEY: FORMAT,
            _STRUCT_KEY: json.dumps(structure, separators=(",", ":"), allow_nan=False),
            _CRC_KEY: f"{crc:08x}"}
    if _is_file_object(path, "write"):
        _write_stream(path, {"__metadata__": meta, **header}, arrays)
        return
    _write_atomic(path, {"__metadata__": meta, **header}, arrays)


def _is_file_object(f, method):
    return not isinstance(f, (str, bytes, os.PathLike)) and hasattr(f, method)


def _write_stream(f, header, arrays):
    """The same bytes ``_write_atomic`` writes, to a binary file object."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "ckpt.safetensors")
        _write_atomic(tmp, header, arrays)
        with open(tmp, "rb") as src:
            while True:
                chunk = src.read(1 << 24)
                if not chunk:
                    break
                f.write(chunk)


# ---- reading ------------------------------------------------------------------------------

def _fail(path, what):
    raise CheckpointError(f"{os.fspath(path)}: {what}")


def _read(path, verify_crc=None):
    """Parse and validate one safetensors file. Returns (metadata, {name: ndarray}).

    Every header field is checked before any data is read: a truncated, padded or altered
    file raises CheckpointError naming the file and the problem.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            _fail(path, f"file is {size} bytes, too short for a safetensors header "
                  "(truncated or not a checkpoint)")
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_HEADER or n > size - 8:
            _fail(path, f"header length {n} does not fit: the file has {size - 8} bytes after "
                  "the length field (truncated, or not a safetensors file)")
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            # RecursionError: a header nested thousands deep (json recurses per level)
            _fail(path, f"header is not valid JSON ({e}); the file is damaged or not a "
                  "safetensors file")
        if not isinstance(header, dict):
            _fail(path, f"header must be a JSON object, got {type(header).__name__}")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            _fail(path, "__metadata__ must be an object of strings")
        data_len = size - 8 - n
        entries, spans = [], []
        for name, info in header.items():
            if not isinstance(info, dict):
                _fail(path, f"tensor {name!r}: entry must be an object, got {info!r}")
            code = info.get("dtype")
            if code not in _DTYPES:
                _fail(path, f"tensor {name!r}: unknown dtype {code!r} (known: "
                      f"{', '.join(_DTYPES)})")
            shape, offs = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
                _fail(path, f"tensor {name!r}: bad shape {shape!r}")
            if not (isinstance(offs, list) and len(offs) == 2 and all(
                    isinstance(o, int) and not isinstance(o, bool) for o in offs)):
                _fail(path, f"tensor {name!r}: bad data_offsets {offs!r}")
            begin, end = offs
            if not 0 <= begin <= end <= data_len:
                _fail(path, f"tensor {name!r}: data_offsets [{begin}, {end}] are out of range: "
                      f"the data section has {data_len} bytes (truncated file?)")
            dtype = _DTYPES[code]
            numel = math.prod(shape)
            if numel * dtype.itemsize != end - begin:
                _fail(path, f"tensor {name!r}: {code} of shape {shape} needs "
                      f"{numel * dtype.itemsize} bytes but data_offsets span {end - begin}")
            entries.append((name, dtype, tuple(shape), begin, end))
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        pos = 0
        for begin, end, name in spans:
            if begin != pos:
                _fail(path, f"tensor {name!r} starts at byte {begin} of the data but the "
                      f"previous data ends at {pos} ({'overlap' if begin < pos else 'gap'}: "
                      "the header was altered)")
            pos = end
        if pos != data_len:
            _fail(path, f"the tensors cover {pos} bytes of data but the file holds {data_len} "
                  "after the header (truncated, appended to, or altered)")
        arrays = {}
        crc = 0
        base = 8 + n
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
            arr = np.empty(shape, dtype=dtype)
            if end > begin:
                f.seek(base + begin)
                buf = arr.reshape(-1).view(np.uint8)
                got = f.readinto(memoryview(buf))
                if got != end - begin:
                    _fail(path, f"tensor {name!r}: read {got} of {end - begin} bytes "
                          "(the file changed while being read?)")
                if verify_crc is not None:
                    crc = zlib.crc32(memoryview(buf), crc)
            if _BIG_ENDIAN and dtype.itemsize > 1:  # the file is little-endian
                arr.view(np.dtype(f"u{dtype.itemsize}")).byteswap(inplace=True)
            arrays[name] = arr
        if verify_crc is not None and meta.get(_CRC_KEY) is not None \
                and f"{crc:08x}" != meta[_CRC_KEY]:
            _fail(path, f"data checksum mismatch (crc32 {crc:08x}, header says "
                  f"{meta[_CRC_KEY]}): the tensor bytes were altered or damaged")
    return meta, arrays


def load_file(path, device="cpu"):
    """Read a plain safetensors file into ``{name: Tensor}`` (any file the safetensors
    library writes; deepseek.save's files too, flat by internal names)."""
    from ._tensor import Tensor
    from .backend import to_device
    _, arrays = _read(path)
    return {k: Tensor._make(to_device(a, device) if device != "cpu" else a)
            for k, a in arrays.items()}


class _Decoder:
    def __init__(self, path, arrays, device):
        self.path, self.arrays, self.device = path, arrays, device
        self.made = {}

    def array(self, name):
        if not isinstance(name, str) or name not in self.arrays:
            _fail(self.path, f"structure refers to tensor {name!r}, which the file does not hold")
        return self.arrays[name]

    def decode(self, s):
        from ._tensor import Tensor
        from .backend import to_device
        if s is None or isinstance(s, (bool, int, float, str)):
            return s
        if isinstance(s, list):
            return [self.decode(v) for v in s]
        if not isinstance(s, dict):
            _fail(self.path, f"unexpected value in the structure: {s!r}")
        if len(s) in (1, 2) and "__tensor__" in s:
            name = s["__tensor__"]
            key = ("t", name)
            if key not in self.made:  # the same tensor saved twice comes back as one object
                arr = self.array(name)
                if self.device is not None:
                    arr = to_device(arr, self.device)
                t = Tensor._make(arr)
                if s.get("requires_grad") and _dt.is_floating(arr.dtype):
                    t.requires_grad = True
                self.made[key] = t
            return self.made[key]
        if len(s) == 1:
            (tag, v), = s.items()
            if tag == "__ndarray__":
                return self.array(v)
            if tag == "__tuple__" and isinstance(v, list):
                return tuple(self.decode(x) for x in v)
            if tag == "__float__" and v in ("nan", "inf", "-inf"):
                return float(v)
            if tag == "__dict__" and isinstance(v, list):
                out = {}
                for item in v:
                    if not (isinstance(item, list) and len(item) == 2):
                        _fail(self.path, f"bad dict item in the structure: {item!r}")
                    k = self.decode(item[0])
                    try:
                        out[k] = self.decode(item[1])
                    except TypeError:  # an unhashable key: not something save() writes
                        _fail(self.path, f"bad dict key in the structure: {k!r}")
                return out
        if any(k.startswith("__") for k in s):
            _fail(self.path, f"unknown tag in the structure: {sorted(s)}")
        return {k: self.decode(v) for k, v in s.items()}


def load(path, map_location=None, weights_only=None, mmap=None, **kwargs):
    """Load what :func:`save` wrote: the same nesting, Tensors as deepseek Tensors.

    ``path`` may be a path or a readable binary file object. A PyTorch checkpoint
    (``torch.save``'s zip format) is read by ``deepseek._torch_pt`` with PyTorch's
    ``weights_only=True`` rules: tensors, parameters and plain containers only, any
    other object refused (``weights_only=False`` is refused too: never unpickled).

    ``map_location``: None or "cpu" keeps tensors on the CPU; "cuda"/"cuda:N" (or a
    ``deepseek.device``) moves them there. Raises :class:`CheckpointError` (a ValueError)
    naming the file when it is truncated, altered or not a deepseek checkpoint; a plain
    safetensors file (no deepseek structure) loads as a flat ``{name: Tensor}`` dict.
    Nothing is ever unpickled.
    """
    if weights_only is False:
        raise ValueError("load(weights_only=False) is not supported: deepseek never unpickles "
                         "arbitrary objects; tensors and plain containers load with the default")
    if _is_file_object(path, "read"):
        data = path.read()
        if data[:2] == b"PK":
            from ._torch_pt import load_pt_bytes
            return _to_device(load_pt_bytes(data, "<file object>"), map_location)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "ckpt.safetensors")
            with open(tmp, "wb") as f:
                f.write(data)
            return load(tmp, map_location=map_location)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"PK":
        from ._torch_pt import load_pt
        return _to_device(load_pt(path), map_location)
    device = None
    if map_location is not None:
        if callable(map_location) or isinstance(map_location, dict):
            raise TypeError("load: map_location must be a device ('cpu', 'cuda:0'), not a "
                            f"{type(map_location).__name__}")
        from .backend import Device
        device = str(Device(str(map_location)))
        if device == "cpu":
            device = None
    meta, arrays = _read(path, verify_crc=True)
    if _STRUCT_KEY not in meta:
        dec = _Decoder(path, arrays, device)
        return {k: dec.decode({"__tensor__": k}) for k in arrays}
    fmt = meta.get(_FORMAT_KEY)
    if fmt != FORMAT:
        _fail(path, f"written in checkpoint format {fmt!r}; this deepseek reads {FORMAT!r}")
    try:
        structure = json.loads(meta[_STRUCT_KEY])
    except (ValueError, RecursionError) as e:
        _fail(path, f"the structure in the metadata is not valid JSON ({e})")
    try:
        return _Decoder(path, arrays, device).decode(structure)
    except RecursionError:
        _fail(path, "the structure in the metadata is nested too deeply to decode "
              f"(Python's recursion limit is {sys.getrecursionlimit()})")


def _to_device(obj, map_location):
    """Move the tensors of a loaded structure to ``map_location`` (None / 'cpu': stay)."""
    from ._tensor import Tensor
    if map_location is None or str(map_location) == "cpu":
        return obj
    if isinstance(obj, Tensor):
        return obj.to(str(map_location))
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, map_location)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, map_location) for v in obj)
    return obj
