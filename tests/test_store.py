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
