"""TCP rendezvous key-value store (``deepseek.collectives.store``).

The store bootstraps process groups: ranks publish their addresses, count arrivals and
wait for each other through it. ``deepseek-run`` hosts one per job (on node 0) and tells
every worker where it is through the environment; under ``mpirun``/``srun`` rank 0 hosts
it (see :mod:`deepseek.collectives.env`).

Server
------
``StoreServer(host="127.0.0.1", port=0, token=..., max_value_size=64 MiB,
handshake_timeout=2.0, max_connections=None, refusal_log_interval=10.0)``
    ``.start() -> self`` binds (``OSError`` if the port is busy) and serves every
    connection from one daemon thread (a selector loop; blocking gets are parked, not
    given a thread); ``.port``, ``.host``, ``.address`` (``"host:port"``),
    ``.num_connections``; ``.close()`` (idempotent; wakes blocked waiters with an
    error); context manager. Connections that do not authenticate within
    ``handshake_timeout`` are dropped; refusals are logged rate-limited. It lives in
    :mod:`deepseek.collectives.store_server` (loaded on first use of the name here),
    whose docstring covers flood handling.

Client
------
``StoreClient(host, port, token, timeout=300.0, connect_timeout=None)``
    ``timeout`` is the default for blocking calls; ``connect_timeout`` (default:
    ``timeout``) bounds connecting and reconnecting. All methods are thread-safe.

    ``set(key, value)``                      value: ``bytes`` or ``str`` (UTF-8)
    ``get(key, timeout=None) -> bytes``      blocks until the key exists
    ``multi_get(keys, timeout=None) -> list[bytes]``
    ``add(key, amount=1) -> int``            atomic counter (stored as ASCII decimal)
    ``compare_set(key, expected, desired) -> bytes``
        sets ``desired`` if the current value equals ``expected`` (a missing key matches
        ``expected == b""``); returns the value after the operation (``b""`` if missing)
    ``wait(keys, timeout=None)``             blocks until every key exists
    ``check(keys) -> bool``                  all exist, without blocking
    ``missing(keys) -> list[str]``           the ones that do not exist, without blocking
    ``delete(key) -> bool``                  whether it existed
    ``num_keys() -> int``
    ``close()``; context manager
    ``StoreClient.from_env(environ=None, timeout=300.0)``  reads the variables below.

``LocalStore()`` has the same methods in memory, for a world of one process.

Environment (set by ``deepseek-run`` for every worker)
------------------------------------------------------
``DEEPSEEK_STORE_ADDR``  ``host:port`` of the job's store
``DEEPSEEK_TOKEN``       the job's secret token (hex)

Errors
------
``StoreError`` (``RuntimeError``) is the base; ``StoreTimeout`` (also ``TimeoutError``)
names the keys still missing in ``.keys``; ``StoreAuthError`` (also
``PermissionError``) is a refused token; ``StoreConnectionError`` (also
``ConnectionError``) means the server stayed unreachable for ``connect_timeout``.

Protocol and security
---------------------
Every message is a frame: a 4-byte big-endian length and a payload. On connect the
server sends ``b"DSKV\\x01"`` and a random 32-byte nonce; the client answers
``HMAC-SHA256(token, nonce)`` and its 16-byte client id. A wrong answer is refused with
an error frame and logged (logger ``deepseek.store``: the first refusal with the peer
address, then a summary at most every ``refusal_log_interval`` seconds); the token
itself never crosses the network. Requests are ``op:u8 seq:u64 nargs:u8`` followed by
length-prefixed arguments; replies are ``status:u8`` and length-prefixed fields.
Garbage is answered with an error (and the connection dropped when the framing itself
is broken); a frame larger than ``max_value_size`` plus a small header is refused before
its body is read. The server never dies from a bad request. Traffic is authenticated,
not encrypted: on untrusted networks, run the job on a private network.

Reconnects: a client whose connection drops reconnects (with backoff, within
``connect_timeout``) and resends the request. Mutating requests carry a per-client
sequence number and the server remembers the last reply per client, so a resent
``add`` or ``compare_set`` is applied once.
"""
from __future__ import annotations

import hmac
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # resolved at run time by __getattr__ below
    from .store_server import StoreServer

__all__ = [
    "StoreServer", "StoreClient", "LocalStore", "StoreError", "StoreTimeout",
    "StoreAuthError", "StoreConnectionError", "ENV_STORE_ADDR", "ENV_TOKEN",
    "parse_address", "new_token",
]

log = logging.getLogger("deepseek.store")


def __getattr__(name):
    # PEP 562: the server lives in store_server.py, which imports this module's
    # protocol pieces; resolving it lazily keeps that one-way (no import cycle) and
    # keeps a worker that only needs the client from loading the server.
    if name == "StoreServer":
        from .store_server import StoreServer
        globals()["StoreServer"] = StoreServer
        return StoreServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

ENV_STORE_ADDR = "DEEPSEEK_STORE_ADDR"
ENV_TOKEN = "DEEPSEEK_TOKEN"

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_VALUE = 64 << 20
_MAGIC = b"DSKV\x01"
_NONCE = 32
_CLIENT_ID = 16
_HEADER = struct.Struct("!BQB")      # op, seq, nargs
_LEN = struct.Struct("!I")
_F64 = struct.Struct("!d")
_I64 = struct.Struct("!q")
_OVERHEAD = 64 << 10                 # room for op header and keys around a max value

# Opcodes.  Mutating ones are de-duplicated by (client id, seq) across reconnects.
_SET, _GET, _ADD, _CAS, _WAIT, _CHECK, _DELETE, _NUMKEYS, _MULTIGET, _PING = range(1, 11)
_MUTATING = {_SET, _ADD, _CAS, _DELETE}
# Reply status.
_OK, _ERR, _TIMEOUT, _AUTH = range(4)


class StoreError(RuntimeError):
    """Any failure reported by the store."""


class StoreTimeout(StoreError, TimeoutError):
    """A blocking store call ran out of time; ``.keys`` lists the keys still missing."""

    def __init__(self, message, keys=()):
        super().__init__(message)
        self.keys = list(keys)


class StoreAuthError(StoreError, PermissionError):
    """The server refused our token (or we could not prove it)."""


class StoreConnectionError(StoreError, ConnectionError):
    """The server could not be reached within the connect timeout."""


def new_token() -> str:
    """A fresh random job token (hex)."""
    return os.urandom(16).hex()


def parse_address(addr: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad store address {addr!r}: expected host:port")
    return host.strip("[]"), int(port)


def _as_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store values are bytes or str, not {type(value).__name__}")


def _token_bytes(token) -> bytes:
    if token is None or token == "" or token == b"":
        raise ValueError("a store needs a non-empty token")
    return _as_bytes(token)


def _keys_text(keys) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:8])
    return shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


# --------------------------------------------------------------------------- framing

class _FrameTooLarge(Exception):
    pass


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock, limit: int) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, 4))
    if n > limit:
        raise _FrameTooLarge(n)
    return _recv_exact(sock, n)


def _send_frame(sock, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)) + payload)


def _pack_fields(fields) -> bytes:
    return b"".join(_LEN.pack(len(f)) + f for f in fields)


def _unpack_fields(data: bytes, offset: int, count: int | None = None) -> list[bytes]:
    out = []
    while offset < len(data) and (count is None or len(out) < count):
        if offset + 4 > len(data):
            raise ValueError("truncated field length")
        (n,) = _LEN.unpack_from(data, offset)
        offset += 4
        if offset + n > len(data):
            raise ValueError("truncated field")
        out.append(data[offset:offset + n])
        offset += n
    if offset != len(data) or (count is not None and len(out) != count):
        raise ValueError("wrong number of fields")
    return out


def _reply(status: int, *fields: bytes) -> bytes:
    return bytes([status]) + _pack_fields(fields)


# --------------------------------------------------------------------------- the data

class _KV:
    """The key-value map with blocking waits; shared by the server and LocalStore."""

    def __init__(self):
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._closed = False

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def set(self, key, value):
        with self._cond:
            self._data[key] = value
            self._cond.notify_all()

    def _wait_for(self, keys, timeout):
        # Caller holds the lock.  Returns the missing keys ([] on success).
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._closed:
                raise StoreError("store is shutting down")
            missing = [k for k in keys if k not in self._data]
            if not missing:
                return []
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return missing
            self._cond.wait(remaining)

    def get(self, keys, timeout):
        with self._cond:
            missing = self._wait_for(keys, timeout)
            if missing:
                return None, missing
            return [self._data[k] for k in keys], []

    def wait(self, keys, timeout):
        with self._cond:
            return self._wait_for(keys, timeout)

    def add(self, key, amount):
        with self._cond:
            old = self._data.get(key, b"0")
            try:
                value = int(old) + amount
            except ValueError:
                raise StoreError(f"add: value of key {key!r} is not an integer") from None
            self._data[key] = str(value).encode()
            self._cond.notify_all()
            return value

    def compare_set(self, key, expected, desired):
        with self._cond:
            current = self._data.get(key)
            if (current is None and expected == b"") or current == expected:
                self._data[key] = desired
                self._cond.notify_all()
                return desired
            return b"" if current is None else current

    def missing(self, keys):
        with self._cond:
            return [k for k in keys if k not in self._data]

    def delete(self, key):
        with self._cond:
            return self._data.pop(key, None) is not None

    def num_keys(self):
        with self._cond:
            return len(self._data)


# --------------------------------------------------------------------------- client

class StoreClient:
    """Connection to a :class:`StoreServer`; reconnects by itself."""

    def __init__(self, host: str, port: int, token, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float | None = None):
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.connect_timeout = self.timeout if connect_timeout is None else float(connect_timeout)
        self._token = _token_bytes(token)
        self._id = os.urandom(_CLIENT_ID)
        self._seq = 0
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._owned = []                      # objects closed with us (a hosted server)
        with self._lock:
            self._connect(time.monotonic() + self.connect_timeout)

    @classmethod
    def from_env(cls, environ=None, timeout: float = DEFAULT_TIMEOUT) -> "StoreClient":
        """Connect to the store named by DEEPSEEK_STORE_ADDR with DEEPSEEK_TOKEN."""
        env = os.environ if environ is None else environ
        addr, token = env.get(ENV_STORE_ADDR), env.get(ENV_TOKEN)
        if not addr or not token:
            raise StoreError(f"{ENV_STORE_ADDR} and {ENV_TOKEN} must both be set "
                             "(deepseek-run sets them for every worker)")
        host, port = parse_address(addr)
        return cls(host, port, token, timeout=timeout)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connection
    def _connect(self, deadline: float) -> None:
        delay = 0.01
        last_error = None
        while True:
            if self._closed:
                raise StoreError("store client is closed")
            remaining = deadline - time.monotonic()
            try:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=max(0.1, min(remaining, 10.0)))
                try:
                    self._authenticate(sock)
                except BaseException:
                    sock.close()
                    raise
                sock.settimeout(None)
                self._sock = sock
                return
            except StoreAuthError:
                raise
            except (OSError, EOFError, ValueError) as e:
                last_error = e
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreConnectionError(
                    f"cannot reach the store at {self.address} "
                    f"(gave up after {self.connect_timeout:g}s): {last_error}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def _authenticate(self, sock) -> None:
        hello = _recv_exact(sock, len(_MAGIC) + _NONCE)
        if hello[:len(_MAGIC)] != _MAGIC:
            raise ValueError(f"{self.address} is not a deepseek store")
        digest = hmac.new(self._token, hello[len(_MAGIC):], hashlib.sha256).digest()
        _send_frame(sock, digest + self._id)
        status, fields = self._parse_reply(_recv_frame(sock, 1 << 16))
        if status == _AUTH:
            raise StoreAuthError(f"the store at {self.address} refused our token "
                                 f"(is {ENV_TOKEN} the job's token?)")
        if status != _OK:
            raise StoreError(f"store handshake failed: {fields}")

    def _drop(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    @staticmethod
    def _parse_reply(data: bytes):
        if not data:
            raise ValueError("empty reply")
        return data[0], _unpack_fields(data, 1)

    def _request(self, op: int, args: list[bytes], wait_timeout: float | None = None):
        """Send one request (resending after reconnects) and return its reply fields.

        For blocking ops ``wait_timeout`` is the server-side wait; it shrinks across
        resends so the caller's deadline holds.
        """
        with self._lock:
            if self._closed:
                raise StoreError("store client is closed")
            self._seq += 1
            seq = self._seq
            start = time.monotonic()
            reconnect_deadline = None
            while True:
                fields = list(args)
                sock_timeout = self.timeout
                if wait_timeout is not None:
                    remaining = max(0.0, wait_timeout - (time.monotonic() - start))
                    fields.insert(0, _F64.pack(remaining))
                    # Safety net only: the server answers a timeout itself.
                    sock_timeout = remaining + 30.0
                payload = _HEADER.pack(op, seq, len(fields)) + _pack_fields(fields)
                try:
                    if self._sock is None:
                        if reconnect_deadline is None:
                            reconnect_deadline = time.monotonic() + self.connect_timeout
                        self._connect(reconnect_deadline)
                    self._sock.settimeout(sock_timeout)
                    _send_frame(self._sock, payload)
                    reply = _recv_frame(self._sock, 1 << 40)
                    self._sock.settimeout(None)
                except StoreError:
                    raise
                except socket.timeout:
                    self._drop()
                    raise StoreTimeout(f"store at {self.address} did not answer in time",
                                       [a.decode(errors="replace") for a in args[:1]])
                except (OSError, EOFError):
                    # Dropped connection: reconnect and resend (the server de-duplicates
                    # mutating requests by seq).
                    self._drop()
                    if reconnect_deadline is None:
                        reconnect_deadline = time.monotonic() + self.connect_timeout
                    continue
                try:
                    status, out = self._parse_reply(reply)
                except ValueError as e:
                    self._drop()
                    raise StoreError(f"malformed reply from the store: {e}") from None
                if status == _OK:
                    return out
                if status == _TIMEOUT:
                    missing = [k.decode() for k in out]
                    raise StoreTimeout(
                        f"store timeout after {wait_timeout:g}s waiting for key(s) "
                        f"{_keys_text(missing)} (store {self.address})", missing)
                if status == _AUTH:
                    raise StoreAuthError(out[0].decode() if out else "refused")
                raise StoreError(out[0].decode(errors="replace") if out else "store error")

    def _timeout(self, timeout):
        return self.timeout if timeout is None else float(timeout)

    # -- API
    def set(self, key: str, value) -> None:
        self._request(_SET, [key.encode(), _as_bytes(value)])

    def get(self, key: str, timeout: float | None = None) -> bytes:
        return self._request(_GET, [key.encode()], self._timeout(timeout))[0]

    def multi_get(self, keys, timeout: float | None = None) -> list[bytes]:
        keys = list(keys)
        return self._request(_MULTIGET, [k.encode() for k in keys], self._timeout(timeout))

    def add(self, key: str, amount: int = 1) -> int:
        (out,) = self._request(_ADD, [key.encode(), _I64.pack(int(amount))])
        return _I64.unpack(out)[0]

    def compare_set(self, key: str, expected, desired) -> bytes:
        return self._request(_CAS, [key.encode(), _as_bytes(expected),
                                    _as_bytes(desired)])[0]

    def wait(self, keys, timeout: float | None = None) -> None:
        if isinstance(keys, str):
            keys = [keys]
        self._request(_WAIT, [k.encode() for k in keys], self._timeout(timeout))

    def missing(self, keys) -> list[str]:
        if isinstance(keys, str):
            keys = [keys]
        return [k.decode() for k in self._request(_CHECK, [k.encode() for k in keys])]

    def check(self, keys) -> bool:
        return not self.missing(keys)

    def delete(self, key: str) -> bool:
        return self._request(_DELETE, [key.encode()])[0] == b"1"

    def num_keys(self) -> int:
        return _I64.unpack(self._request(_NUMKEYS, [])[0])[0]

    def ping(self) -> None:
        self._request(_PING, [])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
        for obj in self._owned:
            obj.close()
        self._owned.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"StoreClient({self.address})"


class LocalStore:
    """The store API in memory (world size 1, tests)."""

    address = "local"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = float(timeout)
        self._kv = _KV()

    def _t(self, timeout):
        return self.timeout if timeout is None else float(timeout)

    def _raise_missing(self, missing, timeout):
        raise StoreTimeout(f"store timeout after {timeout:g}s waiting for key(s) "
                           f"{_keys_text(missing)} (local store)", missing)

    def set(self, key, value):
        self._kv.set(key, _as_bytes(value))

    def get(self, key, timeout=None):
        return self.multi_get([key], timeout)[0]

    def multi_get(self, keys, timeout=None):
        values, missing = self._kv.get(list(keys), self._t(timeout))
        if missing:
            self._raise_missing(missing, self._t(timeout))
        return values

    def add(self, key, amount=1):
        return self._kv.add(key, int(amount))

    def compare_set(self, key, expected, desired):
        return self._kv.compare_set(key, _as_bytes(expected), _as_bytes(desired))

    def wait(self, keys, timeout=None):
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = self._kv.wait(keys, self._t(timeout))
        if missing:
            self._raise_missing(missing, self._t(timeout))

    def missing(self, keys):
        return self._kv.missing([keys] if isinstance(keys, str) else list(keys))

    def check(self, keys):
        return not self.missing(keys)

    def delete(self, key):
        return self._kv.delete(key)

    def num_keys(self):
        return self._kv.num_keys()

    def ping(self):
        pass

    def close(self):
        self._kv.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
