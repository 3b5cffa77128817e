"""Multi-host for real: "hosts" are Linux network namespaces joined by veths
(tests/netns.py), each with its own network stack and its own DEEPSEEK_HOST_ID, and a
real ``deepseek-run`` agent in each, started as a cluster user would:
``deepseek-run --nnodes N --node-rank K --master-addr <node 0's address>``. The store
lives on node 0; ranks of one host share memory, hosts talk TCP.

* 2 hosts x 1 rank and 2 hosts x 2 ranks: collectives give the right values (every
  size class, dtypes, a subgroup across hosts) and DDP matches one process; DDP's
  zero-block skipping (an embedding table) gives the dense gradients bit for bit.
* A node that dies (every process of one namespace SIGKILLed mid-allreduce): the other
  node's ranks stop within seconds with PeerFailureError naming the lost ranks, and
  its deepseek-run exits non-zero saying so.
* A shaped link (tbf at 1 Gbit/s): still correct.

Skipped unless root with ``ip netns``. Every namespace is deleted on every path.
"""
import json
import os
import socket
import sys
import time

import pytest

from netns import Cluster, communicate_all, unavailable_reason, wait_for_output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "scripts", "multihost_worker.py")
_WHY = unavailable_reason()
pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def _segments():
    from deepseek.collectives import shm

    if not os.path.isdir(shm.SHM_DIR):
        return set()
    return {f for f in os.listdir(shm.SHM_DIR) if f.startswith(shm.PREFIX)}


@pytest.fixture
def cluster(request):
    """A 2-host cluster (``@pytest.mark.parametrize('cluster', [3], indirect=True)``
    for more); deleted whatever happens. Fails the test if our jobs left a
    shared-memory segment: the workers print their job id (RUNID), so segments of
    other jobs on this machine (/dev/shm is shared) are not counted."""
    from deepseek.collectives import shm

    before = _segments()
    c = Cluster(getattr(request, "param", 2))
    request.addfinalizer(c.close)
    yield c
    c.close()
    ours = {shm.job_prefix(i) for i in c.run_ids}
    left = sorted(f for f in _segments() - before if any(p in f for p in ours))
    assert not left, f"shared-memory segments left behind: {left}"


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_job(cluster, nproc, mode, timeout=40, **env):
    """One deepseek-run agent per host; the store on host 0 at a free port."""
    port = _port()  # namespaces start with no listeners: any port is free there
    procs = []
    for k in range(cluster.n):
        e = cluster.env(k, DEEPSEEK_TOKEN="multihost-test-secret", PYTHONPATH=REPO,
                        DEEPSEEK_COLLECTIVES_TIMEOUT=60, **env)
        e.pop("DEEPSEEK_CPU_TRANSPORT", None)
        argv = [sys.executable, "-m", "deepseek.launcher", "--nnodes", str(cluster.n),
                "--node-rank", str(k), "--master-addr", cluster.addrs[0],
                "--master-port", str(port), "--nproc", str(nproc),
                "--timeout", str(timeout), "--omp-threads", "1", "--grace", "2",
                WORKER, mode]
        procs.append(cluster.popen(k, argv, env=e))
    return procs


def results(outs):
    """The RESULT lines of every agent's stdout, by rank."""
    got = {}
    for _, out, _ in outs:
        for line in out.splitlines():
            if "RESULT " in line:
                r = json.loads(line.split("RESULT ", 1)[1])
                got[r["rank"]] = r
    return got


def _check_collectives(outs, world, transport):
    assert all(rc == 0 for rc, _, _ in outs), "\n".join(e for _, _, e in outs)
    got = results(outs)
    assert sorted(got) == list(range(world))
    for r, res in got.items():
        assert res["world"] == world
        bad = [k for k, ok in res["results"].items() if not ok]
        assert not bad, f"rank {r}: wrong results for {bad}"
        assert res["transport"] == transport, res
    return got


def test_two_hosts_one_rank_each(cluster):
    outs = communicate_all(start_job(cluster, 1, "collectives"), 75, cluster)
    got = _check_collectives(outs, 2, "zmq")
    assert got[0]["host"] != got[1]["host"]
    assert all(g["bulk"] for g in got.values())  # large messages: raw TCP streams


def test_two_hosts_two_ranks_each(cluster):
    outs = communicate_all(start_job(cluster, 2, "collectives"), 80, cluster)
    got = _check_collectives(outs, 4, "hier")
    assert got[0]["host"] == got[1]["host"] != got[2]["host"] == got[3]["host"]
    # shared memory inside each host, two rails (one per local rank) between them
    assert all(g["rails"] == 2 and g["bulk"] for g in got.values()), got


def test_ddp_two_hosts_two_ranks(cluster):
    outs = communicate_all(start_job(cluster, 2, "ddp"), 80, cluster)
    assert all(rc == 0 for rc, _, _ in outs), "\n".join(e for _, _, e in outs)
    got = results(outs)
    assert sorted(got) == [0, 1, 2, 3]
    for r, res in got.items():
        assert res["max_err"] < 1e-5, (r, res)


@pytest.mark.parametrize("nproc,transport", [(1, "zmq"), (2, "hier")])
def test_ddp_leaves_zero_blocks_home_with_the_same_gradients(cluster, nproc, transport):
    """Across hosts DDP sends only the non-zero blocks of an embedding table's gradient
    (after its first step) and gets the dense result bit for bit, fp32 and fp16."""
    outs = communicate_all(start_job(cluster, nproc, "ddp_zero_blocks"), 80, cluster)
    got = _check_collectives(outs, 2 * nproc, transport)
    for res in got.values():
        # 4 steps: the first decides, the next three leave the zero blocks home
        assert all(c.get("zero-blocks") == 3 for c in res["counts"].values()), res


def test_node_that_dies_stops_the_others_with_a_named_error(cluster):
    procs = start_job(cluster, 2, "loop", DEEPSEEK_ZMQ_HEARTBEAT=1)
    # wait until node 1's ranks are in the allreduce loop, then kill the whole node
    seen = cluster.note_output(wait_for_output(procs[1], "READY", 60))
    assert "READY" in seen, seen
    killed_at = time.monotonic()
    cluster.kill_host(1)
    rc0, out0, err0 = communicate_all(procs[:1], 40, cluster)[0]
    took = time.monotonic() - killed_at
    assert rc0 not in (0, None), err0
    assert "PeerFailureError" in err0, err0
    # the lost ranks are named (global ranks 2 and 3 live on node 1)
    assert "rank 2" in err0 or "rank 3" in err0, err0
    assert took < 30, f"node 0 took {took:.1f}s to notice"


def test_shaped_link_two_hosts(cluster):
    cluster.shape("1gbit")
    outs = communicate_all(start_job(cluster, 1, "collectives"), 75, cluster)
    _check_collectives(outs, 2, "zmq")


@pytest.mark.parametrize("cluster", [3], indirect=True)
def test_three_hosts_one_rank_each(cluster):
    outs = communicate_all(start_job(cluster, 1, "collectives"), 80, cluster)
    got = _check_collectives(outs, 3, "zmq")
    assert len({g["host"] for g in got.values()}) == 3


def test_network_partition_is_a_named_error_on_both_sides(cluster):
    """Node 1's link goes down mid-allreduce (nothing is closed: no FIN, no RST); the
    ZeroMQ heartbeats notice and node 0's ranks stop with PeerFailureError; node 1
    stops too (its ranks' heartbeats or its agent losing the store, whichever first)."""
    # --timeout 15: node 1's agent, cut off from the store on node 0, gives up on it
    # after that long (its workers have stopped long before)
    procs = start_job(cluster, 1, "loop", timeout=15, DEEPSEEK_ZMQ_HEARTBEAT=1)
    seen = cluster.note_output(wait_for_output(procs[1], "READY", 60))
    assert "READY" in seen, seen
    cut_at = time.monotonic()
    cluster.link(1, up=False)
    outs = communicate_all(procs, 45, cluster)
    took = time.monotonic() - cut_at
    for k, (rc, _, err) in enumerate(outs):
        assert rc not in (0, None), (k, err)
    assert "PeerFailureError" in outs[0][2] and "group rank 1" in outs[0][2], outs[0][2]
    # node 1: its ranks' heartbeats or its agent's store connection, whichever first
    assert ("PeerFailureError" in outs[1][2] and "group rank 0" in outs[1][2]
            or "lost node 0's store" in outs[1][2]), outs[1][2]
    assert took < 40, f"took {took:.1f}s to notice the partition"
