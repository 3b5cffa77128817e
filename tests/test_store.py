"""The TCP rendezvous store: operations, concurrency, auth, bad input, reconnects."""
import logging
import socket
import struct
import threading
import time

import pytest

from deepseek.collectives.store import (LocalStore, StoreAuthError, StoreClient,
                                        StoreConnectionError, StoreError, StoreServer,
                                        StoreTimeout)

pytestmark = pytest.mark.timeout(60)
TOKEN = "test-token"


@pytest.fixture
def server():
    s = StoreServer("127.0.0.1", 0, TOKEN, max_value_size=1 << 16).start()
    yield s
    s.close()


@pytest.fixture
def client(server):
    c = StoreClient("127.0.0.1", server.port, TOKEN, timeout=10)
    yield c
    c.close()


def test_operations(client):
    client.set("a", b"1")
    client.set("s", "text")
    assert client.get("a") == b"1" and client.get("s") == b"text"
    assert client.add("n", 5) == 5 and client.add("n") == 6 and client.add("n", -2) == 4
    assert client.get("n") == b"4"
    assert client.compare_set("c", b"", b"first") == b"first"      # missing + empty
    assert client.compare_set("c", b"nope", b"x") == b"first"      # mismatch: unchanged
    assert client.compare_set("c", b"first", b"second") == b"second"
    assert client.compare_set("gone", b"something", b"x") == b""   # missing, no match
    assert client.check(["a", "n"]) and not client.check(["a", "zz"])
    assert client.missing(["a", "zz", "yy"]) == ["zz", "yy"]
    assert client.multi_get(["a", "c"]) == [b"1", b"second"]
    assert client.num_keys() == 4
    assert client.delete("a") is True and client.delete("a") is False
    assert client.num_keys() == 3
    with pytest.raises(StoreError, match="not an integer"):
        client.add("s")


def test_blocking_get_and_wait(server, client):
    def later():
        time.sleep(0.2)
        with StoreClient("127.0.0.1", server.port, TOKEN) as other:
            other.set("k1", b"v1")
            other.set("k2", b"v2")

    t = threading.Thread(target=later)
    t.start()
    assert client.get("k1", timeout=10) == b"v1"
    client.wait(["k1", "k2"], timeout=10)
    t.join()


def test_timeout_names_missing_keys(client):
    client.set("here", b"")
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as e:
        client.wait(["here", "not-here", "neither"], timeout=0.3)
    assert 0.25 < time.monotonic() - start < 5
    assert e.value.keys == ["not-here", "neither"]
    assert "'not-here', 'neither'" in str(e.value)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(StoreTimeout, match="'absent'"):
        client.get("absent", timeout=0.1)


def test_concurrent_clients(server):
    n_clients, n_adds = 8, 50
    errors = []

    def work(i):
        try:
            with StoreClient("127.0.0.1", server.port, TOKEN, timeout=20) as c:
                for _ in range(n_adds):
                    c.add("counter")
                c.set(f"done/{i}", b"1")
                c.wait([f"done/{j}" for j in range(n_clients)], timeout=20)
                assert int(c.get("counter")) == n_clients * n_adds
        except Exception as e:      # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_shared_client_between_threads(client):
    threads = [threading.Thread(target=lambda: [client.add("x") for _ in range(30)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert client.add("x", 0) == 120


def test_wrong_token_is_refused_and_logged(server, client, caplog):
    caplog.set_level(logging.WARNING, logger="deepseek.store")
    with pytest.raises(StoreAuthError, match="refused our token"):
        StoreClient("127.0.0.1", server.port, "wrong", timeout=5)
    assert any("bad token" in r.getMessage() for r in caplog.records)
    client.set("still", b"works")
    assert client.get("still") == b"works"


def _raw(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.recv(5 + 32)  # magic + nonce
    return s


def _read_reply(sock):
    n = struct.unpack("!I", sock.recv(4))[0]
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_garbage_and_oversized_do_not_crash(server, client):
    # Garbage instead of a handshake: refused with an error frame.
    s = _raw(server)
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    reply = _read_reply(s)
    assert reply[0] == 3 and b"authentication failed" in reply
    s.close()
    # A huge length prefix before auth: refused without reading 4 GB.
    s = _raw(server)
    s.sendall(struct.pack("!I", 0xFFFFFFF0))
    assert _read_reply(s)[0] == 3
    s.close()
    # A client that connects and says nothing, and one that hangs up at once.
    idle = socket.create_connection(("127.0.0.1", server.port))
    socket.create_connection(("127.0.0.1", server.port)).close()
    # Authenticated garbage: a malformed request, then an oversized one.
    raw = StoreClient("127.0.0.1", server.port, TOKEN)
    raw._sock.sendall(struct.pack("!I", 3) + b"\x01\x02\x03")
    reply = _read_reply(raw._sock)
    assert reply[0] == 1 and b"malformed" in reply
    raw._sock.sendall(struct.pack("!I", 200 << 20))
    reply = _read_reply(raw._sock)
    assert reply[0] == 1 and b"too large" in reply
    raw.close()
    # A value over max_value_size through the API: an error, not a crash.
    with pytest.raises(StoreError, match="over the limit"):
        client.set("big", b"x" * ((1 << 16) + 1))
    with pytest.raises(StoreError, match="unknown op"):
        client._request(99, [])
    client.set("after", b"ok")
    assert client.get("after") == b"ok"
    idle.close()


def test_reconnect_after_dropped_connection(client):
    client.set("a", b"1")
    client._sock.shutdown(socket.SHUT_RDWR)     # the network drops us
    assert client.get("a") == b"1"
    client._sock.close()
    assert client.add("n") == 1


def test_add_is_applied_once_when_resent(server):
    # The same (client id, seq) twice -- what a resend after a reconnect looks like.
    c = StoreClient("127.0.0.1", server.port, TOKEN)
    c._seq = 41
    from deepseek.collectives import store as st
    payload = st._HEADER.pack(st._ADD, 42, 2) + st._pack_fields([b"k", st._I64.pack(1)])
    first = server._handle(c._id, payload)
    again = server._handle(c._id, payload)
    assert first == again
    assert c.get("k") == b"1"
    c.close()


def test_connect_timeout_and_server_close():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match="cannot reach"):
        StoreClient("127.0.0.1", port, TOKEN, timeout=0.5)
    assert time.monotonic() - start < 5
    # A waiter blocked in the server is woken with an error when the server closes.
    server = StoreServer(token=TOKEN).start()
    c = StoreClient("127.0.0.1", server.port, TOKEN, timeout=30, connect_timeout=0.5)
    result = []

    def waiter():
        try:
            c.get("never", timeout=30)
        except StoreError as e:
            result.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    server.close()
    t.join(10)
    assert not t.is_alive() and result
    c.close()


def test_busy_port_is_an_oserror(server):
    with pytest.raises(OSError):
        StoreServer("127.0.0.1", server.port, TOKEN).start()


def test_from_env(server):
    env = {"DEEPSEEK_STORE_ADDR": f"127.0.0.1:{server.port}", "DEEPSEEK_TOKEN": TOKEN}
    with StoreClient.from_env(env, timeout=5) as c:
        c.set("x", b"y")
        assert c.get("x") == b"y"
    with pytest.raises(StoreError, match="DEEPSEEK_STORE_ADDR"):
        StoreClient.from_env({})


def test_local_store():
    s = LocalStore(timeout=1)
    s.set("a", "b")
    assert s.get("a") == b"b" and s.add("n", 2) == 2
    assert s.compare_set("a", b"b", b"c") == b"c"
    with pytest.raises(StoreTimeout, match="'zz'"):
        s.wait(["a", "zz"], timeout=0.05)
    assert s.delete("a") and s.num_keys() == 1


# --------------------------------------------------------------------------- floods
# The store must shrug off connections from outside the job: one thread for all
# connections (parked waits included), a short handshake deadline, rate-limited
# refusal logs, and room for a legitimate client however many sockets are held open.

import hashlib
import hmac
import os
import re
import resource
import select
import subprocess
import sys

from deepseek.collectives import store as st


def _recv_n(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _reply_of(sock):
    (n,) = struct.unpack("!I", _recv_n(sock, 4))
    return _recv_n(sock, n)


def _no_linger(sock):
    # Close with a reset, so thousands of test sockets leave no TIME_WAIT behind.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def _connect_raw(port, token=None):
    """A real TCP connection to the store; authenticated when ``token`` is given."""
    s = _no_linger(socket.create_connection(("127.0.0.1", port), timeout=10))
    hello = _recv_n(s, 5 + 32)
    if token is not None:
        digest = hmac.new(token.encode(), hello[5:], hashlib.sha256).digest()
        s.sendall(struct.pack("!I", 48) + digest + os.urandom(16))
        assert _reply_of(s)[0] == 0, "handshake refused"
    return s


def _request(op, *fields, seq=1):
    payload = st._HEADER.pack(op, seq, len(fields)) + st._pack_fields(list(fields))
    return struct.pack("!I", len(payload)) + payload


def _store_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "deepseek.store" and r.levelno >= logging.WARNING]


def _refused_total(messages):
    """Connections the log accounts for: one per immediate line, K per summary."""
    total = 0
    for m in messages:
        found = re.match(r"store: refused (\d+) connections from ", m)
        total += int(found.group(1)) if found else 1
    return total


def _bad_token_connections(port, n, pause=0.0):
    for _ in range(n):
        s = _connect_raw(port)
        s.sendall(struct.pack("!I", 48) + b"\0" * 48)
        assert _reply_of(s)[0] == 3          # refused with an auth error
        s.close()
        if pause:
            time.sleep(pause)


def test_refusals_are_logged_once_then_summarised(caplog):
    caplog.set_level(logging.WARNING, logger="deepseek.store")
    server = StoreServer(token=TOKEN, refusal_log_interval=3600).start()
    try:
        _bad_token_connections(server.port, 2000)
        lines = _store_warnings(caplog)
        # The first refusal at once, with the peer address; the rest only counted.
        assert len(lines) == 1, lines[:5]
        assert "refused connection from 127.0.0.1:" in lines[0] and "bad token" in lines[0]
        with StoreClient("127.0.0.1", server.port, TOKEN, timeout=10) as c:
            c.set("still", b"served")
            assert c.get("still") == b"served"
    finally:
        server.close()
    lines = _store_warnings(caplog)
    # Closing writes the pending summary: 2,000 refusals, 2 lines.
    assert len(lines) == 2, lines
    assert "refused 1999 connections from 127.0.0.1 (1999)" in lines[1]
    assert "bad token: 1999" in lines[1]


def test_refusal_summaries_come_every_interval(caplog):
    caplog.set_level(logging.WARNING, logger="deepseek.store")
    interval, n = 0.3, 300
    server = StoreServer(token=TOKEN, refusal_log_interval=interval).start()
    try:
        start = time.monotonic()
        _bad_token_connections(server.port, n, pause=0.004)
        elapsed = time.monotonic() - start
        time.sleep(2 * interval + 0.3)      # the last summary comes by timer, not close
        lines = _store_warnings(caplog)
    finally:
        server.close()
    assert _refused_total(lines) == n, lines
    assert 2 <= len(lines) <= 2 + (elapsed + 2 * interval + 0.3) / interval, lines
    assert all("bad token" in m for m in lines)


def test_unauthenticated_connections_are_dropped_quickly(caplog):
    caplog.set_level(logging.WARNING, logger="deepseek.store")
    server = StoreServer(token=TOKEN).start()          # the default deadline
    try:
        worker = StoreClient("127.0.0.1", server.port, TOKEN, timeout=10)
        held = worker._sock
        idle = _connect_raw(server.port)
        idle.settimeout(10)
        start = time.monotonic()
        assert idle.recv(1) == b""          # the server hung up on the silent peer
        waited = time.monotonic() - start
        assert 0.5 < waited < 3.0, f"unauthenticated socket closed after {waited:.2f}s"
        assert any("no handshake within" in m for m in _store_warnings(caplog))
        time.sleep(0.5)
        # An authenticated client idle for longer than the deadline keeps its socket.
        worker.set("k", b"v")
        assert worker.get("k") == b"v" and worker._sock is held
        worker.close()
        idle.close()
    finally:
        server.close()


def test_full_server_drops_the_oldest_unauthenticated_connection(caplog):
    caplog.set_level(logging.WARNING, logger="deepseek.store")
    server = StoreServer(token=TOKEN, max_connections=50, handshake_timeout=60).start()
    workers, flood = [], []
    try:
        workers = [StoreClient("127.0.0.1", server.port, TOKEN, timeout=10)
                   for _ in range(5)]
        socks = [w._sock for w in workers]
        for _ in range(200):
            flood.append(_no_linger(socket.create_connection(("127.0.0.1", server.port))))
        # A newcomer still gets in, at once: the oldest silent connections made room.
        start = time.monotonic()
        with StoreClient("127.0.0.1", server.port, TOKEN, timeout=10,
                         connect_timeout=3) as late:
            late.set("late", b"1")
            assert late.get("late") == b"1"
        assert time.monotonic() - start < 2
        assert server.num_connections <= 50
        for w, s in zip(workers, socks):     # authenticated ones are never dropped
            assert w.get("late") == b"1" and w._sock is s
        assert any("too many connections" in m for m in _store_warnings(caplog))
    finally:
        for s in flood:
            s.close()
        for w in workers:
            w.close()
        server.close()


def test_parked_waits_hold_no_thread(server, client):
    before = threading.active_count()
    timeout = st._F64.pack(30.0)
    getters = [_connect_raw(server.port, TOKEN) for _ in range(200)]
    short = [_connect_raw(server.port, TOKEN) for _ in range(100)]
    try:
        for s in getters:
            s.sendall(_request(st._GET, timeout, b"late"))
        for s in short:
            s.sendall(_request(st._WAIT, st._F64.pack(0.3), b"never"))
        time.sleep(0.3)
        assert threading.active_count() == before
        client.set("late", b"value")
        for s in getters:
            assert _reply_of(s) == b"\0" + struct.pack("!I", 5) + b"value"
        for s in short:          # timed out in the server, naming the key still missing
            assert _reply_of(s) == b"\2" + struct.pack("!I", 5) + b"never"
        assert threading.active_count() == before
    finally:
        for s in getters + short:
            s.close()


def test_requests_behind_a_parked_one_are_answered_in_order(server, client):
    s = _connect_raw(server.port, TOKEN)
    try:
        s.sendall(_request(st._GET, st._F64.pack(10.0), b"k", seq=1)
                  + _request(st._SET, b"after", b"x", seq=2)
                  + _request(st._NUMKEYS, seq=3))
        time.sleep(0.2)
        assert not client.check(["after"])  # still queued behind the parked get
        client.set("k", b"v")
        assert _reply_of(s) == b"\0" + struct.pack("!I", 1) + b"v"
        assert _reply_of(s) == b"\0"
        assert _reply_of(s) == b"\0" + struct.pack("!I", 8) + struct.pack("!q", 2)
    finally:
        s.close()


def test_bad_server_settings_are_refused():
    with pytest.raises(ValueError, match="handshake_timeout must be a positive"):
        StoreServer(token=TOKEN, handshake_timeout=0)
    with pytest.raises(ValueError, match="refusal_log_interval"):
        StoreServer(token=TOKEN, refusal_log_interval="soon")
    with pytest.raises(ValueError, match="max_connections must be a positive int"):
        StoreServer(token=TOKEN, max_connections=0)


_HOLDER = r"""
import hashlib, hmac, os, signal, socket, struct, sys
signal.alarm(120)                     # never outlive a stuck test
port, token, n_plain, n_auth = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
socks = []
for i in range(n_plain + n_auth):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socks.append(s)
def recv_n(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit("the store closed a held connection")
        b += c
    return b
for i, s in enumerate(socks):
    hello = recv_n(s, 37)             # accepted and greeted
    if i >= n_plain:
        digest = hmac.new(token, hello[5:], hashlib.sha256).digest()
        s.sendall(struct.pack("!I", 48) + digest + os.urandom(16))
for s in socks[n_plain:]:
    assert recv_n(s, 5) == b"\0\0\0\1\0"
print("ready", flush=True)
sys.stdin.read()                      # hold until the test closes our stdin
"""


def test_legitimate_client_is_fast_with_5000_connections_held():
    n_plain, n_auth = 4000, 1000
    need = 2 * (n_plain + n_auth) + 512      # both ends live on this machine
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need} needed for this test")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    server = StoreServer(token=TOKEN, handshake_timeout=60, max_connections=8000).start()
    holder = None
    try:
        baseline = threading.active_count()
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(server.port), TOKEN, str(n_plain),
             str(n_auth)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([holder.stdout], [], [], 40)
        assert ready and holder.stdout.readline().strip() == "ready", \
            f"the holder did not get its connections up (exit code {holder.poll()})"
        assert server.num_connections >= n_plain + n_auth
        assert threading.active_count() == baseline
        times = []
        for i in range(5):
            start = time.perf_counter()
            with StoreClient("127.0.0.1", server.port, TOKEN, timeout=10) as c:
                c.set(f"k{i}", b"v")
                assert c.get(f"k{i}") == b"v"
            times.append(time.perf_counter() - start)
        times.sort()
        assert times[2] < 0.1, f"connect+set+get took {times} with 5000 held connections"
        assert threading.active_count() == baseline
        assert holder.poll() is None, "the store dropped held connections"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)
            holder.stdin.close()
            holder.stdout.close()
        server.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_large_values_round_trip():
    # Frames over 64 KiB are received into a buffer of their own size, in pieces.
    with StoreServer(token=TOKEN) as server, \
            StoreClient("127.0.0.1", server.port, TOKEN, timeout=30) as c:
        big = os.urandom(8 << 20)
        c.set("big", big)
        assert c.get("big") == big
        assert c.compare_set("big", big, b"small") == b"small"
        c.set("after", b"ok")
        assert c.multi_get(["big", "after"]) == [b"small", b"ok"]
