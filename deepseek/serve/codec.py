"""Request bodies to arrays and arrays to response bodies, and the checks in between.

Formats of ``POST /v1/predict``:

- JSON arrays: ``{"inputs": [[...], ...]}`` (a model with one input) or
  ``{"inputs": {"name": [[...]], ...}}``; numbers are cast to the input's dtype when that
  loses no kind (ints to floats, yes; floats to ints, no); answered as
  ``{"outputs": {"name": [[...]]}}``;
- base64 tensors: ``{"inputs": {"name": {"b64": "...", "dtype": "float32", "shape": [2, 4]}}}``
  (little-endian, C order), answered in the same form;
- ``Content-Type: application/octet-stream``: a safetensors file whose tensor names are the
  input names, answered with a safetensors file of the outputs.

``POST /v2/models/{name}/infer`` takes KServe v2 JSON (``inputs: [{name, shape, datatype,
data}]``, data flat in row-major order or nested) and answers in kind, with the binary tensor
data extension (what tritonclient sends by default): an ``Inference-Header-Content-Length: N``
header says the first N bytes of the body are the JSON; an input with
``"parameters": {"binary_data_size": k}`` has no ``data`` and takes the next k bytes after it
(little-endian, row-major); outputs asked for with ``"parameters": {"binary_data": true}``
(or every output, with the request parameter ``binary_data_output``) come back the same way.

Every problem raises :class:`BadRequest` with the HTTP status and a message saying what was
expected and what came.
"""
import base64
import binascii
import json

import numpy as np

__all__ = ["BadRequest", "parse_json", "v1_inputs", "safetensors_inputs", "v2_split_body",
           "v2_inputs", "check_inputs", "v1_json", "safetensors_body", "v2_body", "V2_DTYPES"]

V2_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
             "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
_TO_V2 = {v: k for k, v in V2_DTYPES.items()}


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (4xx) and the reason."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def parse_json(body):
    """``body`` as a JSON object, or BadRequest naming where it broke."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _dtype(name, where):
    try:
        dt = np.dtype(name)
    except TypeError:
        raise BadRequest(f"{where}: unknown dtype {name!r}") from None
    if dt.kind not in "biuf":
        raise BadRequest(f"{where}: dtype {name!r} is not a numeric tensor dtype")
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def _shape(shape, where):
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    return tuple(shape)


def _from_bytes(raw, dtype, shape, where):
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(raw) != n * dtype.itemsize:
        raise BadRequest(f"{where}: shape {list(shape)} of {dtype.name} needs "
                         f"{n * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _from_list(data, where):
    try:
        a = np.asarray(data)
    except ValueError as e:         # ragged
        raise BadRequest(f"{where}: not a rectangular array ({e})") from None
    if a.dtype.kind not in "biuf":
        raise BadRequest(f"{where}: expected an array of numbers, got {a.dtype.name} values")
    return a


def v1_inputs(obj, spec):
    """``({name: array}, explicit names, "json" | "b64")`` from a /v1/predict JSON object."""
    if "inputs" not in obj:
        raise BadRequest('expected {"inputs": ...} (an array, or an object of named arrays '
                         f'or base64 tensors), got keys {sorted(obj)}')
    ins = obj["inputs"]
    if not isinstance(ins, dict):
        required = [i["name"] for i in spec["inputs"] if not i.get("optional")]
        if len(required) != 1:
            raise BadRequest(f"the model takes inputs {[i['name'] for i in spec['inputs']]}: "
                             'send {"inputs": {"name": ...}}')
        ins = {required[0]: ins}
    arrays, explicit, fmt = {}, set(), "json"
    for name, v in ins.items():
        where = f"input {name!r}"
        if isinstance(v, dict):
            if "b64" not in v or "dtype" not in v or "shape" not in v:
                raise BadRequest(f'{where}: a binary tensor is {{"b64", "dtype", "shape"}}, got '
                                 f"keys {sorted(v)}")
            try:
                raw = base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as e:
                raise BadRequest(f"{where}: invalid base64 ({e})") from None
            arrays[name] = _from_bytes(raw, _dtype(v["dtype"], where),
                                       _shape(v["shape"], where), where)
            explicit.add(name)
            fmt = "b64"
        else:
            arrays[name] = _from_list(v, where)
    return arrays, explicit, fmt


def safetensors_inputs(body):
    """``{name: array}`` from a safetensors body (a format with no code in it: a JSON header
    and raw bytes)."""
    from safetensors.numpy import load
    try:
        arrays = load(bytes(body))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad bytes
        raise BadRequest(f"application/octet-stream body is not a safetensors file ({e})") \
            from None
    if not arrays:
        raise BadRequest("the safetensors body holds no tensors")
    return arrays


def v2_split_body(body, header_length):
    """``(JSON part, binary part)`` of a v2 infer body; ``header_length`` is the
    ``Inference-Header-Content-Length`` header's text (None: all of it is JSON)."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length: expected the JSON header's size "
                         f"in bytes, at most the body's {len(body)}, got {header_length!r}")
    n = int(text)
    return body[:n], memoryview(body)[n:]


def _binary_size(t, where):
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}: parameters must be an object, got "
                         f"{type(params).__name__}")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BadRequest(f"{where}: binary_data_size must be a non-negative int, got {size!r}")
    return size


def v2_inputs(obj, binary=b""):
    """``({name: array}, the request's ``outputs`` list or None)`` from KServe v2 infer JSON;
    ``binary`` holds the tensors that follow the JSON (the binary data extension)."""
    ins = obj.get("inputs")
    if not isinstance(ins, list) or not ins:
        raise BadRequest('expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    arrays, pos = {}, 0
    for i, t in enumerate(ins):
        size = _binary_size(t, f"inputs[{i}]") if isinstance(t, dict) else None
        need = {"name", "shape", "datatype"} | (set() if size is not None else {"data"})
        if not isinstance(t, dict) or not need <= set(t):
            raise BadRequest(f"inputs[{i}]: needs name, shape, datatype and data (or the "
                             "binary_data_size parameter), got "
                             f"{sorted(t) if isinstance(t, dict) else type(t).__name__}")
        where = f"input {t['name']!r}"
        dt = V2_DTYPES.get(str(t["datatype"]).upper())
        if dt is None:
            raise BadRequest(f"{where}: datatype {t['datatype']!r} is not one of "
                             f"{sorted(V2_DTYPES)}")
        shape = _shape(t["shape"], where)
        if size is not None:
            if pos + size > len(binary):
                raise BadRequest(f"{where}: binary_data_size {size} but only "
                                 f"{len(binary) - pos} bytes of binary data are left in the "
                                 "body")
            arrays[t["name"]] = _from_bytes(binary[pos:pos + size], _dtype(dt, where), shape,
                                            where)
            pos += size
            continue
        a = _from_list(t["data"], where)
        if a.size != (int(np.prod(shape, dtype=np.int64)) if shape else 1):
            raise BadRequest(f"{where}: shape {list(shape)} holds "
                             f"{int(np.prod(shape, dtype=np.int64))} values, data has {a.size}")
        if a.dtype.kind == "f" and np.dtype(dt).kind in "biu":
            raise BadRequest(f"{where}: datatype {t['datatype']} but the data are not integers")
        arrays[t["name"]] = a.astype(dt).reshape(shape)
    if pos != len(binary):
        raise BadRequest(f"{len(binary) - pos} bytes of binary data after the JSON header are "
                         "not claimed by any input's binary_data_size")
    outs = obj.get("outputs")
    if outs is not None and not (isinstance(outs, list)
                                 and all(isinstance(o, dict) and "name" in o for o in outs)):
        raise BadRequest('outputs: expected a list of {"name": ..., "parameters": ...}')
    return arrays, outs


def _fmt_shape(shape):
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def check_inputs(arrays, spec, explicit=()):
    """``(arrays cast to the model's dtypes, rows)``: names, dtypes and shapes checked
    against ``spec``; ``explicit`` names inputs whose dtype the client stated (these must
    match exactly, the others are cast when no kind is lost)."""
    specs = {i["name"]: i for i in spec["inputs"]}
    for n in arrays:
        if n not in specs:
            raise BadRequest(f"unknown input {n!r}: the model takes {list(specs)}")
    missing = [n for n, s in specs.items() if n not in arrays and not s.get("optional")]
    if missing:
        raise BadRequest(f"missing input(s) {missing}: the model takes {list(specs)}")
    out = {}
    for n, a in arrays.items():
        s, want = specs[n], np.dtype(specs[n]["dtype"])
        if a.dtype != want:
            if n in explicit or not (np.can_cast(a.dtype, want, "same_kind")
                                     or (a.dtype.kind in "biu" and want.kind == "f")):
                raise BadRequest(f"input {n!r}: expected dtype {want.name}, got {a.dtype.name}")
            a = a.astype(want)
        shp = s["shape"]
        if a.ndim != len(shp) or any(d is not None and d != g for d, g in zip(shp, a.shape)):
            raise BadRequest(f"input {n!r}: expected shape {_fmt_shape(shp)} (-1: any), got "
                             f"{list(a.shape)}")
        out[n] = a
    rows = {a.shape[0] for a in out.values()}
    if len(rows) != 1:
        raise BadRequest(f"inputs disagree on dim 0 (the batch): "
                         f"{ {n: a.shape[0] for n, a in out.items()} }")
    (r,) = rows
    if r == 0:
        raise BadRequest("empty batch: dim 0 of the inputs is 0")
    return out, r


def v1_json(outputs, fmt, model_name):
    """The /v1/predict JSON answer (lists, or base64 tensors when ``fmt == "b64"``)."""
    if fmt == "b64":
        enc = {n: {"b64": base64.b64encode(np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
                                           .tobytes()).decode(),
                   "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in outputs.items()}
    else:
        enc = {n: a.tolist() for n, a in outputs.items()}
    return json.dumps({"model_name": model_name, "outputs": enc}).encode()


def safetensors_body(outputs):
    """The outputs as a safetensors file."""
    from safetensors.numpy import save
    return save({n: np.ascontiguousarray(a) for n, a in outputs.items()})


def v2_body(outputs, model_name, request_id=None, requested=None, binary_default=False):
    """``(body, JSON header length or None)``: the KServe v2 infer answer. ``requested`` is
    the request's ``outputs`` list (None: every output); an output goes as binary data when
    it asks for ``binary_data`` or, not saying, when ``binary_default`` (the request's
    ``binary_data_output``) is set; the length is None when no output is binary."""
    want = None if not requested else {o["name"]: (o.get("parameters") or {}) for o in requested}
    outs, blobs = [], []
    for n, a in outputs.items():
        if want is not None and n not in want:
            continue
        entry = {"name": n, "datatype": _TO_V2.get(a.dtype.name, "BYTES"),
                 "shape": list(a.shape)}
        binary = (want or {}).get(n, {}).get("binary_data", binary_default)
        if binary:
            raw = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = a.reshape(-1).tolist()
        outs.append(entry)
    body = {"model_name": model_name, "model_version": "1", "outputs": outs}
    if request_id is not None:
        body["id"] = request_id
    head = json.dumps(body).encode()
    if not blobs:
        return head, None
    return b"".join([head] + blobs), len(head)


def v2_tensor_meta(t):
    """A spec entry as KServe v2 metadata ``{name, datatype, shape}`` (-1: any)."""
    dt = t.get("dtype")
    return {"name": t["name"], "datatype": _TO_V2.get(dt, "BYTES") if dt else "FP32",
            "shape": [-1 if d is None else d for d in (t.get("shape") or [-1])]}
