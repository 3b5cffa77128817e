"""The control channel between the server and a worker: length-prefixed JSON frames over a
socketpair. Frames carry only the small fixed-format control message (a batch id, tensor
names, dtypes, shapes and offsets into the shared-memory arenas, an error text); tensor
bytes never travel here, and nothing is ever pickled.

Messages (``type``):

- worker -> server ``ready`` ``{pid, spec}`` once the model is loaded and the arenas mapped;
  ``fatal`` ``{error}`` when the model cannot be loaded;
- server -> worker ``run`` ``{id, inputs: layout}``; ``stop`` (finish and exit);
- worker -> server ``done`` ``{id, outputs: layout}`` or ``error`` ``{id, status, error}``.
"""
import json
import struct

_LEN = struct.Struct("!I")
MAX_FRAME = 16 << 20       # a control message is small; anything bigger is a broken peer


def encode(msg):
    """One frame: 4-byte big-endian length, then the message as UTF-8 JSON."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


def _decode(body):
    msg = json.loads(body.decode())
    if not isinstance(msg, dict) or "type" not in msg:
        raise ValueError("control frame is not a message object")
    return msg


def recv_sync(sock):
    """The next message from a blocking socket, or None at EOF."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"control frame of {n} bytes (limit {MAX_FRAME})")
    body = _recv_exact(sock, n)
    return None if body is None else _decode(body)


def _recv_exact(sock, n):
    chunks, got = [], 0
    while got < n:
        c = sock.recv(n - got)
        if not c:
            return None
        chunks.append(c)
        got += len(c)
    return b"".join(chunks)


async def recv_async(reader):
    """The next message from an asyncio StreamReader, or None at EOF."""
    import asyncio
    try:
        head = await reader.readexactly(_LEN.size)
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME:
            raise ValueError(f"control frame of {n} bytes (limit {MAX_FRAME})")
        return _decode(await reader.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
