"""The mpi backend under a real ``mpiexec -n 2`` (skipped without mpiexec/mpi4py)."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _mpi_ok():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


@pytest.mark.skipif(not _mpi_ok(), reason="needs mpi4py and mpiexec")
@pytest.mark.timeout(200)
def test_mpi_backend_under_mpiexec():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "DEEPSEEK_STORE_ADDR", "MASTER_ADDR",
                        "MASTER_PORT", "LOCAL_RANK")}
    cmd = ["mpiexec", "-n", "2", sys.executable,
           os.path.join(HERE, "mpi_collectives_script.py")]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # mpiexec and every rank it started
        out, _ = p.communicate()
        pytest.fail(f"mpiexec timed out:\n{out}")
    assert p.returncode == 0, out
    assert "MPI-OK 0" in out and "MPI-OK 1" in out, out
