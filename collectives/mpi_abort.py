"""How a rank leaves an MPI job without hanging the others.

Under ``mpiexec``/``srun`` the job only ends when every rank has ended, and MPICH's
``MPI_Finalize`` waits for the other ranks: a rank that dies or leaves while its peers
sit in a collective used to hang the job forever. Three pieces fix that; deepseek
installs them when it sets up the MPI world (:func:`install`, called by the mpi
backend and by the MPI store bootstrap in ``env.py``), never at import.

* **Uncaught exception** -- ``sys.excepthook`` is chained: the previous hook prints the
  traceback first (so the user sees it), stdout/stderr are flushed, then
  ``MPI_Abort(COMM_WORLD, 1)`` (130 for KeyboardInterrupt) ends every rank, as
  ``python -m mpi4py`` does. It aborts at once, in the hook, rather than at exit:
  Python joins threads and runs other atexit handlers first, and any of those may
  block on a peer. It waits 0.25 s before aborting (the process manager kills the
  output forwarders with the ranks; without the pause the traceback can be lost) and
  calls ``os._exit`` after ``MPI_Abort``, which in MPICH returns to the caller. A hook
  set by the user *after* ``init_process_group`` replaces this one.

  Exceptions in other threads are *not* turned into an abort (``threading.excepthook``
  is left alone): such an exception does not end the process, deepseek's own worker
  threads hand their errors to ``Work.wait()`` in the caller, and killing the job for a
  failed helper thread (a logger, a prefetcher) would turn a recoverable event into a
  job failure. If that thread was needed for a collective, the peers still end with
  the collective timeout.

* **Leaving early** (``sys.exit(0)``, returning from the script) while a deepseek MPI
  process group is still initialised, i.e. ``destroy_process_group()`` was not
  called: an ``atexit`` hook sends every peer a *leave notice* (JSON over a private
  duplicate of ``COMM_WORLD``) with, per communicator it shares with that peer, how
  many collectives this rank completed and how many messages it sent to / received
  from that peer. A peer whose wait needs more than that (its collective number is
  higher, or it expects one message more than was sent) raises ``PeerFailureError``
  naming the rank at once, instead of waiting out the timeout; its uncaught error then
  aborts the job, so the job ends non-zero. A notice costs nothing to a peer that
  does not need the leaver any more: ranks that all finish without
  ``destroy_process_group()`` end normally (the leaver's last collectives still
  complete; its ``MPI_Finalize`` waits for the others).
  ``ProcessGroup`` also sends the notice of one communicator when the group breaks on
  this rank (``backend.abort``), so peers fail fast rather than time out when the user
  catches the error.

  Why not simply ``MPI_Abort`` at exit when the group was not destroyed? Many scripts
  never call ``destroy_process_group()`` (PyTorch only warns about it), and their jobs
  must still succeed. And why not leave it to MPI? MPICH's ``MPI_Finalize`` on the
  leaving rank blocks until the others finalize, while they wait for it in the
  collective: the hang of the issue. A process that leaves through ``os._exit`` runs
  no atexit hook, so its peers end with the collective timeout; one killed by a signal
  is seen by the process manager, which ends the job itself.

* **Timeouts** -- the backend's waits poll (``Test``) and honour the collective
  timeout, so whatever the cause, a wait ends with ``CollectiveTimeoutError`` (and the
  excepthook then aborts the job).

Notices are untrusted input: size-limited, parsed as JSON (never unpickled), checked
field by field and dropped when malformed or when the sender is not who it claims.
"""
import atexit
import json
import os
import sys
import threading
import time

_TAG = 0x4453          # tag of leave notices on the control communicator
_MAX_NOTICE = 1 << 20  # bytes; a bigger notice is received and dropped
_ABORT_DELAY = 0.25   # seconds between printing the traceback and MPI_Abort
_SEND_GRACE = 2.0      # seconds a leaving rank waits for its notices to go out

_lock = threading.Lock()
_installed = False
_prev_hook = None
_ctrl = None           # the control communicator (a Dup of COMM_WORLD), made once
_gen = 0               # generation: one per MpiBackend.world() (collective, in order)
_live = []             # MpiBackend objects not closed yet
_notices = {}          # (gen, global rank) -> {"why", "comms": {cid: (coll, sent, recvd)}}
_version = 0           # bumped when _notices changes (waiters re-check only then)


def _mpi():
    from mpi4py import MPI

    return MPI


def install():
    """Install the abort-on-uncaught-exception hook and the leave-notice atexit hook.

    Idempotent; a no-op for a world of one process. Call after MPI is initialised.
    """
    global _installed, _prev_hook, _ctrl
    MPI = _mpi()
    with _lock:
        if _installed or MPI.COMM_WORLD.Get_size() == 1:
            return
        _ctrl = MPI.COMM_WORLD.Dup()  # collective: every rank installs at the same point
        _prev_hook = sys.excepthook
        sys.excepthook = _excepthook
        # runs before mpi4py's MPI_Finalize (registered earlier, at MPI_Init)
        atexit.register(_at_exit)
        _installed = True


def installed():
    """True once :func:`install` took effect in this process."""
    return _installed


def _excepthook(etype, value, tb):
    try:
        (_prev_hook or sys.__excepthook__)(etype, value, tb)
    finally:
        _abort(130 if issubclass(etype, KeyboardInterrupt) else 1,
               f"uncaught {etype.__name__}")


def _abort(code, why):
    MPI = _mpi()
    if not MPI.Is_initialized() or MPI.Is_finalized():
        return
    rank = MPI.COMM_WORLD.Get_rank()
    try:
        sys.stderr.write(f"deepseek: rank {rank}: {why}; calling MPI_Abort({code}) to end "
                         "the job\n")
    except Exception:  # noqa: BLE001 - stderr may be closed; abort anyway
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:  # noqa: BLE001
            pass
    # the process manager kills every rank (and its output forwarders) on abort: give
    # it a moment to forward what this rank just printed, or the traceback is lost
    time.sleep(_ABORT_DELAY)
    MPI.COMM_WORLD.Abort(code)
    # MPICH's MPI_Abort tells the process manager and *returns*; the manager kills the
    # ranks a moment later. Leave now, before atexit hooks or other threads run on.
    os._exit(code)


# ------------------------------------------------------------------ registry

def new_generation():
    """A new world generation (one per ``MpiBackend.world()``, the same on all ranks)."""
    global _gen
    with _lock:
        _gen += 1
        return _gen


def register(backend):
    with _lock:
        _live.append(backend)


def unregister(backend):
    with _lock:
        if backend in _live:
            _live.remove(backend)


# ------------------------------------------------------------------ sending

def _notice_for(peer, backends, why):
    comms = {}
    gen = None
    for b in backends:
        if peer in b.ranks and b.gen is not None:
            gen = b.gen
            i = b.ranks.index(peer)
            comms[b.cid] = [b.coll_done, b.sent[i], b.recvd[i]]
    if not comms:
        return None
    me = _ctrl.Get_rank()
    return json.dumps({"rank": me, "gen": gen, "why": why[:400], "comms": comms}).encode()


def send_notices(backends, why, grace=_SEND_GRACE):
    """Tell every peer of ``backends`` how far this rank got (see module docstring).

    Never blocks longer than ``grace`` seconds: the notices are small (sent eagerly);
    one that cannot go out (the peer is gone) is given up.
    """
    if _ctrl is None:
        return
    MPI = _mpi()
    if MPI.Is_finalized():
        return
    me = _ctrl.Get_rank()
    peers = sorted({r for b in backends for r in b.ranks if r != me})
    reqs, bufs = [], []
    for p in peers:
        msg = _notice_for(p, backends, why)
        if msg is not None:
            bufs.append(bytearray(msg))
            reqs.append(_ctrl.Isend(bufs[-1], dest=p, tag=_TAG))
    end = time.perf_counter() + grace
    while reqs and not MPI.Request.Testall(reqs):
        if time.perf_counter() > end:
            break
        time.sleep(1e-3)


def _at_exit():
    with _lock:
        live = [b for b in _live if b.size > 1]
    if live:
        send_notices(live, "left the job (its process exited without "
                           "destroy_process_group())")


# ------------------------------------------------------------------ receiving

def _parse(raw, source):
    """A checked notice, or None when malformed (it came from outside this process)."""
    try:
        d = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("rank") != source:
        return None
    gen, why, comms = d.get("gen"), d.get("why"), d.get("comms")
    if type(gen) is not int or not isinstance(why, str) or not isinstance(comms, dict):
        return None
    out = {}
    for cid, v in comms.items():
        if not (isinstance(v, list) and len(v) == 3
                and all(type(n) is int and n >= 0 for n in v)):
            return None
        out[str(cid)] = tuple(v)
    return gen, {"why": why[:400], "comms": out}


def poll():
    """Receive pending leave notices; returns a counter that changes when one came."""
    global _version
    if _ctrl is None:
        return 0
    MPI = _mpi()
    status = MPI.Status()
    while True:
        # matched probe: safe when several threads (collective, send, recv) poll at once
        msg = _ctrl.Improbe(source=MPI.ANY_SOURCE, tag=_TAG, status=status)
        if msg is None:
            return _version
        n, src = status.Get_count(MPI.BYTE), status.Get_source()
        buf = bytearray(n)
        msg.Recv([buf, MPI.BYTE])
        parsed = _parse(buf, src) if n <= _MAX_NOTICE else None
        if parsed is None:
            sys.stderr.write(f"deepseek: dropped a malformed leave notice from rank {src}\n")
            continue
        gen, info = parsed
        with _lock:
            for key in [k for k in _notices if k[0] < gen]:
                del _notices[key]  # an older world: nobody waits there any more
            _notices[(gen, src)] = info
            _version += 1


def notices(gen):
    """{global rank: notice} of the world generation ``gen``."""
    with _lock:
        return {r: info for (g, r), info in _notices.items() if g == gen}
