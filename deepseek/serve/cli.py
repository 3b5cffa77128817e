"""``deepseek-serve MODEL``: the command line (flags -> ServeConfig -> uvicorn).

uvicorn runs one process with one event loop for HTTP, the batcher and the pool; the
model runs in the pool's worker processes (``--workers``), never in the HTTP process.
uvicorn's own handling of SIGTERM/SIGINT is the graceful shutdown: it stops accepting,
lets in-flight requests finish (up to ``--shutdown-grace``), then the lifespan stops the
workers.
"""
import argparse
import logging
import re
import signal
import sys

__all__ = ["main", "parse_args"]


def _size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size like 1048576, 64K, 32M "
                                         "or 1G")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[
        m.group(2).upper()])


def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a positive "
                                             f"{'integer' if kind is int else 'number'}")
        return v
    return conv


def _nonneg(text):
    try:
        v = float(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0")
    return v


def parse_args(argv=None):
    """The parsed flags (see ``deepseek-serve --help``)."""
    p = argparse.ArgumentParser(
        prog="deepseek-serve", description="Serve a model over HTTP with dynamic batching "
        "and autoscaling worker processes (docs/serve.md).")
    p.add_argument("model", metavar="MODEL", help="a deepseek.jit.save file, a hub name or "
                   "directory, or an .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the model's name in /v2/models/{name} (default: MODEL's "
                   "file or directory name)")
    p.add_argument("--workers", type=_positive(int), default=1, help="workers at start")
    p.add_argument("--min-workers", type=_positive(int), help="autoscaling floor "
                   "(default --workers)")
    p.add_argument("--max-workers", type=_positive(int), help="autoscaling ceiling "
                   "(default --workers: no autoscaling)")
    p.add_argument("--max-batch-size", type=_positive(int), default=32,
                   help="rows per batch; 1 turns batching off (default 32)")
    p.add_argument("--max-delay-ms", type=_nonneg, default=5.0,
                   help="longest a request waits for a batch to fill (default 5)")
    p.add_argument("--max-body-bytes", type=_size, default=32 << 20,
                   help="request body limit, answered 413 above it (default 32M)")
    p.add_argument("--shm-size", type=_size, help="bytes of each worker's input and output "
                   "arenas (sparse; default max(64M, 2 x --max-body-bytes))")
    p.add_argument("--threads", type=_positive(int), help="intra-op threads per worker: "
                   "row slices of a batch on deepseek's engine, the session's pool in "
                   "onnxruntime (default: cores / --max-workers)")
    p.add_argument("--no-jit", dest="jit", action="store_false",
                   help="run a hub model on the eager engine instead of its JIT graph")
    p.add_argument("--target-delay-ms", type=_nonneg, default=50.0,
                   help="autoscaling: add a worker when the queue delay stays above this")
    p.add_argument("--scale-up-after", type=_nonneg, default=0.5,
                   help="seconds the delay must stay above the target (default 0.5)")
    p.add_argument("--scale-down-idle", type=_nonneg, default=5.0,
                   help="seconds a worker must be idle to be removed (default 5)")
    p.add_argument("--scale-interval", type=_positive(float), default=0.1,
                   help="seconds between autoscaling checks (default 0.1)")
    p.add_argument("--request-timeout", type=_positive(float), default=60.0,
                   help="seconds before a queued request is answered 504 (default 60)")
    p.add_argument("--shutdown-grace", type=_positive(float), default=10.0,
                   help="seconds SIGTERM waits for in-flight requests (default 10)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    a = p.parse_args(argv)
    if a.min_workers and a.max_workers and a.min_workers > a.max_workers:
        p.error(f"--min-workers {a.min_workers} is above --max-workers {a.max_workers}")
    return a


def main(argv=None):
    """Run the server until SIGTERM/SIGINT; exits 1 when the model cannot be served."""
    a = parse_args(argv)
    import uvicorn
    from .app import ServeConfig, create_app
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers = a.workers
    lo = a.min_workers or min(workers, a.max_workers or workers)
    hi = a.max_workers or max(workers, lo)
    cfg = ServeConfig(a.model, name=a.name, workers=max(lo, min(workers, hi)),
                      min_workers=lo, max_workers=hi, max_batch_size=a.max_batch_size,
                      max_delay_ms=a.max_delay_ms, max_body_bytes=a.max_body_bytes,
                      shm_size=a.shm_size, threads=a.threads, target_delay_ms=a.target_delay_ms,
                      scale_up_after=a.scale_up_after, scale_down_idle=a.scale_down_idle,
                      scale_interval=a.scale_interval, request_timeout=a.request_timeout,
                      shutdown_grace=a.shutdown_grace, jit=a.jit)
    failed = []

    def on_fatal(why):
        failed.append(why)
        logging.getLogger("deepseek.serve").error("cannot serve: %s", why)
        server.should_exit = True

    app = create_app(cfg, on_fatal=on_fatal)
    server = uvicorn.Server(uvicorn.Config(
        app, host=a.host, port=a.port, log_level=a.log_level, access_log=a.access_log,
        timeout_graceful_shutdown=a.shutdown_grace, lifespan="on"))
    # uvicorn handles SIGTERM/SIGINT during serve() (the graceful shutdown) and re-raises
    # the signal afterwards for the handler that was there before: make that one a no-op,
    # so that a shutdown that went as planned exits 0 rather than dying of the signal.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stopped.append(s))
    server.run()
    if failed or not server.started:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
