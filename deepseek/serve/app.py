"""The HTTP side: a Starlette (ASGI) application, served by uvicorn (see ``cli.py``).

Routes: ``POST /v1/predict``, ``GET /v1/models``, ``GET /health``, ``GET /ready``,
``GET /metrics``, and KServe v2's ``GET /v2``, ``GET /v2/health/live``,
``GET /v2/health/ready``, ``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``,
``POST /v2/models/{name}/infer`` (JSON, or JSON and binary tensors: KServe's binary tensor
data extension, as tritonclient sends them). Every error is JSON ``{"error": reason}`` with
a 4xx/5xx status. The handlers only parse, check and queue: the batcher and the worker pool (started
in the lifespan, on uvicorn's event loop) do the rest.
"""
import asyncio
import contextlib
import logging
import os
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import codec
from .batcher import Batcher, Request
from .metrics import Metrics, CONTENT_TYPE_LATEST
from .pool import ModelError, ServerClosing, WorkerCrashed, WorkerPool

log = logging.getLogger("deepseek.serve")

__all__ = ["create_app", "ServeConfig"]


class ServeConfig:
    """The server's settings (the CLI flags; see ``deepseek-serve --help``)."""

    def __init__(self, model, name=None, workers=1, min_workers=None, max_workers=None,
                 max_batch_size=32, max_delay_ms=5.0, max_body_bytes=32 << 20,
                 shm_size=None, threads=None, target_delay_ms=50.0, scale_up_after=0.5,
                 scale_down_idle=5.0, scale_interval=0.1, request_timeout=60.0,
                 shutdown_grace=10.0, jit=True):
        self.model = model
        base = os.path.basename(os.path.normpath(model))
        self.name = name or (base.rsplit(".", 1)[0] if "." in base else base) or "model"
        self.min_workers = min_workers if min_workers is not None else workers
        self.max_workers = max(max_workers if max_workers is not None else workers,
                               self.min_workers)
        self.workers = workers
        self.max_batch_size, self.max_delay = max_batch_size, max_delay_ms / 1e3
        self.max_body_bytes = max_body_bytes
        # a batch of max_batch_size bodies must fit the arena, and the arena is sparse
        self.shm_size = shm_size or max(64 << 20, 2 * max_body_bytes)
        self.threads = threads
        self.target_delay, self.scale_up_after = target_delay_ms / 1e3, scale_up_after
        self.scale_down_idle, self.scale_interval = scale_down_idle, scale_interval
        self.request_timeout, self.shutdown_grace = request_timeout, shutdown_grace
        self.jit = jit


class _HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def create_app(cfg, on_fatal=None):
    """The ASGI app serving ``cfg.model``; ``on_fatal(reason)`` is called when the model
    cannot be served at all (the CLI stops uvicorn with a non-zero exit)."""
    metrics = Metrics(cfg.max_batch_size)
    st = {"pool": None, "closing": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(cfg.max_batch_size, cfg.max_delay, max_bytes=cfg.shm_size)
        pool = WorkerPool(cfg.model, batcher, metrics, cfg.min_workers, cfg.max_workers,
                          threads=cfg.threads, shm_size=cfg.shm_size,
                          target_delay=cfg.target_delay, up_after=cfg.scale_up_after,
                          idle_after=cfg.scale_down_idle, interval=cfg.scale_interval,
                          on_fatal=on_fatal, jit=cfg.jit)
        st["pool"], st["batcher"] = pool, batcher
        await pool.start(cfg.workers)
        try:
            yield
        finally:
            st["closing"] = True
            log.info("shutting down: draining %d queued requests", batcher.depth)
            await pool.close(cfg.shutdown_grace)
            log.info("shut down")

    def measured(endpoint):
        def wrap(handler):
            async def run(request):
                t = time.perf_counter()
                try:
                    resp = await handler(request)
                except _HTTPError as e:
                    resp = JSONResponse({"error": str(e)}, status_code=e.status)
                except codec.BadRequest as e:
                    resp = JSONResponse({"error": str(e)}, status_code=e.status)
                except Exception as e:  # noqa: BLE001 - a bug must not kill the server
                    log.exception("%s", endpoint)
                    resp = JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"},
                                        status_code=500)
                metrics.requests.labels(endpoint, str(resp.status_code)).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - t)
                return resp
            return run
        return wrap

    async def read_body(request):
        cl = request.headers.get("content-length")
        if cl and cl.isdigit() and int(cl) > cfg.max_body_bytes:
            raise _HTTPError(413, f"body of {cl} bytes is over the {cfg.max_body_bytes}-byte "
                                  "limit (--max-body-bytes)")
        chunks, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n > cfg.max_body_bytes:
                raise _HTTPError(413, f"body is over the {cfg.max_body_bytes}-byte limit "
                                      "(--max-body-bytes)")
            chunks.append(c)
        return b"".join(chunks)

    def spec():
        pool = st["pool"]
        if st["closing"]:
            raise _HTTPError(503, "the server is shutting down")
        if pool is None or pool.spec is None:
            raise _HTTPError(503, f"model {cfg.name} is still loading (see GET /ready)")
        return pool.spec

    async def infer(arrays, explicit):
        sp = spec()
        arrays, rows = codec.check_inputs(arrays, sp, explicit)
        req = Request(arrays, rows, sp["batchable"])
        st["batcher"].submit(req)
        try:
            return await asyncio.wait_for(asyncio.shield(req.future), cfg.request_timeout)
        except asyncio.TimeoutError:
            req.future.cancel()
            raise _HTTPError(504, f"no answer within {cfg.request_timeout} s") from None
        except WorkerCrashed as e:
            raise _HTTPError(503, str(e)) from None
        except ServerClosing as e:
            raise _HTTPError(503, str(e)) from None
        except ModelError as e:
            raise _HTTPError(e.status, str(e)) from None

    @measured("/v1/predict")
    async def predict(request):
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/octet-stream":
            arrays = codec.safetensors_inputs(body)
            outs = await infer(arrays, set(arrays))
            return Response(codec.safetensors_body(outs), media_type="application/octet-stream")
        # curl's -d sends x-www-form-urlencoded unless told otherwise: read it as JSON too
        if ctype not in ("", "application/json", "application/x-www-form-urlencoded",
                         "text/plain"):
            raise _HTTPError(415, f"Content-Type {ctype!r}: expected application/json or "
                                  "application/octet-stream (safetensors)")
        arrays, explicit, fmt = codec.v1_inputs(codec.parse_json(body), spec())
        outs = await infer(arrays, explicit)
        return Response(codec.v1_json(outs, fmt, cfg.name), media_type="application/json")

    @measured("/v2/infer")
    async def v2_infer(request):
        _model(request)
        body = await read_body(request)
        head, binary = codec.v2_split_body(
            body, request.headers.get("inference-header-content-length"))
        obj = codec.parse_json(head)
        arrays, requested = codec.v2_inputs(obj, binary)
        params = obj.get("parameters") or {}
        outs = await infer(arrays, set(arrays))
        if requested:
            unknown = [o["name"] for o in requested if o["name"] not in outs]
            if unknown:
                raise _HTTPError(400, f"unknown output(s) {unknown}: the model gives "
                                      f"{list(outs)}")
        out, head_len = codec.v2_body(outs, cfg.name, obj.get("id"), requested,
                                      bool(isinstance(params, dict)
                                           and params.get("binary_data_output")))
        if head_len is None:
            return Response(out, media_type="application/json")
        return Response(out, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(head_len)})

    def _model(request):
        name = request.path_params["name"]
        if name != cfg.name:
            raise _HTTPError(404, f"no model {name!r}: this server serves {cfg.name!r}")

    def ready_now():
        pool = st["pool"]
        return bool(pool and pool.ready.is_set() and pool.counts()["ready_workers"]
                    and not st["closing"])

    @measured("/health")
    async def health(request):
        return JSONResponse({"status": "ok"})

    @measured("/ready")
    async def ready(request):
        pool = st["pool"]
        c = pool.counts() if pool else {}
        return JSONResponse({"ready": ready_now(), "model": cfg.name, **c},
                            status_code=200 if ready_now() else 503)

    async def metrics_route(request):
        if st["pool"]:
            metrics.queue_depth.set(st["batcher"].depth)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @measured("/v1/models")
    async def models(request):
        return JSONResponse({"name": cfg.name, "spec": spec(), "max_batch_size":
                             cfg.max_batch_size, "max_delay_ms": cfg.max_delay * 1e3})

    @measured("/v2")
    async def v2_server(request):
        from .. import __version__
        return JSONResponse({"name": "deepseek-serve", "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    @measured("/v2/health")
    async def v2_live(request):
        return JSONResponse({"live": True})

    @measured("/v2/health")
    async def v2_ready(request):
        return JSONResponse({"ready": ready_now()}, status_code=200 if ready_now() else 503)

    @measured("/v2/models")
    async def v2_model_ready(request):
        _model(request)
        return JSONResponse({"name": cfg.name, "ready": ready_now()},
                            status_code=200 if ready_now() else 503)

    @measured("/v2/models")
    async def v2_metadata(request):
        _model(request)
        sp = spec()
        return JSONResponse({"name": cfg.name, "versions": ["1"], "platform": sp["platform"],
                             "inputs": [codec.v2_tensor_meta(t) for t in sp["inputs"]],
                             "outputs": [codec.v2_tensor_meta(t) for t in sp["outputs"]]})

    routes = [Route("/v1/predict", predict, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/ready", ready, methods=["GET"]),
              Route("/metrics", metrics_route, methods=["GET"]),
              Route("/v2", v2_server, methods=["GET"]),
              Route("/v2/health/live", v2_live, methods=["GET"]),
              Route("/v2/health/ready", v2_ready, methods=["GET"]),
              Route("/v2/models/{name}", v2_metadata, methods=["GET"]),
              Route("/v2/models/{name}/ready", v2_model_ready, methods=["GET"]),
              Route("/v2/models/{name}/infer", v2_infer, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.serve = st
    return app
