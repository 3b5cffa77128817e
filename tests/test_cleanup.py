"""deepseek-run leaves /dev/shm as it found it, however the job ends: success, a rank
that dies between the creation of the group's segment and the attach barrier (exit
code or SIGKILL), a worker killed from outside, SIGTERM/SIGINT to deepseek-run.

The workers are real (two ranks, init_process_group over shared memory). To die at
exactly the dangerous moment they wrap ``Segment.create``/``Segment.attach`` in their
own process (fault injection, not a mock: the segment is real and the process really
dies); the wrapper also records every segment name, so each test knows the segment
existed and checks that deepseek-run's sweep removed it. The check is a before/after
listing of /dev/shm restricted to this job's prefix: other tests may run at the same
time and own other segments.
"""
import os
import signal
import time

import pytest

from deepseek.collectives import shm
# tests/ is on sys.path (pytest's rootdir-relative import): share the launcher helpers
from test_launcher import _kill_session, assert_nothing_left, finish, start

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _no_process_left(tmp_path):
    yield
    assert_nothing_left(tmp_path)

WORKER = """\
import os, signal, sys, time
from deepseek.collectives import shm

rank, mode = int(os.environ["RANK"]), sys.argv[1]
pid_dir = os.environ["PID_DIR"]
with open(os.path.join(pid_dir, f"rank{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(pid_dir, "run_id"), "w") as f:
    f.write(os.environ["DEEPSEEK_RUN_ID"])

_create = shm.Segment.create.__func__

def create(cls, job_id, tag, size):
    seg = _create(cls, job_id, tag, size)
    with open(os.path.join(pid_dir, "segments"), "a") as f:
        f.write(seg.name.lstrip("/") + "\\n")
    if mode == "stuck_after_create":
        time.sleep(300)   # the name is in /dev/shm and nobody will unlink it
    return seg

shm.Segment.create = classmethod(create)

if rank == 1 and mode in ("kill_before_attach", "exit_before_attach"):
    def attach(cls, name, size):   # rank 0 created the segment and waits for us
        if mode == "kill_before_attach":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    shm.Segment.attach = classmethod(attach)

import numpy as np
from deepseek import collectives as C

pg = C.init_process_group()
x = np.ones(4096, np.float32)
pg.allreduce(x)
sym = pg.symmetric_empty(1 << 14)       # a second segment, mapped by both ranks
sym[:] = 1
pg.allreduce(sym)
assert x[0] == 2 and sym[0] == 2, (x[0], sym[0])
del sym
C.destroy_process_group()
"""


def _listing():
    return set(os.listdir(shm.SHM_DIR))


def _ours(tmp_path):
    """This job's segment names: those the workers recorded, and any other name with
    the job's prefix (the prefix is the one the launcher sweeps)."""
    run_id = (tmp_path / "run_id").read_text()
    prefix = shm.job_prefix(run_id)
    recorded = (tmp_path / "segments").read_text().split()
    assert recorded and all(n.startswith(prefix) for n in recorded), (prefix, recorded)
    return prefix, recorded


def _run(tmp_path, mode, *, signal_launcher=None, kill_rank=None):
    script = tmp_path / "shm_worker.py"
    script.write_text(WORKER)
    before = _listing()
    proc = start(tmp_path, "--nproc", "2", "--grace", "2", "--omp-threads", "1",
                 str(script), mode)
    try:
        if signal_launcher is not None or kill_rank is not None:
            deadline = time.monotonic() + 40
            while not (tmp_path / "segments").exists():
                assert proc.poll() is None and time.monotonic() < deadline, \
                    "rank 0 never created the segment"
                time.sleep(0.05)
            if kill_rank is not None:
                pid = int((tmp_path / f"rank{kill_rank}.pid").read_text())
                os.kill(pid, signal.SIGKILL)
            else:
                proc.send_signal(signal_launcher)
        rc, out, err = finish(proc, 60)
        prefix, recorded = _ours(tmp_path)
        left = sorted(n for n in _listing() - before if n.startswith(prefix))
    finally:
        if proc.poll() is None:
            _kill_session(proc.pid)
            proc.communicate()
        if (tmp_path / "run_id").exists():      # don't leak into later tests
            shm.cleanup_job((tmp_path / "run_id").read_text())
    assert not left, f"left in /dev/shm: {left}\n{err}"
    return rc, err, recorded


def test_success_leaves_nothing(tmp_path):
    rc, err, recorded = _run(tmp_path, "ok")
    assert rc == 0, err
    assert len(recorded) == 2       # the group's segment and the symmetric one
    assert "removed" not in err     # unlinked by the ranks, not by the sweep


@pytest.mark.parametrize("mode,code,what", [
    ("kill_before_attach", 128 + 9, "killed by SIGKILL"),
    ("exit_before_attach", 3, "exit code 3"),
])
def test_rank_dies_before_attaching(tmp_path, mode, code, what):
    """Rank 0 created the group's segment and waits in the attach barrier; rank 1 dies
    instead of attaching; rank 0 is stopped with SIGTERM (no finally runs)."""
    rc, err, recorded = _run(tmp_path, mode)
    assert rc == code, err
    assert f"rank 1 (local rank 1, pid" in err and f"failed first: {what}" in err, err
    assert f"removed 1 shared-memory segment(s) the workers left in {shm.SHM_DIR}: " \
           f"{recorded[0]}" in err, err


def test_worker_killed_from_outside(tmp_path):
    rc, err, recorded = _run(tmp_path, "stuck_after_create", kill_rank=0)
    assert rc == 128 + 9 and "rank 0 (local rank 0" in err, err
    assert f"removed 1 shared-memory segment(s)" in err and recorded[0] in err, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher(tmp_path, sig):
    # SIGINT becomes KeyboardInterrupt in rank 0, which then unwinds without the
    # segment's name ever reaching the code that would unlink it
    rc, err, recorded = _run(tmp_path, "stuck_after_create", signal_launcher=sig)
    assert rc == 128 + sig, err
    assert f"got {signal.Signals(sig).name}: forwarding it to the workers" in err, err
    assert f"removed 1 shared-memory segment(s)" in err and recorded[0] in err, err
