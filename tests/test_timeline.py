"""The whole-job timeline (DEEPSEEK_TIMELINE): a real 2-rank deepseek-run job writes
per-rank files, rank 0 merges them into one Chrome trace; the structure, the clock
alignment and the merge command are checked; a second test renders the merged trace
in a real headless Chromium (tests/test_viz.py has the browser helper)."""
import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "scripts", "timeline_worker.py")
PIPELINE = os.path.join(HERE, "scripts", "pipeline_timeline_worker.py")


def _run_job(tmp_path, extra_env=None, nproc=2, worker=WORKER):
    path = str(tmp_path / "trace.json")
    env = dict(os.environ, DEEPSEEK_TIMELINE=path)
    env.update(extra_env or {})
    r = subprocess.run([sys.executable, "-m", "deepseek.launcher", "--nproc", str(nproc),
                        "--timeout", "60", worker], env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return path, r


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return _run_job(tmp_path_factory.mktemp("timeline"))


def _x(doc):
    return [e for e in doc["traceEvents"] if e["ph"] == "X"]


@pytest.mark.timeout(300)
def test_merged_file_structure(job):
    path, _ = job
    assert os.path.exists(path + ".rank0.json") and os.path.exists(path + ".rank1.json")
    doc = json.load(open(path))
    meta = doc["metadata"]["deepseek_timeline"]
    assert meta["ranks"] == [0, 1] and meta["missing"] == []
    names = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert {p for p, _ in names} == {0, 1}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    for r in (0, 1):
        assert threads[(r, 1)] == "compute"
        assert threads[(r, 2)] == "communication"
        assert threads[(r, 3)] == "data loading"
    xs = _x(doc)
    for r in (0, 1):
        mine = [e for e in xs if e["pid"] == r]
        cats = {(e["tid"], e["cat"]) for e in mine}
        assert (1, "cpu_op") in cats and (1, "backward") in cats and (1, "optimizer") in cats
        assert (2, "collective") in cats and (3, "dataloader") in cats
        # 2 epochs x 4 batches: 8 optimizer steps, 8 data waits (+ the end-of-epoch one)
        assert sum(e["cat"] == "optimizer" for e in mine) == 8
        assert sum(e["cat"] == "dataloader" for e in mine) == 8
        assert any(e["name"] == "AddmmBackward0" for e in mine)
    for e in xs:
        assert e["ts"] >= 0 and e["dur"] >= 0
    colls = [e for e in xs if e["cat"] == "collective"]
    for e in colls:
        a = e["args"]
        assert {"op", "group", "seq", "bytes", "algorithm", "backend", "transport"} <= set(a)
    # the same collectives on both ranks (DDP's bucket allreduces among them)
    by_rank = [[(e["args"]["group"], e["args"]["seq"], e["name"]) for e in colls if e["pid"] == r]
               for r in (0, 1)]
    assert by_rank[0] == by_rank[1] and len(by_rank[0]) >= 8
    assert any(n == "allreduce" and e["args"]["bytes"] > 1000 for e in colls
               for n in [e["name"]])


@pytest.mark.timeout(300)
def test_clocks_aligned(job):
    """A collective ends on every rank at about the same moment: on the aligned clock
    the ends of the same (group, seq) agree within a few ms; the measured offset on
    one host (one clock) is within its error bound of 0."""
    path, r = job
    doc = json.load(open(path))
    meta = doc["metadata"]["deepseek_timeline"]
    off, err = meta["offset_ns"]["1"], meta["offset_err_ns"]["1"]
    assert err > 0 and abs(off) <= err + 50_000, meta
    # the measured offset and its error bound are reported at the end of the job (once)
    # and named on rank 1's process row
    lines = [ln for ln in r.stderr.splitlines() if "clock offsets vs rank 0" in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    m = re.search(r"rank 1 ([+-][\d.]+) us \+- ([\d.]+) us", lines[0])
    assert m and abs(float(m[1]) - off / 1e3) <= 0.051 and abs(float(m[2]) - err / 1e3) <= 0.051
    rows = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
            if e["ph"] == "M" and e["name"] == "process_name"}
    assert f"clock {off / 1e3:+.1f} us +- {err / 1e3:.1f} us" in rows[1] and "clock" not in rows[0]
    ends = {}
    for e in _x(doc):
        if e["cat"] == "collective":
            ends.setdefault((e["args"]["group"], e["args"]["seq"]), {})[e["pid"]] = \
                e["ts"] + e["dur"]
    gaps = sorted(abs(v[0] - v[1]) for v in ends.values() if len(v) == 2)
    assert gaps and gaps[len(gaps) // 2] < 5000, gaps  # median gap < 5 ms (us units)


@pytest.mark.timeout(300)
def test_merge_command(job, tmp_path):
    path, _ = job
    out = str(tmp_path / "again.json")
    for r in (0, 1):
        with open(path + f".rank{r}.json") as f, open(out + f".rank{r}.json", "w") as g:
            g.write(f.read())
    r = subprocess.run([sys.executable, "-m", "deepseek.profiler.merge", out, "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["ranks"] == [0, 1] and summary["missing"] == []
    assert set(summary["offset_ns"]) == set(summary["offset_err_ns"]) == {"0", "1"}
    assert "clock offsets vs rank 0 (measured through the store at start-up): rank 1 " \
        in r.stderr, r.stderr
    assert json.load(open(out))["traceEvents"] == json.load(open(path))["traceEvents"]


def test_format_clock_offsets():
    """The offset line reads the merge summary (int ranks) and the merged file's
    metadata (JSON: string ranks) alike, rank 0 being the reference."""
    from deepseek.collectives import trace
    meta = {"offset_ns": {"0": 0, "1": 12_345, "2": -500},
            "offset_err_ns": {"0": 0, "1": 4_100, "2": 900}}
    assert trace.format_clock_offsets(meta).endswith(
        ": rank 1 +12.3 us +- 4.1 us, rank 2 -0.5 us +- 0.9 us")
    assert trace.format_clock_offsets({"offset_ns": {0: 0}, "offset_err_ns": {0: 0}}) == \
        "clock offsets vs rank 0: no other rank"


@pytest.mark.timeout(300)
def test_merge_names_missing_rank(job, tmp_path):
    from deepseek.collectives import trace
    path, _ = job
    out = str(tmp_path / "partial.json")
    with open(path + ".rank0.json") as f, open(out + ".rank0.json", "w") as g:
        g.write(f.read())
    s = trace.merge(out, 2)
    assert s["ranks"] == [0] and s["missing"] == [out + ".rank1.json"]


@pytest.mark.timeout(300)
def test_merged_timeline_renders_in_chromium(job, tmp_path):
    """The merged trace in the bundled viewer, in a real headless Chromium: no console
    errors, a lane per (rank, thread), and the screenshot is not blank: it shows the
    colours of compute, backward and communication events."""
    from test_viz import CHROMIUM, chromium, console_errors, dump_dom, body_attrs, pixel_colors
    if CHROMIUM is None:
        pytest.skip("no chromium binary")
    import deepseek.viz as viz
    path, _ = job
    page = viz.trace_viewer(path, str(tmp_path / "timeline.html"))
    dom, err = dump_dom(page)
    assert not console_errors(err), console_errors(err)
    a = body_attrs(dom)
    assert a.get("data-ready") == "1"
    assert a["data-lanes"] == "6"  # 2 ranks x compute, communication, data loading
    shot = str(tmp_path / "shot.png")
    _, err = chromium("file://" + page, f"--screenshot={shot}", "--window-size=1200,400",
                      "--virtual-time-budget=3000", "--hide-scrollbars")
    assert os.path.exists(shot), err[-2000:]
    colors = pixel_colors(shot, step=1)  # some events are 1 px wide
    total = sum(colors.values())
    white = colors.get((255, 255, 255), 0)
    assert white < 0.97 * total, "blank screenshot"
    # each category's colour covers some pixels (cpu_op, backward, collective)
    for rgb in ((0x4e, 0x79, 0xa7), (0xf2, 0x8e, 0x2b), (0xe1, 0x57, 0x59)):
        assert colors.get(rgb, 0) > 0, (rgb, colors.most_common(8))


@pytest.mark.timeout(300)
def test_straggler_named(tmp_path):
    """Rank 0 sleeps 20 ms before every step: the report at the end of the job (printed
    by rank 0 after the merge, and in the merged file's metadata) names rank 0 as the
    one arriving last, by about the sleep, and flags it."""
    path, r = _run_job(tmp_path, {"TIMELINE_SLOW_RANK": "0"})
    rep = json.load(open(path))["metadata"]["deepseek_timeline"]["stragglers"]
    assert rep["flagged"] == [0], rep
    r0, r1 = rep["ranks"]["0"], rep["ranks"]["1"]
    assert r0["last"] > rep["collectives"] / 2 and r0["last"] > r1["last"]
    assert 10_000 < r0["late_p50_us"] < 200_000, rep  # the 20 ms sleep, on a loaded box
    assert rep["skew_p50_us"] > 10_000
    assert "STRAGGLER: rank 0" in r.stderr and "straggler report" in r.stderr
    from deepseek.collectives import trace
    assert "rank 0" in trace.format_straggler_report(rep)


@pytest.mark.timeout(300)
def test_deepseek_run_timeline_option(tmp_path):
    """``deepseek-run --timeline PATH`` sets the variable for every worker and merges
    all rank files once the job has ended."""
    path = str(tmp_path / "job.json")
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_TIMELINE"}
    r = subprocess.run([sys.executable, "-m", "deepseek.launcher", "--nproc", "2",
                        "--timeout", "60", "--timeline", path, WORKER], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"timeline of 2 ranks written to {path}" in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("clock offsets vs rank 0") == 1, r.stderr[-3000:]
    doc = json.load(open(path))
    assert {e["pid"] for e in _x(doc)} == {0, 1}


@pytest.mark.timeout(300)
def test_launcher_merges_and_reports_offsets(tmp_path):
    """A job that never destroys its process group: rank 0 does not merge, the
    launcher does once the workers have exited, and it prints the measured clock
    offset (with its error bound) and the straggler report itself."""
    path = str(tmp_path / "late.json")
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_TIMELINE"}
    env["TIMELINE_NO_DESTROY"] = "1"
    r = subprocess.run([sys.executable, "-m", "deepseek.launcher", "--nproc", "2",
                        "--timeout", "60", "--timeline", path, WORKER], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.load(open(path))["metadata"]["deepseek_timeline"]
    off, err = meta["offset_ns"]["1"], meta["offset_err_ns"]["1"]
    lines = [ln for ln in r.stderr.splitlines() if "clock offsets vs rank 0" in ln]
    assert len(lines) == 1 and lines[0].startswith("deepseek-run: "), r.stderr[-3000:]
    assert f"rank 1 {off / 1e3:+.1f} us +- {err / 1e3:.1f} us" in lines[0], (lines, meta)
    assert "straggler report" in r.stderr


@pytest.mark.timeout(300)
def test_pipeline_p2p_in_timeline(tmp_path):
    """A 2-stage GPipe job: every send and recv of the stages is on its rank's
    communication thread as a ``p2p`` event (peer, tag, bytes, group); each send is
    paired with the recv that took it by a flow (an arrow from the send's start to the
    recv's end); p2p ops are not collectives to the straggler report; the viewer draws
    the arrows."""
    path, r = _run_job(tmp_path, worker=PIPELINE)
    doc = json.load(open(path))
    p2p = [e for e in _x(doc) if e["cat"] == "p2p"]
    sends = [e for e in p2p if e["name"] == "send"]
    recvs = [e for e in p2p if e["name"] == "recv"]
    # per step 4 microbatches each way (+ the shape header once, forward)
    assert len([e for e in sends if e["pid"] == 0]) == 13
    assert len([e for e in recvs if e["pid"] == 1]) == 13
    assert len([e for e in sends if e["pid"] == 1]) == 12
    assert len([e for e in recvs if e["pid"] == 0]) == 12
    for e in p2p:
        a = e["args"]
        assert e["tid"] == 2 and a["peer"] == 1 - e["pid"] and a["bytes"] > 0
        assert {"group", "seq", "tag", "backend", "transport"} <= set(a)
    # activations of a (8 x 32) float32 microbatch forward, gradients of it backward
    assert {e["args"]["bytes"] for e in sends if e["pid"] == 0} >= {8 * 32 * 4}
    assert doc["metadata"]["deepseek_timeline"]["p2p_links"] == 25
    starts = {e["id"]: e for e in doc["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in doc["traceEvents"] if e["ph"] == "f"}
    assert set(starts) == set(ends) and len(starts) == 25
    by_flow = {}
    for e in p2p:
        by_flow.setdefault(e["args"]["flow"], []).append(e)
    for fid, pair in by_flow.items():
        snd, rcv = sorted(pair, key=lambda e: e["name"] != "send")
        assert snd["name"] == "send" and rcv["name"] == "recv"
        assert snd["args"]["tag"] == rcv["args"]["tag"] and snd["pid"] == rcv["args"]["peer"]
        assert starts[fid]["pid"] == snd["pid"] and ends[fid]["pid"] == rcv["pid"]
        # on the aligned clock a message is received after it is sent
        assert rcv["ts"] + rcv["dur"] >= snd["ts"] - 1000, (snd, rcv)
    assert doc["metadata"]["deepseek_timeline"]["stragglers"]["collectives"] == 0
    from test_viz import CHROMIUM, console_errors, dump_dom, body_attrs
    if CHROMIUM is None:
        pytest.skip("no chromium binary")
    import deepseek.viz as viz
    page = viz.trace_viewer(path, str(tmp_path / "pp.html"))
    dom, err = dump_dom(page)
    assert not console_errors(err), console_errors(err)
    assert body_attrs(dom).get("data-flows") == "25"


@pytest.mark.timeout(400)
def test_screenshot_script(tmp_path):
    """scripts/make_timeline_screenshot.py (which makes docs/img/timeline.png) runs a
    real 2-rank DDP job, finds communication overlapping backward on both ranks, and
    writes a small, not blank PNG with the colours of compute, backward and
    communication."""
    from test_viz import CHROMIUM, pixel_colors, read_png
    if CHROMIUM is None:
        pytest.skip("no chromium binary")
    out = str(tmp_path / "t.png")
    r = subprocess.run([sys.executable, os.path.join(HERE, "..", "scripts",
                                                     "make_timeline_screenshot.py"),
                        "--out", out], capture_output=True, text=True, timeout=380)
    assert r.returncode == 0, r.stderr[-3000:]
    import re
    overlaps = [float(m) for m in re.findall(r"of which ([\d.]+) ms", r.stdout)]
    assert len(overlaps) == 2 and all(o > 0 for o in overlaps), r.stdout
    assert os.path.getsize(out) < 200_000
    w, h, _, _ = read_png(out)
    assert (w, h) == (1400, 250)
    colors = pixel_colors(out, step=1)
    for rgb in ((0x4e, 0x79, 0xa7), (0xf2, 0x8e, 0x2b), (0xe1, 0x57, 0x59)):
        assert colors.get(rgb, 0) > 500, (rgb, colors.most_common(8))
