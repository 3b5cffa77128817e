"""A failing or leaving rank ends an ``mpiexec`` job instead of hanging it (issue 11).

Real ``mpiexec`` (the mpich wheel's, found on PATH as in test_collectives_mpi) runs
tests/scripts/mpi_failure_worker.py; every run is in its own process group, killed
whole when the test fails or overruns, so no mpiexec or rank outlives a test.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "scripts", "mpi_failure_worker.py")


def _mpi_ok():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


needs_mpi = pytest.mark.skipif(not _mpi_ok(), reason="needs mpi4py and mpiexec")
pytestmark = pytest.mark.timeout(120)


def _mpich_segments():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}
    except OSError:
        return set()


def _run(n, *args, limit=90):
    """(exit code, output, unix time it ended) of ``mpiexec -n n worker args``.

    A job ended by MPI_Abort leaves MPICH's own shared-memory segments behind (MPICH
    cannot unlink them when its ranks are killed); once the job is gone, the ones that
    appeared while it ran are removed, so the suite leaves /dev/shm as it found it.
    """
    before = _mpich_segments()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "DEEPSEEK_STORE_ADDR", "MASTER_ADDR",
                        "MASTER_PORT", "LOCAL_RANK", "DEEPSEEK_COLLECTIVES_TIMEOUT")}
    p = subprocess.Popen(["mpiexec", "-n", str(n), sys.executable, WORKER, *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=limit)
        return p.returncode, out, time.time()
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} still ran after {limit}s "
                    f"(a hang):\n{out}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # stragglers of a job that did end
        except ProcessLookupError:
            pass
        for name in _mpich_segments() - before:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def _failed_at(out):
    m = re.search(r"FAIL-AT (\d+\.\d+)", out)
    assert m, out
    return float(m.group(1))


def _run_failing(n, mode, within):
    """The output of an n-rank job that ``mode`` makes fail at step 50, once it has
    exited nonzero at most ``within`` seconds after the failure."""
    code, out, end = _run(n, mode, "50")
    assert code != 0, out
    assert end - _failed_at(out) < within, out
    return out


@needs_mpi
def test_uncaught_exception_aborts_the_job():
    out = _run_failing(3, "raise", within=15)
    assert "Traceback (most recent call last)" in out, out
    assert "RuntimeError: boom at step 50" in out, out
    assert "USER-HOOK RuntimeError" in out, out  # the hook set before ours still runs
    assert "deepseek: rank 1: uncaught RuntimeError; calling MPI_Abort(1)" in out, out


@needs_mpi
def test_rank_exiting_0_early_ends_the_job_with_an_error():
    # the leave notice makes the peers fail at once, long before any timeout
    out = _run_failing(3, "exit0", within=15)
    assert re.search(r"PeerFailureError: allreduce \(seq 51\) .* group rank 1 \(global rank "
                     r"1\) left the job", out), out


@needs_mpi
def test_wait_past_the_collective_timeout_raises():
    # init_process_group(timeout=2); rank 1 sleeps 8 s: the timeout, not rank 1, ends it
    out = _run_failing(2, "sleep", within=7)
    assert re.search(r"TIMEOUT-OK rank 0 op=allreduce seq=51 group=default rank=0: timed "
                     r"out after 2s", out), out
    assert "CollectiveTimeoutError" in out, out


@needs_mpi
def test_leaving_without_destroy_after_the_work_is_done_is_fine():
    code, out, _ = _run(3, "ok", "50")
    assert code == 0, out
    assert all(f"DONE {r}" in out for r in range(3)), out
    assert "RECV-FAILS-FAST" in out and "after sending 3 messages" in out, out


def test_malformed_leave_notices_are_dropped():
    """Notices come from other processes: checked field by field, never unpickled."""
    from deepseek.collectives.mpi_abort import _parse

    good = b'{"rank": 2, "gen": 1, "why": "left", "comms": {"1.0": [5, 1, 0]}}'
    assert _parse(good, 2) == (1, {"why": "left", "comms": {"1.0": (5, 1, 0)}})
    assert _parse(good, 1) is None                      # not who it claims to be
    for bad in (b"\x80\x04K\x01.", b"[]", b'{"rank": 2}', b"\xff",
                b'{"rank": 2, "gen": 1, "why": "x", "comms": {"1.0": [5, -1, 0]}}',
                b'{"rank": 2, "gen": "1", "why": "x", "comms": {}}',
                b'{"rank": 2, "gen": 1, "why": "x", "comms": {"1.0": [1, 2]}}'):
        assert _parse(bad, 2) is None, bad
