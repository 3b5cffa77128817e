"""Test helpers for deepseek-serve (used by the suite and scripts/bench_serve.py; public,
so users test their deployments the same way): :func:`run_server` starts a real
``deepseek-serve`` subprocess on a free loopback port and always cleans up after it."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["free_port", "run_server", "ServerProcess"]


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running server: ``url``, ``proc`` (the Popen), ``log()`` (its output so far),
    ``worker_pids()`` (from /ready)."""

    def __init__(self, proc, url, log_path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self):
        """Everything the server wrote to stdout/stderr so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def status(self):
        """The /ready JSON (``workers``, ``ready_workers``, ``pids``, ``restarts``)."""
        import json
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def worker_pids(self):
        """The pids of the live workers."""
        return list(self.status().get("pids", []))


def _children(pid):
    """Descendants of ``pid`` as psutil processes (workers run in their own sessions, so
    they are found by parentage; psutil guards against reused pids)."""
    try:
        import psutil
        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil absent or the process is gone
        return []


@contextlib.contextmanager
def run_server(model, *flags, ready_timeout=60.0, stop_timeout=20.0, env=None, root=None):
    """Start ``deepseek-serve model *flags`` on a free port, wait until /ready answers 200,
    yield a :class:`ServerProcess`; on exit SIGTERM it (SIGKILL after ``stop_timeout``),
    kill any worker still alive and sweep the server's /dev/shm segments. ``root``: the
    source checkout to run (default: the one this module is in; benchmarks pass an older
    copy to compare)."""
    import urllib.request
    port = free_port()
    fd, log_path = tempfile.mkstemp(prefix="deepseek-serve-", suffix=".log")
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = root + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "deepseek.serve.cli", str(model),
                             "--port", str(port), *map(str, flags)],
                            stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=e, cwd=root)
    os.close(fd)
    srv = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    kids = []
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"deepseek-serve exited with {proc.returncode}:\n{srv.log()}")
            try:
                with urllib.request.urlopen(srv.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"deepseek-serve not ready after {ready_timeout} s:\n"
                                   f"{srv.log()}")
            time.sleep(0.05)
        yield srv
    finally:
        kids = _children(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in kids:
            with contextlib.suppress(Exception):
                if p.is_running():
                    p.kill()
        from .shm import sweep
        sweep(proc.pid)
        with contextlib.suppress(OSError):
            os.remove(log_path)


def make_jit_mlp(path, dims=(16, 64, 4), seed=0):
    """Trace a small deepseek MLP with a free batch dim and ``deepseek.jit.save`` it to
    ``path``; returns the eager model (the reference)."""
    import numpy as np
    import deepseek
    import deepseek.nn as nn
    np.random.seed(seed)
    deepseek.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    with deepseek.no_grad():
        deepseek.jit.trace(model, deepseek.randn(2, dims[0]), dynamic=True).save(str(path))
    return model


def make_onnx_mlp(path, dims=(16, 64, 4), repeat=1, free_features=False, seed=0):
    """Write an ONNX MLP (``x`` [N, dims[0]] float32 -> ``y``) with onnx.helper; ``repeat``
    runs the hidden layer that many times (a slow model from a small file);
    ``free_features=True`` leaves dim 1 of ``x`` free, so a request with the wrong width
    passes the server's checks and makes onnxruntime raise. Returns the weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
          for a, b in zip(dims[:-1], dims[1:])]
    bs = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in dims[1:]]
    inits, nodes, cur = [], [], "x"
    plan = [0] + [1] * repeat + list(range(2, len(ws))) if len(ws) > 2 else list(range(len(ws)))
    for i in sorted(set(plan)):
        inits += [numpy_helper.from_array(ws[i], f"W{i}"), numpy_helper.from_array(bs[i], f"b{i}")]
    for k, i in enumerate(plan):
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{k}"]))
        nodes.append(helper.make_node("Add", [f"m{k}", f"b{i}"], [f"a{k}"]))
        last = k == len(plan) - 1
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{k}"], [f"r{k}"]))
        cur = "y" if last else f"r{k}"
        if last:
            nodes[-1].output[0] = "y"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                      ["N", "F" if free_features else dims[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[-1]])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return ws, bs, plan


def onnx_mlp_reference(x, weights):
    """What :func:`make_onnx_mlp`'s model computes, in numpy."""
    import numpy as np
    ws, bs, plan = weights
    h = np.asarray(x, np.float32)
    for k, i in enumerate(plan):
        h = h @ ws[i] + bs[i]
        if k < len(plan) - 1:
            h = np.maximum(h, 0)
    return h
