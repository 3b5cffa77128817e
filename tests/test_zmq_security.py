"""Security and robustness of the ZeroMQ transport (collectives/backends/zmq.py).

* An outside process without the job token connects to the ranks' advertised ports
  and sends forged collective messages, forged aborts and short / garbage frames while
  the ranks run many allreduces: every result is right, nobody crashes, the job ends
  and the intruder's messages are counted as refused.
* Mismatched collectives (barrier vs allreduce, dtype, element count, broadcast vs
  allreduce) raise CollectiveMismatchError on every rank and break the group.
* A peer that cannot be reached fails the startup handshake quickly, naming the rank
  and the address tried; sockets listen on the advertised address only.
* Address discovery (collectives/netaddr.py) and the validation of its variables.

Multi-process tests spawn real processes (deepseek.testing.multiprocess.spawn_ranks)
with a hard deadline; the intruder is a real subprocess with no token in its
environment, started by rank 0 and killed in a ``finally``.
"""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from deepseek.collectives import netaddr
from deepseek.collectives.errors import CollectiveError
from deepseek.testing.multiprocess import spawn_ranks

pytestmark = pytest.mark.timeout(120)
ZMQ = {"DEEPSEEK_CPU_TRANSPORT": "zmq"}


# --------------------------------------------------------------------------- intruder

def intrude(endpoints, stop_after):
    """Run in the intruder subprocess: attack every endpoint until ``stop_after`` s."""
    import struct

    import zmq

    ctx = zmq.Context()
    socks = []
    for ep in endpoints:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.connect(ep)
        socks.append(s)
    hdr = struct.Struct("!2sBiBBBBi16sqqqQQ")  # the transport's header layout
    old = struct.Struct("!iBqq")               # the layout before authentication
    junk = np.full(2, 1e6).tobytes()           # what a forged allreduce would add
    sent = 0

    def send(s, frames):
        nonlocal sent
        try:
            s.send_multipart(frames, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            pass

    deadline = time.monotonic() + stop_after
    seq, ready = 0, False
    while time.monotonic() < deadline:
        seq += 1
        for s in socks:
            for src in (0, 1, 2):
                for a in range(seq, seq + 3):
                    # forged collective data, current and old layouts, guessed seqs
                    forged = hdr.pack(b"DZ", 1, src, 0, 0, 2, 1, -1,
                                      b"float64".ljust(16, b"\0"), 16, a, 0, a, 16)
                    send(s, [forged + os.urandom(16), junk])
                    send(s, [old.pack(src, 0, a, 0), junk])
                abort = hdr.pack(b"DZ", 1, src, 2, 0, 0, 0, -1, b"\0" * 16, 0, 0, 0,
                                 seq, 6)
                send(s, [abort + b"\0" * 16, b"forged"])     # forged abort
                send(s, [old.pack(src, 2, 0, 0), b"forged"])  # old-layout abort
            send(s, [b"abc"])                                  # the 3-byte crash
            send(s, [b"abc", b"d"])
            send(s, [b"x" * 97, b"", b"more", b"frames"])
            send(s, [hdr.pack(b"DZ", 1, 999, 0, 0, 0, 0, 0, b"", 0, 0, 0, 0, 0)
                     + b"t" * 16, b""])                        # unknown sender
        for ep in endpoints:  # raw TCP garbage: not even ZMTP
            host, port = ep[len("tcp://"):].rsplit(":", 1)
            try:
                with socket.create_connection((host, int(port)), timeout=1) as raw:
                    raw.sendall(os.urandom(64))
            except OSError:
                pass
        if not ready:
            print("ready", flush=True)
            ready = True
        time.sleep(0.005)
    print("sent", sent, flush=True)
    for s in socks:
        s.close()
    ctx.term()


def attacked_allreduces(rank, world, iters):
    """Many allreduces while an intruder attacks; returns (wrong, refused, by_reason)."""
    from deepseek import collectives as C

    pg = C.init_process_group()
    b = pg._backend
    assert b.name == "zmq", b.name
    proc = None
    try:
        if rank == 0:
            # the advertised addresses, as the store holds them ("endpoint nonce")
            eps = [v.decode().split()[0] for v in
                   pg.store.multi_get([f"{pg.prefix}/zmq/{r}" for r in range(world)])]
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DEEPSEEK_", "MASTER_", "RANK", "WORLD_"))}
            assert "DEEPSEEK_TOKEN" not in env
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "intrude", "60"] + eps,
                env=env, stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
        pg.barrier()
        wrong = 0
        for i in range(iters):
            n = 3000 if i % 100 == 99 else 2  # mostly small; sometimes reduce-scatter
            x = np.full(n, float(rank + i))
            pg.allreduce(x)
            want = sum(r + i for r in range(world))
            wrong += int(np.count_nonzero(x != want))
        pg.barrier()
        if proc is not None:
            proc.kill()
            proc.wait(10)
        pg.barrier()
        refused = getattr(b, "refused", -1)
        by = dict(getattr(b, "refused_by", {}))
        C.destroy_process_group()
        return wrong, refused, by
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_intruder_without_token_is_refused_and_results_stay_correct():
    res = spawn_ranks(attacked_allreduces, 3, timeout=100, env=ZMQ, args=(1500,))
    for rank, (wrong, refused, by) in enumerate(res):
        assert wrong == 0, f"rank {rank}: {wrong} wrong elements"
        assert refused > 100, (rank, refused, by)
        for what in ("bad authentication tag", "frame count", "malformed header",
                     "unknown sender"):
            assert by.get(what, 0) > 0, (rank, by)


class _Recorder:
    """Stands in for a PUSH socket: forwards and keeps a copy of every message."""

    def __init__(self, sock):
        self.sock, self.sent = sock, []

    def send_multipart(self, frames, **kw):
        self.sent.append([bytes(memoryview(f)) for f in frames])
        return self.sock.send_multipart(frames, **kw)

    def close(self):
        self.sock.close()


def replayed(rank, world):
    """Rank 0 records an authentic message and plays it to rank 1 again three times."""
    import zmq

    from deepseek import collectives as C

    pg = C.init_process_group()
    b = pg._backend
    if rank == 0:
        rec = b._push[1] = _Recorder(b._push[1])
        pg.send(np.arange(4.0), 1, tag=7)
        zctx = zmq.Context()
        raw = zctx.socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 2000)
        raw.connect(b._addrs[1])
        for _ in range(3):
            raw.send_multipart(rec.sent[-1])
        raw.close()
        zctx.term()
        pg.barrier()
        pg.send(np.full(4, -1.0), 1, tag=7)
        pg.barrier()
        C.destroy_process_group()
        return None
    first, second = np.empty(4), np.empty(4)
    pg.recv(first, 0, tag=7)
    pg.barrier()
    pg.recv(second, 0, tag=7)
    deadline = time.monotonic() + 15
    while b.refused_by.get("replayed", 0) < 3 and time.monotonic() < deadline:
        with b._recv_lock:
            b._drain()
        time.sleep(0.01)
    pg.barrier()
    C.destroy_process_group()
    return first.tolist(), second.tolist(), dict(b.refused_by)


def test_recorded_message_played_again_is_refused():
    first, second, by = spawn_ranks(replayed, 2, timeout=60, env=ZMQ)[1]
    assert first == [0.0, 1.0, 2.0, 3.0] and second == [-1.0] * 4, (first, second)
    assert by == {"replayed": 3}, by


# --------------------------------------------------------------------------- mismatches

def _mismatch_case(pg, rank, case):
    """One rank (the last) calls something else than the others."""
    odd = rank == pg.size - 1
    if case == "barrier_vs_allreduce":
        if odd:
            pg.barrier()
        else:
            pg.allreduce(np.ones(4, np.float32))
    elif case == "dtype":
        pg.allreduce(np.ones(8, np.float64 if odd else np.float32))
    elif case == "count":
        pg.allreduce(np.ones(20 if odd else 10, np.float32))
    elif case == "count_large":  # the reduce-scatter path, uneven segments
        pg.allreduce(np.ones(5000 if odd else 4000, np.float32))
    elif case == "broadcast_vs_allreduce":
        if rank == 0:
            pg.broadcast(np.ones(4, np.float32), src=0)
        else:
            pg.allreduce(np.ones(4, np.float32))


CASES = ["barrier_vs_allreduce", "dtype", "count", "count_large",
         "broadcast_vs_allreduce"]


def mismatches(rank, world):
    from deepseek import collectives as C
    from deepseek.collectives.errors import CollectiveMismatchError, GroupBrokenError

    C.init_process_group()
    out = {}
    for case in CASES:
        g = C.new_group(list(range(world)), timeout=30)
        g.allreduce(np.ones(3, np.float32))  # a good call first: seq 1 passes
        t0 = time.monotonic()
        try:
            _mismatch_case(g, rank, case)
            g.barrier()  # a rank that only sent (broadcast root) learns it here
            out[case] = "no error"
        except CollectiveMismatchError as e:
            out[case] = str(e)
        except Exception as e:  # noqa: BLE001 - report what came instead
            out[case] = f"{type(e).__name__}: {e}"
        try:
            g.barrier()
            broken = False
        except GroupBrokenError:
            broken = True
        out[case] = (out[case], broken, time.monotonic() - t0)
    return out


def test_mismatched_collectives_raise_on_every_rank():
    res = spawn_ranks(mismatches, 3, timeout=110, env=ZMQ)
    for rank, out in enumerate(res):
        for case in CASES:
            msg, broken, took = out[case]
            assert ("ranks disagree on collective seq" in msg
                    or "found that the ranks called different collectives" in msg), \
                (rank, case, msg)
            assert broken, (rank, case, "group not marked broken")
            assert took < 20, (rank, case, took)
    # the rank that saw it lists both calls, in the debug mode's format
    msg = res[0]["dtype"][0]
    assert "collective check (ZeroMQ): ranks disagree on collective seq 2" in msg, msg
    assert "dtype=float32" in msg and "dtype=float64" in msg, msg
    assert "op=barrier" in res[0]["barrier_vs_allreduce"][0]
    assert "nbytes=40" in res[0]["count"][0] and "nbytes=80" in res[0]["count"][0]


# --------------------------------------------------------------------------- addresses

def unreachable(rank, world):
    from deepseek import collectives as C

    C.init_process_group()
    return "joined"


def test_unreachable_peer_fails_fast_naming_rank_and_address():
    # rank 1 advertises 127.0.0.2 but listens on 127.0.0.1 only: nobody reaches it
    def env(r):
        e = dict(ZMQ, DEEPSEEK_ZMQ_CONNECT_TIMEOUT="3")
        if r == 1:
            e.update(DEEPSEEK_ZMQ_HOST="127.0.0.2", DEEPSEEK_ZMQ_BIND="127.0.0.1")
        return e
    t0 = time.monotonic()
    res = spawn_ranks(unreachable, 2, timeout=60, env=env, return_errors=True)
    assert time.monotonic() - t0 < 40
    text = str(res[0])
    assert "no handshake with group rank 1 at tcp://127.0.0.2:" in text, text
    assert "within 3s" in text, text


def bound_endpoints(rank, world):
    from deepseek import collectives as C
    import zmq

    pg = C.init_process_group()
    ep = pg._backend._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    C.destroy_process_group()
    return ep


def test_listens_on_the_advertised_address_only():
    eps = spawn_ranks(bound_endpoints, 2, timeout=60, env=ZMQ)
    assert all(e.startswith("tcp://127.0.0.1:") for e in eps), eps  # MASTER_ADDR's route
    eps = spawn_ranks(bound_endpoints, 2, timeout=60,
                      env=dict(ZMQ, DEEPSEEK_ZMQ_BIND="*", DEEPSEEK_ZMQ_HOST="127.0.0.1"))
    assert all(e.startswith("tcp://0.0.0.0:") for e in eps), eps


def test_bad_connect_timeout_names_the_variable():
    res = spawn_ranks(unreachable, 2, timeout=60, return_errors=True,
                      env=dict(ZMQ, DEEPSEEK_ZMQ_CONNECT_TIMEOUT="soon"))
    assert "DEEPSEEK_ZMQ_CONNECT_TIMEOUT='soon'" in str(res[0]), res[0]


def _lo_name():
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    pytest.skip("no loopback interface with 127.0.0.1")


def _outside_ip():
    try:
        return netaddr.route_address("192.0.2.1")  # TEST-NET: routed, never sent to
    except CollectiveError:
        pytest.skip("no route off this host")


def test_advertise_order_override_ifname_route():
    assert netaddr.advertise_address({"DEEPSEEK_ZMQ_HOST": "10.1.2.3",
                                      "DEEPSEEK_SOCKET_IFNAME": "nope"}) == "10.1.2.3"
    assert netaddr.advertise_address({"DEEPSEEK_SOCKET_IFNAME": _lo_name(),
                                      "MASTER_ADDR": "192.0.2.1"}) == "127.0.0.1"
    assert netaddr.advertise_address({"MASTER_ADDR": "127.0.0.1"}) == "127.0.0.1"
    out = _outside_ip()
    # the interface that routes to the master, whatever the host name resolves to
    assert netaddr.advertise_address({"MASTER_ADDR": "192.0.2.1"}) == out
    assert netaddr.advertise_address({}, rendezvous_host="192.0.2.1") == out
    assert not netaddr.is_loopback(out)


def test_address_variables_are_validated_with_their_names():
    with pytest.raises(CollectiveError, match=r"DEEPSEEK_SOCKET_IFNAME='nosuch0'.*"
                       r"no such network interface.*expected one of"):
        netaddr.advertise_address({"DEEPSEEK_SOCKET_IFNAME": "nosuch0"})
    with pytest.raises(CollectiveError, match=r"DEEPSEEK_ZMQ_HOST='no\.such\.host\.invalid'"):
        netaddr.advertise_address({"DEEPSEEK_ZMQ_HOST": "no.such.host.invalid"})
    with pytest.raises(CollectiveError, match=r"MASTER_ADDR='no\.such\.host\.invalid'"):
        netaddr.advertise_address({"MASTER_ADDR": "no.such.host.invalid"})
    with pytest.raises(CollectiveError, match=r"DEEPSEEK_ZMQ_BIND='eth-nope'.*expected"):
        netaddr.bind_address("127.0.0.1", {"DEEPSEEK_ZMQ_BIND": "eth-nope"})
    assert netaddr.bind_address("127.0.0.1", {}) == "127.0.0.1"
    assert netaddr.bind_address("127.0.0.1", {"DEEPSEEK_ZMQ_BIND": "0.0.0.0"}) == "*"
    assert netaddr.bind_address("x", {"DEEPSEEK_ZMQ_BIND": _lo_name()}) == "127.0.0.1"
    assert netaddr.bind_address("localhost", {}) in ("127.0.0.1", "::1")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "intrude":
    intrude(sys.argv[3:], float(sys.argv[2]))
