"""The raw TCP bulk streams of the ZeroMQ transport (collectives/backends/tcp_bulk.py),
two ranks in one process over real loopback sockets: zero-copy frames arrive whole
and in order, a receive that waits keeps calling idle() (which may abort it), a peer
that closes fails the receive at once naming it, and an outsider that cannot prove the
pair key never becomes a stream."""
import os
import socket
import threading
import time

import numpy as np
import pytest

from deepseek.collectives.backends.tcp_bulk import _PROOF, BulkError, BulkLinks

KEY01, KEY10 = os.urandom(32), os.urandom(32)


def _pair(timeout=10.0, before_accept=None, streams=1):
    """BulkLinks for ranks 0 and 1 on 127.0.0.1 (built in two threads)."""
    ports, links, errors = {}, {}, []
    ready = threading.Event()
    keys = {0: ({1: KEY01}, {1: KEY10}), 1: ({0: KEY10}, {0: KEY01})}

    def publish(rank, port):
        ports[rank] = port
        if rank == 1 and before_accept is not None:
            before_accept(port)
        if len(ports) == 2:
            ready.set()

    def lookup():
        assert ready.wait(timeout)
        return [ports[0], ports[1]]

    def build(rank):
        try:
            tx, rx = keys[rank]
            links[rank] = BulkLinks(rank, 2, "127.0.0.1", {0: "127.0.0.1", 1: "127.0.0.1"},
                                    tx, rx, lambda p: publish(rank, p), lookup, timeout,
                                    streams=streams)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=build, args=(r,)) for r in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout + 5)
    if errors:
        for link in links.values():
            link.close()
        raise errors[0]
    return links[0], links[1]


@pytest.fixture
def pair():
    a, b = _pair()
    yield a, b
    a.close()
    b.close()


def test_frames_arrive_whole_and_in_order(pair):
    a, b = pair
    rng = np.random.default_rng(0)
    msgs = [rng.standard_normal(n).astype(np.float32) for n in (1, 1000, 3 << 20, 17)]
    tickets = [a.send(1, b"H%03d" % i, m.view(np.uint8)) for i, m in enumerate(msgs)]
    for i, m in enumerate(msgs):
        head = bytearray(4)
        b.recv_into(0, memoryview(head), idle=lambda: None)
        assert bytes(head) == b"H%03d" % i
        out = np.empty_like(m)
        b.recv_into(0, memoryview(out.view(np.uint8)), idle=lambda: None)
        np.testing.assert_array_equal(out, m)
    a.wait(tickets, idle=lambda: None)
    assert all(t.error is None for t in tickets)


def test_frames_take_turns_on_several_streams():
    a, b = _pair(streams=3)
    try:
        assert len(a.socks) == len(b.socks) == 3
        msgs = [np.full(1000 + i, i, np.uint8) for i in range(7)]
        tickets = [a.send(1, b"%d" % i, m) for i, m in enumerate(msgs)]
        # frame i is on stream i % 3: read the streams out of order (2, 1, 0, ...)
        # to show that each frame really travels on its own stream
        order = [b.next_stream(0) for _ in msgs]
        assert order == [0, 1, 2, 0, 1, 2, 0]
        for i in (2, 1, 0, 5, 4, 3, 6):
            head = bytearray(1)
            b.recv_into(0, memoryview(head), lambda: None, order[i])
            out = np.empty_like(msgs[i])
            b.recv_into(0, memoryview(out), lambda: None, order[i])
            assert bytes(head) == b"%d" % i
            np.testing.assert_array_equal(out, msgs[i])
        a.wait(tickets, lambda: None)
    finally:
        a.close()
        b.close()


def test_streams_must_be_positive():
    with pytest.raises(ValueError, match="streams"):
        BulkLinks(0, 2, "127.0.0.1", {}, {}, {}, lambda p: None, lambda: [], 1.0,
                  streams=0)


def test_both_directions_at_once(pair):
    a, b = pair
    x = np.arange(8 << 20, dtype=np.uint8)
    y = x[::-1].copy()
    ta, tb = a.send(1, b"", x), b.send(0, b"", y)
    got_a, got_b = np.empty_like(y), np.empty_like(x)
    t = threading.Thread(target=b.recv_into, args=(0, memoryview(got_b), lambda: None))
    t.start()
    a.recv_into(1, memoryview(got_a), idle=lambda: None)
    t.join(30)
    a.wait([ta], lambda: None)
    b.wait([tb], lambda: None)
    np.testing.assert_array_equal(got_a, y)
    np.testing.assert_array_equal(got_b, x)


def test_waiting_receive_calls_idle_which_can_abort_it(pair):
    a, b = pair
    calls = []

    def idle():
        calls.append(time.monotonic())
        if len(calls) >= 3:
            raise TimeoutError("given up")

    out = bytearray(10)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        b.recv_into(0, memoryview(out), idle)
    assert len(calls) == 3
    assert time.monotonic() - t0 < 5  # slices, not one long block


def test_partial_frame_keeps_calling_idle_then_completes(pair):
    a, b = pair
    calls = []
    data = np.arange(1000, dtype=np.uint8)
    a.send(1, b"", data[:10])

    def later():
        time.sleep(0.3)
        a.send(1, b"", data[10:])
    threading.Thread(target=later).start()
    out = np.empty_like(data)
    b.recv_into(0, memoryview(out), lambda: calls.append(1))
    np.testing.assert_array_equal(out, data)
    assert calls, "a receive that waited part-way never called idle()"


def test_peer_that_closes_fails_the_receive_naming_it():
    a, b = _pair()
    try:
        a.close()
        out = bytearray(100)
        with pytest.raises(BulkError, match="group rank 0") as ei:
            b.recv_into(0, memoryview(out), idle=lambda: None)
        assert ei.value.peer == 0
    finally:
        a.close()
        b.close()


def test_outsider_without_the_key_is_dropped():
    seen, threads = [], []

    def intrude(port):
        # connect to rank 1's listener before rank 0 does, answer the challenge with
        # garbage (the proof of a rank 0 without the key)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        seen.append(s)
        try:
            s.recv(16)
            s.sendall(b"\0" * _PROOF.size)
        except OSError:  # dropped first: fine, the checks below tell
            pass

    def intruder(port):
        threads.append(threading.Thread(target=intrude, args=(port,)))
        threads[-1].start()
        time.sleep(0.2)  # let it be first in the accept queue
    a, b = _pair(before_accept=intruder)
    try:
        for t in threads:
            t.join(5)
        assert seen, "the intruder never connected"
        # the intruder's connection was closed; the real stream works
        seen[0].settimeout(5)
        assert seen[0].recv(1) == b""
        x = np.arange(100, dtype=np.uint8)
        a.wait([a.send(1, b"", x)], lambda: None)
        out = np.empty_like(x)
        b.recv_into(0, memoryview(out), lambda: None)
        np.testing.assert_array_equal(out, x)
    finally:
        for s in seen:
            s.close()
        a.close()
        b.close()


def test_unreachable_peer_fails_fast_naming_it():
    # rank 0 of a pair whose rank 1 never listens: the port is closed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(BulkError, match=f"group rank 1 at 127.0.0.1:{dead}"):
        BulkLinks(0, 2, "127.0.0.1", {1: "127.0.0.1"}, {1: KEY01}, {1: KEY10},
                  lambda p: None, lambda: [0, dead], timeout=1.0)
    assert time.monotonic() - t0 < 5
