"""deepseek-run with real processes: environment, output, failures, signals, cleanup,
rendezvous timeout, bad arguments, two nodes on one machine."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "tests", "scripts")
WORKER = os.path.join(SCRIPTS, "worker.py")
REPORT = os.path.join(SCRIPTS, "env_report.py")


def _env(tmp_path, **extra):
    env = dict(os.environ, PYTHONPATH=REPO, PID_DIR=str(tmp_path))
    env.pop("DEEPSEEK_TOKEN", None)
    env.pop("OMP_NUM_THREADS", None)
    env.update(extra)
    return env


def launch(tmp_path, *args, timeout=60, env=None, **extra):
    """Run deepseek-run to completion (killing its whole session on a timeout)."""
    proc = start(tmp_path, *args, env=env, **extra)
    return finish(proc, timeout)


def start(tmp_path, *args, env=None, **extra):
    return subprocess.Popen([sys.executable, "-m", "deepseek.launcher", *args],
                            env=env or _env(tmp_path, **extra), cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc, timeout=60):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"deepseek-run did not finish in {timeout}s\n{out}\n{err}")
    return proc.returncode, out, err


def _kill_session(sid):
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                p.kill()
        except (ProcessLookupError, psutil.Error, PermissionError):
            pass


def _pids(tmp_path):
    pids = []
    for name in os.listdir(tmp_path):
        if name.endswith(".pid") or name.endswith(".child"):
            pids += [int(x) for x in (tmp_path / name).read_text().split()]
    return pids


def assert_nothing_left(tmp_path):
    """No worker or grandchild the job started is still alive (zombies count as gone)."""
    deadline = time.monotonic() + 5
    while True:
        alive = []
        for pid in _pids(tmp_path):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append((pid, p.cmdline()))
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid, _ in alive:           # don't leak them into other tests
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not alive, f"left running: {alive}"


@pytest.fixture(autouse=True)
def _no_leaks(tmp_path):
    yield
    assert_nothing_left(tmp_path)


def test_environment_and_prefixed_output(tmp_path):
    rc, out, err = launch(tmp_path, "--nproc", "3", REPORT, "--rendezvous", "--lr", "3e-4")
    assert rc == 0, err
    reports = {}
    for line in out.splitlines():
        m = re.match(r"\[rank(\d)\]:REPORT (.*)", line)
        assert m, f"unprefixed stdout line: {line!r}"
        reports[int(m.group(1))] = json.loads(m.group(2))
    assert sorted(reports) == [0, 1, 2]
    tokens = {r["DEEPSEEK_TOKEN"] for r in reports.values()}
    assert len(tokens) == 1 and len(tokens.pop()) >= 32
    for rank, r in reports.items():
        assert (r["RANK"], r["LOCAL_RANK"], r["WORLD_SIZE"], r["LOCAL_WORLD_SIZE"],
                r["NODE_RANK"], r["MASTER_ADDR"]) == (str(rank), str(rank), "3", "3", "0",
                                                     "127.0.0.1")
        assert r["DEEPSEEK_STORE_ADDR"] == f"127.0.0.1:{r['MASTER_PORT']}"
        assert r["DEEPSEEK_LAUNCHER"] == "deepseek-run"
        assert r["argv"] == ["--rendezvous", "--lr", "3e-4"]
        assert r["detected"] == ["deepseek-run", rank, 3, rank, 3, 0]
        assert r["peers"] == [reports[i]["pid"] for i in range(3)]
        n = max(1, len(os.sched_getaffinity(0)) // 3)
        assert r["OMP_NUM_THREADS"] == r["MKL_NUM_THREADS"] == r["OPENBLAS_NUM_THREADS"] \
            == str(n)
    # stderr kept apart, prefixed too; the OMP note said once.
    assert sorted(l for l in err.splitlines() if l.startswith("[rank")) == \
        [f"[rank{i}]:stderr line from {i}" for i in range(3)]
    assert err.count("OMP_NUM_THREADS=") == 1


def test_lines_are_never_split(tmp_path):
    rc, out, err = launch(tmp_path, "--nproc", "3", "--omp-threads", "1", WORKER, "lines")
    assert rc == 0, err
    lines = out.splitlines()
    pattern = re.compile(r"\[rank(\d)\]:(rank(\d)-line\d+-x{50}-end|hello from rank (\d))$")
    for line in lines:
        m = pattern.match(line)
        assert m and m.group(1) == (m.group(3) or m.group(4)), line
    assert len(lines) == 3 * 201
    assert "OMP_NUM_THREADS" not in err      # explicit --omp-threads: nothing to say


def test_module_mode_no_prefix_and_log_dir(tmp_path):
    (tmp_path / "mymod.py").write_text("import os\nprint('mod', os.environ['RANK'])\n")
    logs = tmp_path / "logs"
    rc, out, err = launch(tmp_path, "--nproc", "2", "--no-prefix", "--log-dir", str(logs),
                          "-m", "mymod", env=_env(tmp_path, PYTHONPATH=f"{REPO}:{tmp_path}"))
    assert rc == 0, err
    assert sorted(out.splitlines()) == ["mod 0", "mod 1"]
    assert (logs / "rank1.log").read_text() == "mod 1\n"


@pytest.mark.parametrize("mode,code,what", [
    ("raise", 1, "exit code 1"),
    ("sigkill", 128 + 9, "killed by SIGKILL"),
    ("exit3", 3, "exit code 3"),
])
def test_failing_rank_stops_the_others(tmp_path, mode, code, what):
    start_t = time.monotonic()
    rc, out, err = launch(tmp_path, "--nproc", "3", "--grace", "2", WORKER, mode, "1")
    assert rc == code, err
    assert f"rank 1 (local rank 1, pid" in err and f"failed first: {what}" in err
    if mode == "raise":
        assert "last lines of rank 1's stderr:" in err
        assert "    ValueError: rank 1 failed on purpose" in err
    assert "stopped the other workers" in err
    assert time.monotonic() - start_t < 30          # the sleepers did not run 300 s
    assert len(_pids(tmp_path)) == 3


def test_grandchildren_are_cleaned_up(tmp_path):
    rc, out, err = launch(tmp_path, "--nproc", "2", "--grace", "1", WORKER, "grandchild", "1")
    assert rc == 1, err
    # Each worker started one grandchild in its session and one in a new session.
    assert len(_pids(tmp_path)) == 2 + 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_is_forwarded(tmp_path, sig):
    proc = start(tmp_path, "--nproc", "3", "--grace", "2", WORKER, "grandchild", "99")
    deadline = time.monotonic() + 30
    while len([n for n in os.listdir(tmp_path) if n.endswith(".child")]) < 3:
        assert time.monotonic() < deadline and proc.poll() is None, "workers did not start"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(sig)
    rc, out, err = finish(proc, 30)
    assert rc == 128 + sig, err
    assert f"got {signal.Signals(sig).name}: forwarding it to the workers" in err


def test_rendezvous_timeout_names_missing_rank(tmp_path):
    rc, out, err = launch(tmp_path, "--nproc", "3", "--timeout", "2", "--grace", "1",
                          WORKER, "rdzv_missing", "2")
    assert rc == 1
    assert re.search(r"timed out after 2\.\ds on rank [01]: 2 of 3 ranks arrived; "
                     r"missing ranks: 2", err), err


LATE_SCRIPT = """\
import os, time
if os.environ["RANK"] == "1":
    time.sleep(20)          # far longer than --timeout
from deepseek import collectives as C
C.init_process_group()
"""


def test_timeout_reaches_init_process_group(tmp_path):
    """--timeout bounds init_process_group's wait for a late rank (it used to wait the
    collectives' 300 s), and the error names the rank that never came."""
    script = tmp_path / "late.py"
    script.write_text(LATE_SCRIPT)
    t0 = time.monotonic()
    rc, out, err = launch(tmp_path, "--nproc", "2", "--timeout", "3", "--grace", "1",
                          str(script), timeout=40)
    took = time.monotonic() - t0
    assert rc == 1, err
    assert took < 15, f"took {took:.1f}s\n{err}"
    assert "rank 0 (local rank 0" in err and "failed first: exit code 1" in err, err
    assert ("init_process_group timed out on rank 0 after 3s (the rendezvous timeout, "
            "deepseek-run --timeout): 1 of 2 ranks arrived; missing ranks: 1") in err, err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_one_machine(tmp_path):
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN="shared-secret-for-test")
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--nproc", "2", "--timeout", "30", "--omp-threads", "1"]
    node1 = start(tmp_path, *common, "--node-rank", "1", REPORT, "--rendezvous", env=env)
    node0 = start(tmp_path, *common, "--node-rank", "0", REPORT, "--rendezvous", env=env)
    rc0, out0, err0 = finish(node0)
    rc1, out1, err1 = finish(node1)
    assert (rc0, rc1) == (0, 0), err0 + err1
    reports = [json.loads(l.split("REPORT ", 1)[1]) for l in (out0 + out1).splitlines()]
    assert sorted(int(r["RANK"]) for r in reports) == [0, 1, 2, 3]
    for r in reports:
        assert r["WORLD_SIZE"] == "4" and r["LOCAL_WORLD_SIZE"] == "2"
        assert r["NODE_RANK"] == str(int(r["RANK"]) // 2)
        assert len(r["peers"]) == 4
    assert {r["DEEPSEEK_RUN_ID"] for r in reports}.__len__() == 1


def test_two_nodes_failure_on_one_stops_the_other(tmp_path):
    port = _free_port()
    env = _env(tmp_path, DEEPSEEK_TOKEN="shared-secret-for-test")
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--nproc", "1", "--timeout", "30", "--grace", "1"]
    node0 = start(tmp_path, *common, "--node-rank", "0", WORKER, "raise", "1", env=env)
    node1 = start(tmp_path, *common, "--node-rank", "1", WORKER, "raise", "1", env=env)
    rc1, _, err1 = finish(node1)
    rc0, _, err0 = finish(node0)
    assert rc1 == 1 and "rank 1 (local rank 0" in err1
    assert rc0 == 1 and "rank 1 on node 1 failed: exit code 1" in err0


def test_wrong_token_on_second_node(tmp_path):
    port = _free_port()
    common = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--nproc", "1", "--timeout", "20"]
    node0 = start(tmp_path, *common, "--node-rank", "0", WORKER, "ok",
                  env=_env(tmp_path, DEEPSEEK_TOKEN="right"))
    time.sleep(0.5)
    rc1, _, err1 = launch(tmp_path, *common, "--node-rank", "1", WORKER, "ok",
                          env=_env(tmp_path, DEEPSEEK_TOKEN="wrong"))
    assert rc1 == 2 and "refused our token" in err1
    node0.send_signal(signal.SIGTERM)
    finish(node0)


_NPROC = "argument --nproc/--nproc-per-node/--nproc_per_node: "


@pytest.mark.parametrize("args,message", [
    (["--nproc", "0", "x.py"], _NPROC + "expected an integer >= 1 or 'auto', got '0'"),
    (["--nproc", "two", "x.py"], _NPROC + "expected an integer >= 1 or 'auto', got 'two'"),
    (["--nproc", "2", "does_not_exist.py"], "script 'does_not_exist.py' not found"),
    (["--nnodes", "2", "--node-rank", "2", "--master-port", "1234", "x.py"],
     "--node-rank must be in 0..1"),
    (["--nnodes", "0", "x.py"], "argument --nnodes: expected an integer >= 1, got '0'"),
    (["--node-rank", "-1", "x.py"],
     "argument --node-rank/--node_rank: expected an integer >= 0, got '-1'"),
    (["--master-port", "70000", "x.py"],
     "argument --master-port/--master_port: expected an integer in 0..65535, got '70000'"),
    (["--nproc", "2"], "no script given"),
    (["--bogus", "x.py"], "unrecognized arguments: --bogus"),
    (["--nnodes", "2", "--master-port", "1234", "x.py"], "DEEPSEEK_TOKEN"),
    (["--timeout", "0", "x.py"],
     "argument --timeout: expected a positive number of seconds, got '0'"),
    (["--timeout", "-1", "x.py"],
     "argument --timeout: expected a positive number of seconds, got '-1'"),
    (["--timeout", "nan", "x.py"],
     "argument --timeout: expected a positive number of seconds, got 'nan'"),
    (["--timeout", "inf", "x.py"],
     "argument --timeout: expected a positive number of seconds, got 'inf'"),
    (["--timeout", "soon", "x.py"],
     "argument --timeout: expected a positive number of seconds, got 'soon'"),
    (["--grace", "-1", "x.py"], "argument --grace: expected a number of seconds >= 0, "
                                "got '-1'"),
    (["--grace", "nan", "x.py"], "argument --grace: expected a number of seconds >= 0, "
                                 "got 'nan'"),
    (["--omp-threads", "0", "x.py"],
     "argument --omp-threads: expected an integer >= 1, got '0'"),
])
def test_bad_arguments(tmp_path, args, message):
    (tmp_path / "x.py").write_text("print('must not run')\n")
    rc, out, err = launch(tmp_path, *args, timeout=30)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("deepseek-run: error: ") and message in err


@pytest.mark.parametrize("name,value,expected", [
    ("DEEPSEEK_COLLECTIVES_TIMEOUT", "abc", "a positive number of seconds"),
    ("DEEPSEEK_COLLECTIVES_TIMEOUT", "nan", "a positive number of seconds"),
    ("DEEPSEEK_SHM_CHUNK", "lots", "a positive size in bytes"),
    ("DEEPSEEK_CPU_TRANSPORT", "tcp", "one of auto, shm, zmq"),
])
def test_bad_environment_is_refused_before_any_worker(tmp_path, name, value, expected):
    """A DEEPSEEK_* variable every worker would inherit is checked once, up front."""
    (tmp_path / "x.py").write_text("print('must not run')\n")
    rc, out, err = launch(tmp_path, "--nproc", "2", "x.py", timeout=30, **{name: value})
    assert rc == 2 and out == "", err
    assert err.startswith(f"deepseek-run: error: environment variable {name}={value!r}: "
                          f"expected {expected}")
    assert err.count("\n") == 1 and "(see deepseek-run --help)" in err


def test_busy_explicit_port(tmp_path):
    (tmp_path / "x.py").write_text("print('must not run')\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        rc, out, err = launch(tmp_path, "--master-port", str(s.getsockname()[1]), "x.py")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "port busy" in err


def test_help(tmp_path):
    rc, out, err = launch(tmp_path, "--help")
    assert rc == 0
    for word in ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                 "--log-dir", "--no-prefix", "--timeout", "--omp-threads", "--bind",
                 "examples:", "-m module", "DEEPSEEK_TOKEN", "CUDA_VISIBLE_DEVICES",
                 "python -m deepseek.env"):
        assert word in out


def test_bind_core(tmp_path):
    script = tmp_path / "aff.py"
    script.write_text("import os; print(sorted(os.sched_getaffinity(0)))\n")
    rc, out, err = launch(tmp_path, "--nproc", "2", "--bind", "core", str(script))
    assert rc == 0, err
    cores = sorted(os.sched_getaffinity(0))
    seen = sorted(out.splitlines())
    if len(cores) >= 2:
        share = len(cores) // 2
        assert seen == [f"[rank0]:{cores[:share]}", f"[rank1]:{cores[share:2 * share]}"]


def test_launcher_does_not_import_the_engine():
    code = ("import sys, deepseek.launcher.cli, deepseek.launcher.agent; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'cupy') or "
            "m.startswith(('deepseek._tensor', 'deepseek.nn', 'deepseek.autograd'))]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=30).stdout
    assert out.strip() == "[]"


HANG_SCRIPT = """\
import time
import numpy as np
from deepseek import collectives as C

pg = C.init_process_group()
if pg.rank == 0:
    pg.allreduce(np.ones(4, np.float32), timeout=1.0)   # rank 1 never joins
else:
    def stuck_in_compute():
        time.sleep(60)
    stuck_in_compute()
"""


def test_collective_timeout_prints_one_hang_report(tmp_path):
    """A collective times out on rank 0 while rank 1 is elsewhere: deepseek-run prints
    one report for the whole job, with what each rank was doing and its stack."""
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT)
    rc, out, err = launch(tmp_path, "--nproc", "2", "--grace", "2", str(script), timeout=90,
                          DEEPSEEK_HANG_POLL="0.2")
    assert rc == 1, err
    assert "rank 0 (local rank 0" in err and "failed first" in err, err
    assert err.count("deepseek hang report (2 ranks)") == 1, err
    report = err[err.index("deepseek hang report"):]
    assert re.search(r"rank 0 \(pid \d+\): allreduce seq 1 in group 'default'", report), report
    assert re.search(r"rank 1 \(pid \d+\): not in any collective", report), report
    assert "timed out after 1s" in report, report
    assert "stuck_in_compute" in report and "time.sleep(60)" in report, report
    # the report comes from the launcher, not from a worker's own output
    assert not any(line.startswith("[rank") and "hang report" in line
                   for line in err.splitlines()), err
