"""A deepseek-serve worker process: ``python -m deepseek.serve.worker`` (started by the pool
with ``subprocess``, never forked from the server, so it owns a clean interpreter and its
own copy of the model).

It maps the two arenas the server created, loads MODEL, answers ``ready`` with the model's
spec, then serves ``run`` messages one at a time: inputs are read in place from the input
arena, outputs written to the output arena, and only the layout goes back on the socket.
It dies with the server (PR_SET_PDEATHSIG) and exits at EOF on its control socket.
"""
import argparse
import ctypes
import os
import signal
import socket
import sys
import traceback


def _die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def main(argv=None):
    """Entry point (arguments come from the pool, not from users)."""
    p = argparse.ArgumentParser(prog="deepseek.serve.worker")
    p.add_argument("--model", required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--shm-in", required=True)
    p.add_argument("--shm-out", required=True)
    p.add_argument("--shm-size", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--no-jit", dest="jit", action="store_false")
    a = p.parse_args(argv)
    _die_with_parent()
    if os.getppid() != a.parent:              # the server died before prctl took effect
        return 1
    # The server owns this process's lifetime: it stops it with a "stop" message after the
    # in-flight batch, and PR_SET_PDEATHSIG / EOF end it when the server goes. A SIGTERM or
    # SIGINT sent to a whole cgroup or group (systemd, docker, Ctrl-C) must not kill it in the
    # middle of a batch that the draining server still waits for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from . import protocol, shm
    sock = socket.socket(fileno=a.fd)
    try:
        arena_in = shm.attach(a.shm_in, a.shm_size)
        arena_out = shm.attach(a.shm_out, a.shm_size)
        from .models import load_runner
        runner = load_runner(a.model, threads=a.threads, jit=a.jit)
    except Exception as e:  # noqa: BLE001 - reported to the server, which logs it and exits
        sock.sendall(protocol.encode({"type": "fatal",
                                      "error": f"{type(e).__name__}: {e}"}))
        return 1
    sock.sendall(protocol.encode({"type": "ready", "pid": os.getpid(), "spec": runner.spec}))
    while True:
        msg = protocol.recv_sync(sock)
        if msg is None or msg["type"] == "stop":
            return 0
        if msg["type"] != "run":
            continue
        try:
            inputs = shm.unpack(arena_in, msg["inputs"])
            outs = runner.run(inputs)
            del inputs
        except Exception as e:  # noqa: BLE001 - the model raised: a 500 for this batch
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            reply = {"type": "error", "id": msg["id"], "status": 500,
                     "error": f"the model raised {tb}"}
        else:
            try:
                reply = {"type": "done", "id": msg["id"], "outputs": shm.pack(arena_out, outs)}
                if runner.plans is not None:
                    reply["plans"] = len(runner.plans)
            except ValueError as e:     # outputs larger than the arena
                reply = {"type": "error", "id": msg["id"], "status": 500,
                         "error": f"the outputs: {e}"}
        sock.sendall(protocol.encode(reply))


if __name__ == "__main__":
    sys.exit(main())
