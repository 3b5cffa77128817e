"""The chaos runs of issue 18 on 2 x 2 workers: ``deepseek-run --nnodes 1:2`` on one
host, two agents of 2 workers each, DDP and ZeRO-2 (FSDP SHARD_GRAD_OP), fixed seed
and data order (tests/scripts/elastic_train.py, a global batch of 12). A random
worker is SIGKILLed three times at random steps and the agent of the second node once.

* restart-the-world (a sharded checkpoint every 2 steps): every failure restarts the
  world; the lost node's round resumes at world size 2 from the checkpoint saved at 4.
  The steps taken at world size 4 are bitwise the uninterrupted run's (rank 0's
  losses), the final parameters equal it within rtol 1e-5 (world size 2 sums the
  gradients in another order);
* in-process (``DEEPSEEK_ELASTIC_MIN_WORKERS=2``, no spares): a worker of node 2 dies
  (the world shrinks to 3), node 2's agent dies (its last worker is dropped: 2), then
  two workers die at the minimum (each is replaced); the survivors never restart;
  the final parameters equal the uninterrupted run's within rtol 1e-5.

Both: the job ends with 0, every step's samples and the data position are the
uninterrupted run's, no process or /dev/shm segment is left, and the time lost per
failure is printed.
"""
import json
import os
import random
import signal
import time

import numpy as np
import pytest

from test_elastic_inprocess import _listening, _steps, _wait, jobs, progress  # noqa: F401
from test_launcher import _env, _free_port, finish, start

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "tests", "scripts", "elastic_train.py")
STEPS = 30


def _env_for(d, **extra):
    return _env(d, DEEPSEEK_TOKEN="chaos-secret", DEEPSEEK_DETERMINISTIC="1",
                GLOBAL_BATCH="12", **extra)


def _reference(d, mode, variant, jobs, **extra):
    """The uninterrupted run: 4 workers, one agent."""
    os.makedirs(d)
    p = start(d, "--standalone", "--nproc", "4", "--omp-threads", "1", TRAIN, str(d),
              str(STEPS), mode, variant, env=_env_for(d, **extra))
    jobs.append(p)
    return p


def _two_agents(d, mode, variant, jobs, **extra):
    port = _free_port()
    env = _env_for(d, STEP_SLEEP="0.05", **extra)
    common = ["--nnodes", "1:2", "--max-restarts", "4", "--omp-threads", "1", "--grace",
              "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
              "--rdzv-conf", "last_call_timeout=1,heartbeat_timeout=2"]
    args = ["--nproc", "2", TRAIN, str(d), str(STEPS), mode, variant]
    host = start(d, *common, *args, env=env)
    jobs.append(host)
    _wait(lambda: _listening(port), "the store", host)
    other = start(d, *common, *args, env=env)
    jobs.append(other)
    return host, other


def _at(gen, step, rank):
    return lambda d: any(r.get("gen") == gen and r["step"] >= step and r["rank"] == rank
                         for r in progress(d) if "step" in r)


def _pid_of(d, gen, rank):
    return [r for r in progress(d) if "step" in r and r["gen"] == gen
            and r["rank"] == rank][-1]["pid"]


def _time_lost(recs, kills):
    """Per failure: from the kill until every rank of the next generation (round)
    finished a step, and the steps done twice."""
    out = []
    steps = [r for r in recs if "step" in r]
    for gen, t in enumerate(kills, 1):
        now = [r for r in steps if r["gen"] == gen]
        first = {}
        for r in now:
            first[r["rank"]] = min(first.get(r["rank"], r["t"]), r["t"])
        redo = max(r["step"] for r in steps if r["gen"] == gen - 1) - \
            min(r["step"] for r in now) + 1
        out.append(f"{max(first.values()) - t:.2f}s + {redo} step(s) redone")
    return out


def _same_data(d, ref):
    """Every step ran (its last run: the committed one) on the uninterrupted run's
    global batch, and the data position is the same at every step."""
    recs, ref_recs = progress(d), progress(ref)
    last = {}
    for r in recs:
        if "step" in r:
            last[r["step"]] = max(last.get(r["step"], -1), r["gen"])
    assert sorted(last) == list(range(1, STEPS + 1))
    if "pos" in ref_recs[0]:
        ref_ran = _steps(ref_recs)
        worlds = {r["gen"]: r["world"] for r in recs if "step" in r}
        for step, gen in last.items():
            got = {r["rank"]: r["idx"] for r in recs if r.get("step") == step
                   and r["gen"] == gen}
            if len(got) == worlds[gen]:     # (else a rank died before its log line)
                assert sorted(sum(got.values(), [])) == \
                    sorted(sum(ref_ran[step].values(), [])), step
        pos = {r["step"]: tuple(r["pos"]) for r in recs if "step" in r}
        assert pos == {r["step"]: tuple(r["pos"]) for r in ref_recs if "step" in r}


def _same_params(d, ref):
    final, ref_final = np.load(d / "final.npz"), np.load(ref / "final.npz")
    assert set(final) == set(ref_final)
    for k in ref_final:
        np.testing.assert_allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", ["ddp", "zero2"])
def test_chaos_2x2_restart_the_world(tmp_path, jobs, variant, capsys):
    ref = _reference(tmp_path / "ref", "checkpoint", variant, jobs)
    host, other = _two_agents(tmp_path, "checkpoint", variant, jobs)
    rnd = random.Random(1802)
    ats = sorted(rnd.sample(range(3, STEPS - 4), 4))
    kills = []
    for gen, at in enumerate(ats):
        victim = rnd.randrange(4)
        _wait(lambda: _at(gen, at, victim)(tmp_path), f"step {at} of round {gen}", host,
              timeout=90)
        t = time.time()
        if gen < 3:
            os.kill(_pid_of(tmp_path, gen, victim), signal.SIGKILL)
        else:
            other.kill()                    # the second node's agent, SIGKILLed
            other.communicate()
        kills.append(t)
    rc, out, err = finish(host, 150)
    assert rc == 0, err
    assert finish(ref, 60)[0] == 0
    assert "the job completed after 4 restart(s)" in err, err
    recs = [r for r in progress(tmp_path) if "step" in r]
    worlds = {r["gen"]: r["world"] for r in recs}
    assert worlds == {0: 4, 1: 4, 2: 4, 3: 4, 4: 2}, worlds
    _same_data(tmp_path, tmp_path / "ref")
    _same_params(tmp_path, tmp_path / "ref")
    # the steps taken at world size 4 are bitwise the uninterrupted run's
    resumed = min(r["step"] for r in recs if r["gen"] == 4)
    losses = json.loads((tmp_path / "losses.json").read_text())
    ref_losses = json.loads((tmp_path / "ref" / "losses.json").read_text())
    assert len(losses) == STEPS and resumed > 2
    assert losses[:resumed - 1] == ref_losses[:resumed - 1]
    assert losses[resumed:] != ref_losses[resumed:]   # (rank 0's batch is 6 samples now)
    lost = _time_lost(recs, kills)
    with capsys.disabled():
        print(f"\nrestart-the-world 2x2 {variant}: time lost per failure (3 workers, "
              f"then node 2's agent): {'; '.join(lost)}")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("variant", ["ddp", "zero2"])
def test_chaos_2x2_inprocess_shrinks_and_replaces(tmp_path, jobs, variant, capsys):
    ref = _reference(tmp_path / "ref", "inprocess", variant, jobs,
                     DEEPSEEK_ELASTIC_IN_PROCESS="1")
    host, other = _two_agents(tmp_path, "inprocess", variant, jobs,
                              DEEPSEEK_ELASTIC_IN_PROCESS="1",
                              DEEPSEEK_ELASTIC_MIN_WORKERS="2")
    rnd = random.Random(1803)
    ats = sorted(rnd.sample(range(3, STEPS - 4), 4))
    kills = []
    for gen, at in enumerate(ats):
        # gen 0: a worker of node 2 (ranks 2, 3): the world shrinks to 3; gen 1: node
        # 2's agent (its last worker is dropped: 2 remain); then, at the minimum, two
        # workers that are replaced
        victim = rnd.choice([2, 3]) if gen == 0 else rnd.randrange(2)
        _wait(lambda: _at(gen, at, victim)(tmp_path), f"step {at} of generation {gen}",
              host, timeout=90)
        kills.append(time.time())
        if gen == 1:
            other.kill()
            _, other_err = other.communicate()
        else:
            os.kill(_pid_of(tmp_path, gen, victim), signal.SIGKILL)
    rc, out, err = finish(host, 150)
    assert rc == 0, err
    assert finish(ref, 60)[0] == 0
    assert "the others go on without it" in other_err, other_err
    assert err.count("replacing it") == 2, err
    assert "the job completed after 4 restart(s)" in err, err
    recs = progress(tmp_path)
    worlds = {r["gen"]: r["world"] for r in recs if "step" in r}
    assert worlds == {0: 4, 1: 3, 2: 2, 3: 2, 4: 2}, worlds
    # the host's two workers of generation 0 survived every failure but their own
    first = {r["pid"] for r in recs if "step" in r and r["gen"] == 0 and r["rank"] < 2}
    assert first & {r["pid"] for r in recs if "step" in r and r["gen"] == 4}
    resets = [r for r in recs if r.get("event") == "on_reset"]
    assert {(r["gen"], r["world"]) for r in resets} >= {(1, 3), (2, 2), (3, 2), (4, 2)}
    _same_data(tmp_path, tmp_path / "ref")
    _same_params(tmp_path, tmp_path / "ref")
    lost = _time_lost(recs, kills)
    with capsys.disabled():
        print(f"\nin-process 2x2 {variant}: time lost per failure (worker: 4 -> 3, node "
              f"agent: 3 -> 2, 2 workers replaced): {'; '.join(lost)}")
