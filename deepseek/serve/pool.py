"""The worker pool: starts worker processes, hands them batches through shared memory,
replaces the ones that die, and scales their number with the queue.

- **Start.** ``python -m deepseek.serve.worker`` through ``subprocess`` (a fresh
  interpreter, never a fork of the server), one end of a socketpair as its control channel,
  two arenas (in/out) created here and unlinked as soon as the worker has mapped them.
- **Dispatch.** A loop takes an idle worker, then the next batch from the batcher, writes
  the batch's inputs (stacked along dim 0) into the worker's input arena and sends the
  layout; the reply's layout points into the output arena, which is split back into one
  result per request (copied out, since the arena is reused by the next batch).
- **Crashes.** EOF on the control socket means the worker is gone: the requests of its
  in-flight batch get :class:`WorkerCrashed` (HTTP 503), queued requests stay queued for the
  other workers, and a replacement is started. Three workers in a row that die before
  becoming ready end the server (a model that cannot load).
- **Autoscaling.** Every ``interval`` the oldest queued request's wait is compared with
  ``target_delay``: above it for ``up_after`` seconds in a row adds a worker (one at a time,
  up to ``max_workers``); a worker idle for ``idle_after`` seconds with an empty queue is
  stopped (down to ``min_workers``). Each decision is logged on ``deepseek.serve``.
"""
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from . import protocol, shm

log = logging.getLogger("deepseek.serve")

__all__ = ["WorkerPool", "WorkerCrashed", "ModelError", "ServerClosing"]


class WorkerCrashed(RuntimeError):
    """The worker running this request's batch died (HTTP 503)."""


class ModelError(RuntimeError):
    """The model raised, or its outputs did not fit (HTTP ``status``)."""

    def __init__(self, message, status=500):
        super().__init__(message)
        self.status = status


class ServerClosing(RuntimeError):
    """The server shut down before this request ran (HTTP 503)."""


def _package_root():
    import deepseek
    return os.path.dirname(os.path.dirname(os.path.abspath(deepseek.__file__)))


class _Worker:
    __slots__ = ("wid", "proc", "sock", "reader", "writer", "arena_in", "arena_out", "state",
                 "batch", "reply", "last_active", "started", "task", "stopping", "plans")

    def __init__(self, wid):
        self.wid, self.state, self.batch, self.reply = wid, "starting", None, None
        self.stopping = False
        self.plans = 0                # JIT plans the worker has compiled (its last report)
        self.started = self.last_active = time.monotonic()

    @property
    def pid(self):
        return self.proc.pid


class WorkerPool:
    """Worker processes serving ``model`` (see the module docstring for the knobs)."""

    def __init__(self, model, batcher, metrics=None, min_workers=1, max_workers=1,
                 threads=None, shm_size=64 << 20, target_delay=0.05, up_after=0.5,
                 idle_after=5.0, interval=0.1, on_fatal=None, jit=True):
        self.model, self.batcher, self.metrics = model, batcher, metrics
        self.jit = jit
        self.min_workers = max(1, int(min_workers))
        self.max_workers = max(self.min_workers, int(max_workers))
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.max_workers)
        self.shm_size = int(shm_size)
        self.target_delay, self.up_after = target_delay, up_after
        self.idle_after, self.interval = idle_after, interval
        self.on_fatal = on_fatal
        self.workers = {}             # wid -> _Worker
        self.spec = None              # the model's spec, from the first ready worker
        self.restarts = 0
        self._next_id = 0
        self._next_batch = 0
        # LIFO: the worker that just finished takes the next batch, so under a light load
        # the others stay idle long enough to be scaled down (FIFO would rotate through all)
        self._idle = asyncio.LifoQueue()
        self._closing = False
        self._early_deaths = 0
        self._high_since = None
        self._tasks = []
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, workers=None):
        """Start ``workers`` (default ``min_workers``) and the dispatch/autoscale loops."""
        for _ in range(max(self.min_workers, min(workers or 0, self.max_workers))):
            self._spawn()
        self._tasks = [asyncio.create_task(self._dispatch_loop()),
                       asyncio.create_task(self._autoscale_loop())]

    def _spawn(self):
        w = _Worker(self._next_id)
        self._next_id += 1
        w.arena_in = shm.create(f"w{w.wid}i", self.shm_size)
        w.arena_out = shm.create(f"w{w.wid}o", self.shm_size)
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # BLAS and OpenMP at one thread: the worker's --threads are its own (row slices of
        # a batch on deepseek's engine, the session's pool in onnxruntime), see parallel.py
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        root = _package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        try:
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "deepseek.serve.worker", "--model", self.model,
                 "--fd", str(child.fileno()), "--shm-in", w.arena_in.name,
                 "--shm-out", w.arena_out.name, "--shm-size", str(self.shm_size),
                 "--threads", str(self.threads), "--parent", str(os.getpid())]
                + ([] if self.jit else ["--no-jit"]),
                pass_fds=(child.fileno(),), env=env, cwd=root, stdin=subprocess.DEVNULL,
                # its own session: a signal to the server's process group (Ctrl-C, timeout,
                # a supervisor) reaches the server, which then stops its workers in order
                start_new_session=True)
        except BaseException:
            for a in (w.arena_in, w.arena_out):
                a.unlink()
            parent.close()
            raise
        finally:
            child.close()
        w.sock = parent
        self.workers[w.wid] = w
        w.task = asyncio.create_task(self._watch(w))
        self._gauge()
        log.info("worker %d: started (pid %d)", w.wid, w.pid)
        return w

    async def _watch(self, w):
        """Read ``w``'s control messages until EOF, then clean up after it."""
        w.reader, w.writer = await asyncio.open_connection(sock=w.sock)
        try:
            while True:
                msg = await protocol.recv_async(w.reader)
                if msg is None:
                    break
                t = msg["type"]
                if t == "ready":
                    for a in (w.arena_in, w.arena_out):
                        a.unlink()     # both ends map them: nothing can leak from now on
                    if self.spec is None:
                        self.spec = msg["spec"]
                        log.info("model %s: %s", self.model, _describe(self.spec))
                    w.state = "idle"
                    w.last_active = time.monotonic()
                    self._early_deaths = 0
                    self._idle.put_nowait(w)
                    self.ready.set()
                    log.info("worker %d: ready (pid %d) after %.2f s", w.wid, w.pid,
                             time.monotonic() - w.started)
                    self._gauge()
                elif t == "fatal":
                    log.error("worker %d: cannot load %s: %s", w.wid, self.model, msg["error"])
                    self._fatal(f"cannot load {self.model}: {msg['error']}")
                elif t in ("done", "error") and w.reply is not None and not w.reply.done():
                    w.reply.set_result(msg)
        finally:
            await self._reap(w)

    async def _reap(self, w):
        w.state = "dead"
        self.workers.pop(w.wid, None)
        try:
            w.writer.close()
        except Exception:  # noqa: BLE001 - the socket is gone either way
            pass
        for a in (w.arena_in, w.arena_out):
            a.unlink()
        code = await asyncio.get_running_loop().run_in_executor(None, _wait, w.proc)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if w.reply is not None and not w.reply.done():
            w.reply.set_exception(WorkerCrashed(
                f"worker {w.wid} (pid {w.pid}) died with {how} while running this batch"))
        for a in (w.arena_in, w.arena_out):
            a.close()
        self._gauge()
        if w.stopping or self._closing:
            log.info("worker %d: stopped (pid %d, %s)", w.wid, w.pid, how)
            return
        log.warning("worker %d: died (pid %d, %s); starting a replacement", w.wid, w.pid, how)
        if w.started == w.last_active and w.batch is None:     # never became ready
            self._early_deaths += 1
            if self._early_deaths >= 3:
                self._fatal(f"3 workers in a row died before loading {self.model} ({how})")
                return
        self.restarts += 1
        if self.metrics:
            self.metrics.restarts.inc()
        self._spawn()

    def _fatal(self, why):
        self._closing = True
        if self.on_fatal:
            self.on_fatal(why)

    async def close(self, grace=10.0):
        """Stop taking batches once the queue is drained (or ``grace`` passed), stop every
        worker (SIGKILL after ``grace``), and leave no segment behind."""
        deadline = time.monotonic() + grace
        while (self.batcher.depth or any(w.state == "busy" for w in self.workers.values())) \
                and time.monotonic() < deadline and self.ready.is_set() and not self._closing:
            await asyncio.sleep(0.02)
        self._closing = True
        for t in self._tasks:
            t.cancel()
        self.batcher.fail_all(ServerClosing("the server is shutting down"))
        for w in list(self.workers.values()):
            self._stop(w)
        watchers = [w.task for w in list(self.workers.values())]
        if watchers:
            done, pending = await asyncio.wait(watchers, timeout=max(0.5, deadline -
                                                                     time.monotonic()))
            for w in list(self.workers.values()):
                if w.proc.poll() is None:
                    w.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        shm.sweep()

    def _stop(self, w):
        w.stopping = True
        try:
            w.writer.write(protocol.encode({"type": "stop"}))
        except Exception:  # noqa: BLE001 - already gone
            pass

    # ------------------------------------------------------------------ dispatch
    async def _idle_worker(self):
        while True:
            w = await self._idle.get()
            if w.state == "idle" and not w.stopping:
                return w

    async def _dispatch_loop(self):
        while True:
            # wait until some worker is free before forming a batch (requests that come
            # meanwhile join it), then take the most recently freed worker: under a light
            # load the same one serves every batch and the others can go idle
            self._idle.put_nowait(await self._idle_worker())
            batch = await self.batcher.next_batch()
            w = await self._idle_worker()
            w.state = "busy"
            asyncio.create_task(self._run(w, batch))

    async def _run(self, w, batch):
        t = time.monotonic()
        batch = [r for r in batch if not r.future.done()]      # callers that went away
        if not batch:
            return self._release(w)
        if self.metrics:
            self.metrics.batch_size.observe(sum(r.rows for r in batch))
            for r in batch:
                self.metrics.queue_delay.observe(t - r.t0)
        try:
            return self._finish(w, batch, results=await self._execute(w, batch))
        except WorkerCrashed as e:
            return self._finish(w, batch, exc=e)
        except ModelError as e:
            if len(batch) == 1 or e.status == 413:
                return self._finish(w, batch, exc=e)
            # one bad request (or a model that does not batch) must not fail the others
            # that happened to share its batch: run each alone, so only the bad one errs
            log.warning("worker %d: a batch of %d requests failed (%s); running them one "
                        "by one", w.wid, len(batch), e)
        for i, r in enumerate(batch):
            try:
                res = await self._execute(w, [r])
            except WorkerCrashed as e:
                return self._finish(w, batch[i:], exc=e)
            except ModelError as e:
                if not r.future.done():
                    r.future.set_exception(e)
                continue
            if not r.future.done():
                r.future.set_result(res[0])
        self._release(w)

    async def _execute(self, w, batch):
        """Run ``batch`` on ``w``: one result dict per request; ModelError when the model
        raised or its outputs do not split, WorkerCrashed when ``w`` died meanwhile."""
        if w.state == "dead":       # died between two batches of a one-by-one retry
            raise WorkerCrashed(f"worker {w.wid} (pid {w.pid}) died before running this "
                                "request")
        names = sorted(batch[0].inputs)
        rows = sum(r.rows for r in batch)
        try:
            layout, off = [], 0
            for n in names:
                parts = [r.inputs[n] for r in batch]
                shape = (rows,) + parts[0].shape[1:] if len(batch) > 1 else parts[0].shape
                dst = shm.view(w.arena_in, parts[0].dtype, shape, off)
                if len(parts) > 1:
                    np.concatenate(parts, axis=0, out=dst)
                else:
                    dst[...] = parts[0]
                layout.append([n, parts[0].dtype.str, list(shape), off])
                off += -(-dst.nbytes // shm.ALIGN) * shm.ALIGN
                del dst
        except ValueError as e:
            raise ModelError(str(e), 413) from None
        self._next_batch += 1
        w.batch = self._next_batch
        w.reply = asyncio.get_running_loop().create_future()
        w.writer.write(protocol.encode({"type": "run", "id": w.batch, "inputs": layout}))
        msg = await w.reply
        w.reply = None
        if msg.get("plans", w.plans) != w.plans:
            if self.metrics:
                self.metrics.jit_plans.inc(msg["plans"] - w.plans)
            w.plans = msg["plans"]
        if msg["type"] == "error":
            raise ModelError(msg["error"], msg.get("status", 500))
        outs = shm.unpack(w.arena_out, msg["outputs"])
        results = [{} for _ in batch]
        for n, a in list(outs.items()):
            if len(batch) > 1 and (a.ndim == 0 or a.shape[0] != rows):
                raise ModelError(f"output {n!r} has shape {list(a.shape)}: a batched model "
                                 f"must return {rows} rows along dim 0")
            r0 = 0
            for res, r in zip(results, batch):
                res[n] = a[r0:r0 + r.rows].copy() if len(batch) > 1 else a.copy()
                r0 += r.rows
        del outs
        return results

    def _finish(self, w, batch, results=None, exc=None):
        for i, r in enumerate(batch):
            if not r.future.done():
                if exc is not None:
                    r.future.set_exception(exc)
                else:
                    r.future.set_result(results[i])
        if not isinstance(exc, WorkerCrashed):
            self._release(w)

    def _release(self, w):
        w.batch = w.reply = None
        w.last_active = time.monotonic()
        if w.state == "busy":
            w.state = "idle"
            self._idle.put_nowait(w)

    # ------------------------------------------------------------------ autoscaling
    async def _autoscale_loop(self):
        while True:
            await asyncio.sleep(self.interval)
            try:
                self._autoscale(time.monotonic())
            except Exception:  # noqa: BLE001 - a bad decision must not stop serving
                log.exception("autoscale")

    def _autoscale(self, now):
        if self.metrics:
            self.metrics.queue_depth.set(self.batcher.depth)
        live = [w for w in self.workers.values() if not w.stopping]
        delay = self.batcher.oldest_wait(now)
        if delay > self.target_delay:
            self._high_since = self._high_since or now
            starting = any(w.state == "starting" for w in live)
            if (now - self._high_since >= self.up_after and len(live) < self.max_workers
                    and not starting):
                log.info("autoscale: up %d -> %d workers (queue delay %.0f ms above the "
                         "%.0f ms target for %.1f s)", len(live), len(live) + 1, delay * 1e3,
                         self.target_delay * 1e3, now - self._high_since)
                self._spawn()
                self._high_since = None
            return
        self._high_since = None
        if self.batcher.depth or len(live) <= self.min_workers:
            return
        idle = [w for w in live if w.state == "idle" and now - w.last_active >= self.idle_after]
        if idle:
            w = max(idle, key=lambda w: w.wid)          # the newest goes first
            log.info("autoscale: down %d -> %d workers (worker %d idle for %.1f s)", len(live),
                     len(live) - 1, w.wid, now - w.last_active)
            self._stop(w)
            self._gauge()

    def _gauge(self):
        if not self.metrics:
            return
        counts = {"starting": 0, "idle": 0, "busy": 0}
        for w in self.workers.values():
            if w.state in counts and not w.stopping:
                counts[w.state] += 1
        for state, n in counts.items():
            self.metrics.workers.labels(state).set(n)

    def counts(self):
        """``{"workers": live workers, "ready_workers": ready ones, "restarts": n}``."""
        live = [w for w in self.workers.values() if not w.stopping]
        ready = sum(w.state in ("idle", "busy") for w in live)
        return {"workers": len(live), "ready_workers": ready, "restarts": self.restarts,
                "pids": [w.pid for w in live]}


def _wait(proc):
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _describe(spec):
    ins = ", ".join(f"{i['name']}: {i['dtype']}[" + ", ".join("-1" if d is None else str(d)
                                                           for d in i["shape"]) + "]"
                    for i in spec["inputs"])
    return f"{spec['platform']} ({ins}); batching {'on' if spec['batchable'] else 'off'}"
