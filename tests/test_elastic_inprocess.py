"""Elastic training with real processes: in-process recovery (Horovod Elastic's
contract) and restart-the-world resumed from a resharded checkpoint.

The job is tests/scripts/elastic_train.py: an MLP, SGD with momentum, a fixed data
order and a global batch of 6 whatever the world size, deterministic reductions.

* chaos (in-process): a random worker is SIGKILLed three times at random steps; the
  agent replaces it, the survivors roll back to their last commit without restarting,
  and the final parameters equal an uninterrupted run's (rtol 1e-5; in fact bitwise),
  every step's samples are the uninterrupted run's (none lost, none twice), the loss
  goes down, and nothing is left (processes, /dev/shm);
* a budget of one restart and two deaths: the second ends the job with the worker's
  code;
* resharding: a ZeRO-1 job at 3 ranks (two agents, 2 + 1 workers) loses the agent of
  the 1-worker node; the next round (2 ranks) resumes from the checkpoint saved at 3,
  and ends where a single process that never failed ends.
"""
import json
import os
import random
import signal
import time

import numpy as np
import pytest

from deepseek.collectives import shm
from test_elastic import kill_all
from test_launcher import _env, _free_port, assert_nothing_left, finish, start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "tests", "scripts", "elastic_train.py")


def progress(d):
    path = os.path.join(d, "progress.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path).read().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:          # a line being written right now
            pass
    return out


@pytest.fixture
def jobs(tmp_path):
    """deepseek-run processes a test started: killed at the end, then the leak check."""
    procs = []
    yield procs
    kill_all(procs)
    for d in [tmp_path] + [tmp_path / n for n in os.listdir(tmp_path)
                           if (tmp_path / n).is_dir()]:
        assert_nothing_left(d)
    runs = {r["run"] for d in (tmp_path, tmp_path / "ref")
            for r in progress(d) if r.get("run")}
    left = sorted(n for n in os.listdir(shm.SHM_DIR)
                  if any(n.startswith(shm.job_prefix(i)) for i in runs))
    for i in runs:
        shm.cleanup_job(i)
    assert not left, f"left in /dev/shm: {left}"


def _inproc_env(tmp_path, **extra):
    return _env(tmp_path, DEEPSEEK_ELASTIC_IN_PROCESS="1", DEEPSEEK_DETERMINISTIC="1",
                **extra)


def _run_inproc(d, steps, restarts, jobs, variant="ddp", **extra):
    os.makedirs(d, exist_ok=True)
    p = start(d, "--standalone", "--nproc", "3", "--max-restarts", str(restarts),
              "--omp-threads", "1", "--grace", "2", TRAIN, str(d), str(steps),
              "inprocess", variant, env=_inproc_env(d, **extra))
    jobs.append(p)
    return p


def _wait(pred, what, proc, timeout=40):
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"deepseek-run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _steps(recs):
    """step -> rank -> the samples of the *last* time that step ran (committed)."""
    out = {}
    for r in recs:
        if "step" in r:
            out.setdefault(r["step"], {})[r["rank"]] = r["idx"]
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant,spares", [("ddp", 0), ("ddp", 1), ("zero2", 0),
                                            ("zero", 1)])
def test_chaos_inprocess_recovery_matches_an_uninterrupted_run(tmp_path, jobs, variant,
                                                               spares):
    """DDP, ZeRO-2 (FSDP SHARD_GRAD_OP: the dead rank's parameter and momentum
    shards come from its neighbour's copy) and ZeRO-1, with and without spares."""
    steps = 36
    ref = _run_inproc(tmp_path / "ref", steps, 0, jobs, variant)
    run = _run_inproc(tmp_path, steps, 3, jobs, variant, STEP_SLEEP="0.05",
                      DEEPSEEK_ELASTIC_SPARES=str(spares))
    rnd = random.Random(18)
    kills = []
    for n, at in enumerate(sorted(rnd.sample(range(4, steps - 6), 3))):
        _wait(lambda: max([r["step"] for r in progress(tmp_path)
                           if "step" in r and r["gen"] == n] + [0]) >= at,
              f"step {at} of generation {n}", run)
        victim = rnd.randrange(3)
        # the victim itself must have reported in generation n: its newest record may
        # otherwise still be the process killed in generation n - 1
        _wait(lambda: any(r.get("gen") == n and r["rank"] == victim
                          for r in progress(tmp_path) if "step" in r),
              f"rank {victim} in generation {n}", run)
        recs = [r for r in progress(tmp_path) if "step" in r]
        pid = [r for r in recs if r["rank"] == victim and r.get("gen") == n][-1]["pid"]
        os.kill(pid, signal.SIGKILL)
        kills.append((victim, pid, at))
    rc, out, err = finish(run, 90)
    assert rc == 0, err
    rc_ref, _, err_ref = finish(ref, 60)
    assert rc_ref == 0, err_ref
    for victim, pid, _ in kills:
        assert f"rank {victim} (local rank {victim}, pid {pid}) failed: killed by " \
               "SIGKILL (signal 9); in-process recovery" in err, err
    assert err.count("replacing it with spare pid") == (3 if spares else 0), err
    assert "the job completed after 3 restart(s)" in err, err
    recs = progress(tmp_path)
    resets = [r for r in recs if r.get("event") == "reset"]
    # survivors were not restarted: each reset is in a process that started at gen 0
    # or later, and every generation 1..3 formed
    assert {r["gen"] for r in resets} <= {1, 2, 3} and {r["gen"] for r in recs
                                                        if "step" in r} == {0, 1, 2, 3}
    survivors = {r["pid"] for r in resets}
    assert survivors & {r["pid"] for r in recs if r.get("gen") == 0}, resets
    # the same samples at every step as the uninterrupted run: none lost, none twice
    # (a rank killed between its step's allreduce and its log line did that step:
    # the others committed it; so compare what was logged, and the data position)
    ran, ref_ran = _steps(recs), _steps(progress(tmp_path / "ref"))
    assert sorted(ran) == list(range(1, steps + 1))
    for step, by_rank in ran.items():
        for rank, idx in by_rank.items():
            assert idx == ref_ran[step][rank], (step, rank)
    pos = {r["step"]: tuple(r["pos"]) for r in recs if "step" in r}
    assert pos == {r["step"]: tuple(r["pos"]) for r in progress(tmp_path / "ref")
                   if "step" in r}
    # consecutive global batches of 6 of the epoch's order (60 samples an epoch)
    assert [e * 60 + p for _, (e, p) in sorted(pos.items())] == [s * 6 for s in range(steps)]
    final, ref_final = np.load(tmp_path / "final.npz"), np.load(tmp_path / "ref" / "final.npz")
    for k in ref_final:
        np.testing.assert_allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-7)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == steps and np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6])


@pytest.mark.timeout(120)
def test_no_spare_the_survivors_go_on_in_a_smaller_world_down_to_min(tmp_path, jobs):
    """DEEPSEEK_ELASTIC_MIN_WORKERS=2, 3 workers, ZeRO-2: the first death shrinks the
    world to 2 (the dead rank's shards come from its neighbour's copy, resharded to
    2); the second would go under MIN, so that worker is replaced. Every step's global
    batch is the uninterrupted run's, on_reset sees the new world size, and the
    parameters end where the uninterrupted 3-worker run's do."""
    steps = 24
    ref = _run_inproc(tmp_path / "ref", steps, 0, jobs, "zero2")
    run = _run_inproc(tmp_path, steps, 2, jobs, "zero2", STEP_SLEEP="0.05",
                      DEEPSEEK_ELASTIC_MIN_WORKERS="2")
    rnd = random.Random(7)
    for n, at in enumerate((6, 14)):
        _wait(lambda: any(r.get("gen") == n and r["step"] >= at
                          for r in progress(tmp_path) if "step" in r),
              f"step {at} of generation {n}", run)
        recs = [r for r in progress(tmp_path) if "step" in r and r["gen"] == n]
        victim = rnd.choice(sorted({r["rank"] for r in recs}))
        os.kill([r for r in recs if r["rank"] == victim][-1]["pid"], signal.SIGKILL)
    rc, out, err = finish(run, 90)
    assert rc == 0, err
    assert finish(ref, 60)[0] == 0
    assert err.count("the others go on without it") == 1, err
    assert err.count("replacing it") == 1, err
    recs = progress(tmp_path)
    worlds = {r["gen"]: r["world"] for r in recs if "step" in r}
    assert worlds == {0: 3, 1: 2, 2: 2}, worlds
    resets = [r for r in recs if r.get("event") == "on_reset"]
    assert {(r["gen"], r["world"]) for r in resets} == {(1, 2), (2, 2)}
    # the same global batch at every step (split over 2 or 3 ranks), the same position
    last = {}                 # step -> the generation that ran it last (committed)
    for r in recs:
        if "step" in r:
            last[r["step"]] = max(last.get(r["step"], -1), r["gen"])
    ref_ran = _steps(progress(tmp_path / "ref"))
    assert sorted(last) == list(range(1, steps + 1))
    for step, gen in last.items():
        got = {r["rank"]: r["idx"] for r in recs if r.get("step") == step
               and r["gen"] == gen}
        # (a rank killed after the step's reduction but before its log line ran it:
        # the others committed it; that step's batch is then short of its samples)
        if len(got) == worlds[gen]:
            assert sorted(sum(got.values(), [])) == sorted(sum(ref_ran[step].values(), []))
    pos = {r["step"]: tuple(r["pos"]) for r in recs if "step" in r}
    assert pos == {r["step"]: tuple(r["pos"]) for r in progress(tmp_path / "ref")
                   if "step" in r}
    final, ref_final = np.load(tmp_path / "final.npz"), np.load(tmp_path / "ref" / "final.npz")
    for k in ref_final:
        # (2 ranks sum a gradient in another order than 3: float32 rounding)
        np.testing.assert_allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(90)
def test_inprocess_budget_exhausted_ends_the_job_with_the_code(tmp_path, jobs):
    run = _run_inproc(tmp_path, 200, 1, jobs, STEP_SLEEP="0.05")
    for n in range(2):
        # rank 2 itself must have reported in generation n: the newest record of rank 2
        # may otherwise still be the killed process of generation n - 1
        _wait(lambda: any(r.get("gen") == n and r["rank"] == 2 and r["step"] >= 3
                          for r in progress(tmp_path) if "step" in r), f"generation {n}", run)
        pid = [r for r in progress(tmp_path)
               if "step" in r and r["rank"] == 2 and r.get("gen") == n][-1]["pid"]
        os.kill(pid, signal.SIGKILL)
    rc, out, err = finish(run, 60)
    assert rc == 128 + signal.SIGKILL, err
    assert "restart 1 of --max-restarts 1: generation 1, replacing it" in err, err
    assert "no restart is left for in-process recovery" in err, err
    assert "giving up after 1 restart(s) (--max-restarts 1)" in err, err


@pytest.mark.timeout(120)
def test_restart_in_a_smaller_world_reshards_the_zero_checkpoint(tmp_path, jobs):
    """3 ranks (nodes of 2 + 1 workers) -> the 1-worker node's agent is SIGKILLed ->
    2 ranks resume from the last checkpoint (saved at 3, ZeRO-1 momentum shards)."""
    steps = 16
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN="reshard-secret", DEEPSEEK_DETERMINISTIC="1",
               STEP_SLEEP="0.1")
    common = ["--nnodes", "1:2", "--max-restarts", "1", "--omp-threads", "1", "--grace",
              "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
              "--rdzv-conf", "last_call_timeout=5,heartbeat_timeout=2"]
    args = [TRAIN, str(tmp_path), str(steps), "checkpoint", "zero"]
    host = start(tmp_path, *common, "--nproc", "2", *args, env=env)
    jobs.append(host)
    _wait(lambda: _listening(port), "the store", host)
    other = start(tmp_path, *common, "--nproc", "1", *args, env=env)
    jobs.append(other)
    _wait(lambda: any(r["world"] == 3 and r["step"] >= 5 for r in progress(tmp_path)),
          "step 5 at world size 3", host, timeout=60)
    other.kill()
    other.communicate()
    rc, out, err = finish(host, 90)
    assert rc == 0, err
    recs = progress(tmp_path)
    assert {r["world"] for r in recs if r["gen"] == 0} == {3}
    assert {r["world"] for r in recs if r["gen"] == 1} == {2}
    resumed = min(r["step"] for r in recs if r["gen"] == 1)
    assert resumed > 1 and resumed % 2 == 1      # the step after a checkpoint
    # the lost node's worker died with its agent: the survivors' failure (or the
    # lost heartbeat, whichever the host saw first) ended round 0
    assert "round 1: 1 node(s), world size 2, restart 1 of --max-restarts 1" in err, err
    # the reference: one process, never interrupted
    os.makedirs(tmp_path / "ref")
    import subprocess
    import sys
    subprocess.run([sys.executable, TRAIN, str(tmp_path / "ref"), str(steps),
                    "checkpoint", "zero"], env=_env(tmp_path / "ref",
                                                    DEEPSEEK_DETERMINISTIC="1"),
                   check=True, timeout=60, capture_output=True)
    final, ref = np.load(tmp_path / "final.npz"), np.load(tmp_path / "ref" / "final.npz")
    for k in ref:
        np.testing.assert_allclose(final[k], ref[k], rtol=1e-5, atol=1e-6)


def _listening(port):
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------- one process
def _tiny():
    import deepseek
    from deepseek import nn
    deepseek.manual_seed(0)
    m = nn.Linear(3, 2)
    opt = deepseek.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    return deepseek, m, opt


def _train_step(deepseek, m, opt):
    opt.zero_grad()
    (m(deepseek.ones(4, 3)) ** 2).sum().backward()
    opt.step()


def test_state_commit_restore_round_trip():
    from deepseek import elastic
    deepseek, m, opt = _tiny()
    _train_step(deepseek, m, opt)
    state = elastic.State(model=m, optimizer=opt, step=1, info={"lr": [0.1]})
    saved = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    momentum = [s["momentum_buffer"].numpy().copy() for s in opt.state.values()]
    _train_step(deepseek, m, opt)
    state.step, state.info = 2, {"lr": [0.2]}
    assert not np.array_equal(m.weight.detach().numpy(), saved["weight"])
    state.restore()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), saved[k])
    for s, mo in zip(opt.state.values(), momentum):
        np.testing.assert_array_equal(s["momentum_buffer"].numpy(), mo)
    assert (state.step, state.info) == (1, {"lr": [0.1]})
    state.restore()                  # the commit is not consumed
    assert state.step == 1 and state.commits == 1
    with pytest.raises(AttributeError, match="tracked object"):
        state.model = None


def test_snapshot_wire_format_keeps_types():
    from deepseek.elastic.state import _decode, _encode
    tree = {"state": {0: {"m": np.arange(6, dtype=np.float32).reshape(2, 3), "step": 3}},
            "groups": [{"betas": (0.9, 0.99), "params": [0, 1], "name": None}]}
    arrays = []
    back = _decode(json.loads(json.dumps(_encode(tree, arrays))), arrays)
    assert list(back["state"]) == [0] and back["groups"][0]["betas"] == (0.9, 0.99)
    np.testing.assert_array_equal(back["state"][0]["m"], tree["state"][0]["m"])
    with pytest.raises(TypeError, match="cannot send a object"):
        _encode({"x": object()}, [])


def test_run_outside_in_process_mode_calls_once_and_propagates():
    from deepseek import collectives as C
    from deepseek import elastic
    calls = []

    @elastic.run
    def train(state, k):
        calls.append((state.step, k, C.get_world_size()))
        raise ValueError("a bug, not a peer failure")

    with pytest.raises(ValueError, match="a bug"):
        train(elastic.State(step=5), 7)
    C.destroy_process_group()
    assert calls == [(5, 7, 1)]
    with pytest.raises(TypeError, match="elastic.State"):
        train(3, 7)


def test_sampler_resumes_in_another_world_size_without_gaps_or_repeats():
    from deepseek import elastic
    ranks = [elastic.ElasticSampler(24, 2, seed=3) for _ in range(2)]   # world size 2
    seen = []
    for _ in range(3):
        for r, s in enumerate(ranks):
            seen += s.next_batch(r, 2)
    sd = ranks[0].state_dict()
    assert all(s.state_dict() == sd for s in ranks)
    ranks = [elastic.ElasticSampler(24, 2, seed=3) for _ in range(3)]   # resumed at 3
    for s in ranks:
        s.load_state_dict(sd)
    for _ in range(2):
        for r, s in enumerate(ranks):
            seen += s.next_batch(r, 3)
    assert sorted(seen) == list(range(24))
    assert ranks[0].next_batch(0, 3) != seen[:2]        # a new epoch, a new order
