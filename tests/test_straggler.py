"""``deepseek-run --straggler-report N``: a real 3-process DDP job in which rank 2
sleeps 20 ms before every step. Every N steps rank 0 prints the report of those steps
(from the bucket collectives' arrival times on the aligned clock) and names rank 2 as
the straggler; at the end the whole-job report flags it too; the timeline the report
needed, not asked for, is removed."""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "scripts", "timeline_worker.py")


def _run(args, tmp_path, extra_env=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEEPSEEK_TIMELINE", "DEEPSEEK_STRAGGLER_REPORT")}
    env["TMPDIR"] = str(tmp_path)  # where the implied timeline goes: must be left empty
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "deepseek.launcher", *args], env=env,
                          capture_output=True, text=True, timeout=240)


def _windows(stderr):
    """[(first step, last step, text of that report)] printed every N steps."""
    out = []
    parts = re.split(r"^\[rank0\]:steps (\d+)-(\d+): ", stderr, flags=re.M)
    for i in range(1, len(parts) - 2, 3):
        body = parts[i + 2].split("\n[rank0]:straggler report")[0]
        out.append((int(parts[i]), int(parts[i + 1]), body))
    return out


@pytest.mark.timeout(300)
def test_slow_rank_named_every_n_steps(tmp_path, shm_guard):
    r = _run(["--nproc", "3", "--timeout", "60", "--straggler-report", "2", WORKER],
             tmp_path, {"TIMELINE_SLOW_RANK": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    wins = _windows(r.stderr)
    # 8 steps, a window every 2; rank 0 prints a window one step after it ends, so
    # steps 7-8 (the last) are only in the end-of-job report
    assert [(a, b) for a, b, _ in wins] == [(1, 2), (3, 4), (5, 6)], r.stderr[-4000:]
    # the first window also holds the start-up broadcasts; after it, rank 2 is last at
    # the bucket allreduces by about its sleep, and flagged
    for a, b, text in wins[1:]:
        assert "STRAGGLER: rank 2 " in text, text
        m = re.search(r"rank 2: last (\d+)x, late p50 ([\d.]+) ms", text)
        assert m and int(m.group(1)) >= 1 and 10.0 < float(m.group(2)) < 200.0, text
        for other in (0, 1):
            assert f"STRAGGLER: rank {other} " not in text, text
    # the whole-job report at the end (rank 0 merges the timeline)
    tail = r.stderr[r.stderr.rindex("[rank0]:straggler report"):]
    assert "STRAGGLER: rank 2 " in tail and "STRAGGLER: rank 0 " not in tail, tail
    # no --timeline: the one the report needed was written to a temporary directory
    # and removed once the job ended
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


@pytest.mark.timeout(300)
def test_no_straggler_when_ranks_are_even(tmp_path, shm_guard):
    """Without a slow rank no rank is late by anything like a 20 ms sleep in the
    windows after the start-up one, and --timeline PATH keeps the merged timeline the
    report came from. (Whether a rank is flagged is not asserted: this job's steps
    are a few ms and a window has 3 collectives, so on a loaded 2-core box a few ms of
    scheduling jitter can be "20% slower" in one window.)"""
    path = str(tmp_path / "kept" / "trace.json")
    r = _run(["--nproc", "2", "--timeout", "60", "--straggler-report", "3",
              "--timeline", path, WORKER], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    wins = _windows(r.stderr)
    assert [(a, b) for a, b, _ in wins] == [(1, 3), (4, 6)], r.stderr[-4000:]
    assert all("rank 0:" in t and "rank 1:" in t for _, _, t in wins)
    for r in (0, 1):
        m = re.search(rf"rank {r}: last \d+x, late p50 ([\d.]+) ms", wins[1][2])
        assert m and float(m.group(1)) < 10.0, wins[1][2]
    assert os.path.exists(path)


def test_straggler_report_option_checked(tmp_path):
    """A bad N is refused up front, naming the option, before any worker starts."""
    r = _run(["--straggler-report", "0", WORKER], tmp_path)
    assert r.returncode == 2
    assert "--straggler-report" in r.stderr and "got '0'" in r.stderr, r.stderr


def test_window_report_from_arrivals():
    """The window report itself: rank 1 issues each collective 5 ms after rank 0, in
    10 ms steps: it is last every time, late by 5 ms, 100% slower, flagged."""
    from deepseek.profiler.straggler import straggler_window
    ms = 1_000_000
    docs = {0: {"arrivals": [["allreduce", s, s * 10 * ms] for s in range(1, 5)],
                "steps": [s * 10 * ms + 2 * ms for s in range(0, 5)]},
            1: {"arrivals": [["allreduce", s, s * 10 * ms + 5 * ms] for s in range(1, 5)],
                "steps": [s * 10 * ms + 7 * ms for s in range(0, 5)]}}
    rep = straggler_window(docs)
    assert rep["collectives"] == 4 and rep["flagged"] == [1]
    assert rep["ranks"][1]["last"] == 4 and rep["ranks"][1]["late_p50_us"] == 5000
    assert rep["ranks"][1]["slower"] == 1.0 and rep["step_us"] == 10000
