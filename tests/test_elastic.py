"""deepseek-run's elastic mode with real processes (restart the world, torchrun's
contract): a failure restarts every worker in a new rendezvous round with a new
restart count, run id, store and token; the restart budget ends the job with the
failing worker's code and a summary of every attempt; a late agent is taken in on the
next round (scale up); a SIGKILLed agent is dropped after its heartbeat timeout (scale
down); a signal ends everything. Several agents on one machine play the nodes.

Every test checks that no process the job started is alive afterwards and that no
shared-memory segment of any round's run id is left in /dev/shm.
"""
import contextlib
import json
import os
import signal
import socket
import time

import psutil
import pytest

from deepseek.collectives import shm
# tests/ is on sys.path (pytest's rootdir-relative import): share the launcher helpers
from test_launcher import (_env, _free_port, _kill_session, assert_nothing_left, finish,
                           launch, start)

pytestmark = pytest.mark.timeout(90)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "scripts", "elastic_worker.py")
TOKEN = "elastic-test-secret"


def records(tmp_path):
    path = tmp_path / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, what, procs=(), timeout=40):
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"deepseek-run exited ({p.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _no_leaks(tmp_path):
    yield
    assert_nothing_left(tmp_path)
    run_ids = {r["run_id"] for r in records(tmp_path)}
    left = sorted(n for n in os.listdir(shm.SHM_DIR)
                  if any(n.startswith(shm.job_prefix(i)) for i in run_ids))
    for i in run_ids:                     # don't leak into later tests
        shm.cleanup_job(i)
    assert not left, f"left in /dev/shm: {left}"


def kill_all(procs):
    """Kill the session of every deepseek-run in ``procs`` still running."""
    for p in procs:
        if p.poll() is None:
            _kill_session(p.pid)
            p.communicate()


@pytest.fixture
def agents():
    """Agents started by a test; whatever is still running at the end is killed."""
    procs = []
    yield procs
    kill_all(procs)


def _elastic(*extra):
    return ["--omp-threads", "1", "--grace", "2", *extra]


def test_worker_fails_once_and_the_restarted_world_completes(tmp_path):
    rc, out, err = launch(tmp_path, *_elastic("--standalone", "--nproc", "2",
                                              "--max-restarts", "2"),
                          WORKER, "fail_once", timeout=80)
    assert rc == 0, err
    recs = records(tmp_path)
    by_attempt = {}
    for r in recs:
        by_attempt.setdefault(r["restart"], []).append(r)
    assert sorted(by_attempt) == [0, 1], recs
    for n, rs in by_attempt.items():
        assert sorted(r["rank"] for r in rs) == [0, 1] and {r["world"] for r in rs} == {2}
        assert {r["torch_restart"] for r in rs} == {str(n)}
        # one run id, store and token per attempt
        assert len({(r["run_id"], r["store"], r["token"]) for r in rs}) == 1
    first, second = by_attempt[0][0], by_attempt[1][0]
    assert first["run_id"] != second["run_id"]
    assert first["store"] != second["store"] and first["token"] != second["token"]
    # the restarted world really ran a process group (fresh keys, fresh segments)
    assert sorted(l for l in out.splitlines() if "step 1 done" in l) == \
        ["[rank0]:step 1 done on rank 0 of 2", "[rank1]:step 1 done on rank 1 of 2"]
    assert "rank 1 (local rank 1, pid" in err and "failed first: exit code 3" in err
    assert "round 1: 1 node(s), world size 2, restart 1 of --max-restarts 2" in err, err
    assert "attempt 1 (round 0, 1 node(s), world size 2): failed: rank 1 (node 0, " \
           "local rank 1, pid" in err, err
    assert "the job completed after 1 restart(s)" in err, err


def test_every_attempt_fails_exhausts_max_restarts(tmp_path):
    rc, out, err = launch(tmp_path, *_elastic("--standalone", "--nproc", "2",
                                              "--max-restarts", "2"),
                          WORKER, "fail_always", "7", timeout=80)
    assert rc == 7, err
    assert sorted({r["restart"] for r in records(tmp_path)}) == [0, 1, 2]
    assert "summary of 3 ended attempt(s):" in err, err
    summary = err[err.index("summary of 3 ended attempt(s):"):]
    pids = {r["restart"]: r["pid"] for r in records(tmp_path) if r["rank"] == 1}
    for n in range(3):
        assert (f"attempt {n + 1} (round {n}, 1 node(s), world size 2): failed: rank 1 "
                f"(node 0, local rank 1, pid {pids[n]}): exit code 7") in summary, summary
    # the first lines of each traceback, and the exception
    assert summary.count("Traceback (most recent call last):") == 3, summary
    assert "ValueError: rank 1 fails on attempt 2" in summary, summary
    assert "giving up after 2 restart(s) (--max-restarts 2); exiting with code 7" in err


def test_late_agent_joins_the_next_round(tmp_path, agents):
    """--nnodes 1:2: the first agent runs alone; the second, started late, makes the
    first one's world restart with both (not counted as a restart)."""
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN=TOKEN)
    args = _elastic("--nnodes", "1:2", "--nproc", "1", "--rdzv-endpoint",
                    f"127.0.0.1:{port}", "--rdzv-id", "scaleup",
                    "--rdzv-conf", "last_call_timeout=0.5")
    agents.append(start(tmp_path, *args, WORKER, "until_world", "2", env=env))
    wait_for(lambda: records(tmp_path), "the first world", agents)
    assert records(tmp_path)[0]["world"] == 1
    agents.append(start(tmp_path, *args, WORKER, "until_world", "2", env=env))
    (rc0, out0, err0), (rc1, out1, err1) = finish(agents[0], 60), finish(agents[1], 60)
    assert (rc0, rc1) == (0, 0), err0 + err1
    recs = records(tmp_path)
    assert [(r["world"], r["restart"]) for r in recs[:1]] == [(1, 0)]
    last = [r for r in recs if r["world"] == 2]
    assert sorted(r["rank"] for r in last) == [0, 1] and {r["restart"] for r in last} == {0}
    assert len({r["run_id"] for r in last}) == 1 and last[0]["run_id"] != recs[0]["run_id"]
    assert "round 0 ended: scale up" in err0, err0
    assert "step 1 done on rank 0 of 2" in out0 + out1


def test_sigkilled_agent_is_dropped_and_the_job_goes_on(tmp_path, agents):
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN=TOKEN)
    args = _elastic("--nnodes", "1:2", "--nproc", "1", "--max-restarts", "1",
                    "--rdzv-endpoint", f"127.0.0.1:{port}",
                    "--rdzv-conf", "last_call_timeout=6,heartbeat_timeout=2")
    agents.append(start(tmp_path, *args, WORKER, "until_world", "3", env=env))
    # the first agent hosts the store (the one to SIGKILL must not be the host)
    wait_for(lambda: _listening(port), "the first agent to host the store", agents)
    agents.append(start(tmp_path, *args, WORKER, "until_world", "3", env=env))
    wait_for(lambda: len(records(tmp_path)) == 2, "the two-node world", agents)
    assert {r["world"] for r in records(tmp_path)} == {2}
    victim = next(r for r in records(tmp_path) if r["agent"] == agents[1].pid)
    t0 = time.monotonic()
    agents[1].kill()                       # SIGKILL: no chance to say goodbye
    agents[1].communicate()
    # its worker dies with it (PR_SET_PDEATHSIG)
    wait_for(lambda: not psutil.pid_exists(victim["pid"])
             or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE,
             "the killed agent's worker to die", timeout=10)
    wait_for(lambda: any(r["world"] == 1 for r in records(tmp_path)),
             "the one-node world", agents[:1])
    took = time.monotonic() - t0
    assert took >= 2, took                 # dropped after the heartbeat timeout...
    assert took < 25, took                 # ...not after the collectives' timeout
    agents[0].send_signal(signal.SIGTERM)
    rc, out, err = finish(agents[0], 30)
    assert rc == 128 + signal.SIGTERM, err
    assert "round 0 ended: node lost: node " in err and "no heartbeat for 2s" in err, err
    assert "round 1: 1 node(s), world size 1, restart 1 of --max-restarts 1" in err, err
    last = [r for r in records(tmp_path) if r["world"] == 1]
    assert [(r["rank"], r["restart"]) for r in last] == [(0, 1)]


def test_losing_the_agent_that_hosts_the_store_ends_the_job(tmp_path, agents):
    """SIGKILL of the host agent takes the store with it: the other agent stops its
    workers and exits 1 (after its reconnect window), leaving nothing behind."""
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN=TOKEN)
    args = _elastic("--nnodes", "2:2", "--nproc", "1", "--max-restarts", "3",
                    "--rdzv-endpoint", f"127.0.0.1:{port}")
    agents.append(start(tmp_path, *args, WORKER, "until_world", "3", env=env))
    wait_for(lambda: _listening(port), "the first agent to host the store", agents)
    agents.append(start(tmp_path, *args, WORKER, "until_world", "3", env=env))
    wait_for(lambda: len(records(tmp_path)) == 2, "the two-node world", agents)
    agents[0].kill()
    agents[0].communicate()
    rc, out, err = finish(agents[1], 40)
    assert rc == 1, err
    assert "lost the rendezvous store" in err, err
    assert {r["restart"] for r in records(tmp_path)} == {0}     # nobody restarted


@contextlib.contextmanager
def _reaped(proc):
    """Kill ``proc``'s session when the block leaves it running (a wait or an assert failed)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            _kill_session(proc.pid)
            proc.communicate()


def _sigterm(proc, timeout):
    """SIGTERM to deepseek-run; its stderr, once it has exited with 128 + SIGTERM."""
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, timeout)
    assert rc == 128 + signal.SIGTERM, err
    return err


def test_sigterm_while_an_attempt_is_being_stopped_ends_everything(tmp_path):
    """Rank 1 fails; rank 0 ignores SIGTERM, so the restart waits out --grace; SIGTERM
    to deepseek-run then ends the job: no restart, nothing left."""
    proc = start(tmp_path, "--standalone", "--nproc", "2", "--max-restarts", "3",
                 "--grace", "20", "--omp-threads", "1", WORKER, "stubborn")
    with _reaped(proc):
        wait_for(lambda: (tmp_path / "failed").exists(), "rank 1's failure", [proc])
        time.sleep(0.5)
        t0 = time.monotonic()
        err = _sigterm(proc, 30)
    assert time.monotonic() - t0 < 15, err      # not the 20 s grace
    assert "failed first: exit code 5" in err and "got SIGTERM" in err, err
    assert {r["restart"] for r in records(tmp_path)} == {0}     # no restart


def test_sigterm_while_waiting_for_nodes(tmp_path):
    """One agent of a job that needs two waits in the rendezvous; SIGTERM ends it."""
    port = _free_port()
    proc = start(tmp_path, *_elastic("--nnodes", "2:2", "--nproc", "1",
                                     "--rdzv-endpoint", f"127.0.0.1:{port}"),
                 WORKER, "until_world", "2", env=_env(tmp_path, DEEPSEEK_TOKEN=TOKEN))
    with _reaped(proc):
        wait_for(lambda: _listening(port), "the agent to host the store", [proc])
        time.sleep(1.0)         # it is in the rendezvous now (signal handlers installed)
        assert proc.poll() is None
        err = _sigterm(proc, 20)
    assert "got SIGTERM: leaving the job" in err, err
    assert records(tmp_path) == []


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_join_timeout_ends_the_job(tmp_path):
    port = _free_port()
    rc, out, err = launch(tmp_path, *_elastic("--nnodes", "2:3", "--nproc", "1",
                                              "--rdzv-endpoint", f"127.0.0.1:{port}",
                                              "--rdzv-conf", "join_timeout=1"),
                          WORKER, "until_world", "2",
                          env=_env(tmp_path, DEEPSEEK_TOKEN=TOKEN), timeout=30)
    assert rc == 1, err
    assert "rendezvous round 0 timed out after 1s: 1 of at least 2 node(s) joined" in err


@pytest.mark.parametrize("args,message", [
    (["--nnodes", "3:2", "x.py"], "argument --nnodes: MIN must not exceed MAX, got '3:2'"),
    (["--nnodes", "1:2:3", "x.py"], "argument --nnodes: expected N or MIN:MAX"),
    (["--nnodes", "1:2", "x.py"], "--nnodes 1:2 needs --rdzv-endpoint HOST:PORT"),
    (["--rdzv-endpoint", "nohost", "x.py"], "argument --rdzv-endpoint/--rdzv_endpoint: "
                                            "expected HOST:PORT, got 'nohost'"),
    (["--standalone", "--nnodes", "2", "x.py"], "--standalone is one node"),
    (["--max-restarts", "-1", "x.py"], "argument --max-restarts/--max_restarts: expected "
                                       "an integer >= 0, got '-1'"),
    (["--rdzv-conf", "bogus=1", "--standalone", "x.py"], "argument --rdzv-conf/--rdzv_conf"),
    (["--nnodes", "1:2", "--rdzv-endpoint", "127.0.0.1:1234", "x.py"], "DEEPSEEK_TOKEN"),
])
def test_bad_elastic_arguments(tmp_path, args, message):
    (tmp_path / "x.py").write_text("print('must not run')\n")
    rc, out, err = launch(tmp_path, *args, timeout=30)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("deepseek-run: error: ") and message in err
