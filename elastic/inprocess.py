"""In-process recovery (Horovod Elastic's contract): ``@deepseek.elastic.run``.

    state = elastic.State(model=model, optimizer=opt, sampler=sampler, step=0)

    @elastic.run
    def train(state):
        pg = collectives.get_default_group()    # this generation's group
        while state.step < steps:
            ...                                 # one step (collectives inside)
            state.step += 1
            if state.step % k == 0:
                state.commit()

    train(state)

Run under ``DEEPSEEK_ELASTIC_IN_PROCESS=1 deepseek-run --max-restarts N ...``. When a
worker dies, the agent that watched it does not stop the others: it spends one restart
of the budget, opens a new *generation* (``gen/<n>`` on the round's worker store) and
starts a replacement worker with the dead one's rank. The survivors' next collective
raises (:class:`PeerFailureError`, a broken group, a timeout); ``run`` catches it,
destroys the broken group (its shared-memory segments are unlinked), waits for the
new generation, forms its process group with every rank (survivors and replacement)
through a prefixed view of the same store, then :meth:`State.sync` gives everybody the
newest commit and the training function is called again from there. A failure while
a generation forms moves everybody on to the next one. When the budget is spent the
agent falls back to its ordinary path (the round ends; the job ends with the failure).

``DEEPSEEK_ELASTIC_MIN_WORKERS=M`` (M > 0): a dead worker for whom no hot spare is
free is not replaced while the world is larger than M: the agent opens a generation
that *drops* its rank and the survivors go on in a smaller world (Horovod's
``--min-np``). Ranks are slots: a worker keeps the slot (``RANK``) it started with and
its group rank is its place among the slots still alive (the drops of generations
1..n), so a later replacement takes a slot again and every rank computes the same
membership from the store. A node whose agent is lost (``--nnodes MIN:MAX``) has its
live slots dropped the same way by the round host (:mod:`.rendezvous`), while at
least M workers remain. The user's ``on_reset`` callbacks see the new world size
(rescale the learning rate, the batch per rank); :class:`ElasticSampler` resumes at
the committed position in the new world.

``DEEPSEEK_ELASTIC_SPARES=N``: the agent also starts N hot spares per node; a spare
runs the script up to ``run`` (imports, the model) and waits there for a dead
worker's rank (``spare/<node>/<n>``), so a recovery does not wait for an interpreter
to start. (A spare's environment says local rank 0 until it takes a rank: read
ranks inside the training function.)

Outside in-process mode (no agent that replaces workers), ``run`` initializes the
default group if needed and calls the function once: a failure propagates.

Keys on the round's worker store, under ``deepseek/elastic-ip/``::

    gen            the newest generation (agent: add)
    gen/<n>        generation n was opened: why, and the slots it drops (agent)
    dropped        how many slots were dropped (agent: add; the MIN check)
    g<n>/here/<r>  rank r waits to form generation n (worker)
    g<n>/...       generation n's process group (a prefixed store)
    spare/<id>     the rank hot spare <id> takes (agent)
"""
from __future__ import annotations

import functools
import json
import time

from ..collectives.store import StoreTimeout
from .state import State

__all__ = ["run", "RecoveryError", "KEY", "generation", "open_generation", "events"]

KEY = "deepseek/elastic-ip/"
_ENV = "DEEPSEEK_ELASTIC_IN_PROCESS"
_current = {"gen": None}
events: list = []      # one dict per reset of this process: gen, failed, resumed (time.time())


class RecoveryError(RuntimeError):
    """In-process recovery could not form a new generation in time."""


def envvars_get(name, environ=None):
    """A declared DEEPSEEK_* variable (deepseek/env.py, deepseek/env_vars.json)."""
    from .. import env as envvars
    return envvars.get(name, environ)


def in_process_enabled(environ=None) -> bool:
    """Whether ``DEEPSEEK_ELASTIC_IN_PROCESS`` turns in-process recovery on."""
    return bool(envvars_get(_ENV, environ))


def generation() -> int | None:
    """The generation this process's default group belongs to (None: not in-process)."""
    return _current["gen"]


def open_generation(client, why: dict) -> int:
    """Open the next generation (the agent, after replacing a worker; ``why["drop"]``:
    the slots it drops instead); returns it."""
    n = client.add(KEY + "gen", 1)
    client.set(f"{KEY}gen/{n}", json.dumps(why))
    return n


def reserve_drop(client, world: int, count: int, min_workers: int) -> bool:
    """Whether ``count`` more slots may be dropped from a round of ``world`` slots
    without going under ``min_workers`` (reserved atomically: two agents shrinking at
    once cannot both pass the last step)."""
    if min_workers <= 0:
        return False
    if world - client.add(KEY + "dropped", count) >= min_workers:
        return True
    client.add(KEY + "dropped", -count)
    return False


def members(client, world: int, gen: int, timeout: float) -> list[int]:
    """The slots alive in generation ``gen``: ``range(world)`` less the drops of
    generations 1..gen (in slot order: a slot's group rank is its index)."""
    dropped = set()
    for n in range(1, gen + 1):
        why = json.loads(client.get(f"{KEY}gen/{n}", timeout=timeout))
        dropped.update(int(r) for r in why.get("drop", ()))
    return [r for r in range(world) if r not in dropped]


class _PrefixStore:
    """``client``'s keys under ``prefix``: one generation's process group never sees
    another's keys. Closing it leaves the client open (it is shared)."""

    def __init__(self, client, prefix: str):
        self._c, self._p = client, prefix

    def set(self, key, value):
        return self._c.set(self._p + key, value)

    def get(self, key, timeout=None):
        return self._c.get(self._p + key, timeout=timeout)

    def multi_get(self, keys, timeout=None):
        return self._c.multi_get([self._p + k for k in keys], timeout=timeout)

    def add(self, key, amount=1):
        return self._c.add(self._p + key, amount)

    def compare_set(self, key, expected, desired):
        return self._c.compare_set(self._p + key, expected, desired)

    def wait(self, keys, timeout=None):
        keys = [keys] if isinstance(keys, str) else keys
        return self._c.wait([self._p + k for k in keys], timeout=timeout)

    def missing(self, keys):
        keys = [keys] if isinstance(keys, str) else keys
        n = len(self._p)
        return [k[n:] for k in self._c.missing([self._p + k for k in keys])]

    def check(self, keys):
        return not self.missing(keys)

    def delete(self, key):
        return self._c.delete(self._p + key)

    def ping(self):
        return self._c.ping()

    def close(self):
        pass


class _Recovery:
    """One worker's side of in-process recovery (see the module docstring)."""

    def __init__(self, timeout: float):
        from ..collectives import env as cenv
        self.info = cenv.detect()
        # rank: this worker's slot; world: the round's slots (the group is smaller
        # once slots were dropped)
        self.rank, self.world = self.info.rank, self.info.world_size
        self.timeout = timeout
        self.client = cenv.connect_store(self.info, timeout)
        self.gen = -1

    def take_rank(self, spare: str):
        """A hot spare: wait (until the agent kills us) for the rank of a dead worker,
        then be that rank."""
        import os
        key = f"{KEY}spare/{spare}"
        while True:
            try:
                got = json.loads(self.client.get(key, timeout=3600.0))
                break
            except StoreTimeout:
                continue
        os.environ["RANK"], os.environ["LOCAL_RANK"] = str(got["rank"]), \
            str(got["local_rank"])
        from ..collectives import env as cenv
        self.info = cenv.detect()
        self.rank = self.info.rank

    def newest(self) -> int:
        return self.client.add(KEY + "gen", 0)

    def wait_newer(self, than: int) -> int:
        """The newest generation once it is newer than ``than`` (the agent opens it
        when it has replaced the dead worker)."""
        try:
            self.client.wait([f"{KEY}gen/{than + 1}"], timeout=self.timeout)
        except StoreTimeout:
            raise RecoveryError(f"rank {self.rank}: a peer failed but no new generation "
                                f"was opened within {self.timeout:g}s (is deepseek-run "
                                f"running with {_ENV}=1 and restarts left?)") from None
        return self.newest()

    def form(self, gen: int):
        """Form generation ``gen`` (or a newer one that opens meanwhile) with every
        rank; returns the default group."""
        from .. import collectives as C
        deadline = time.monotonic() + self.timeout
        while True:
            alive = members(self.client, self.world, gen, self.timeout)
            if self.rank not in alive:
                raise RecoveryError(f"slot {self.rank} was dropped from generation {gen}")
            self.client.set(f"{KEY}g{gen}/here/{self.rank}", "1")
            keys = [f"{KEY}g{gen}/here/{r}" for r in alive]
            while True:
                try:
                    self.client.wait(keys, timeout=0.05)
                    break
                except StoreTimeout:
                    newer = self.newest()
                    if newer > gen:
                        break
                    if time.monotonic() > deadline:
                        missing = self.client.missing(keys)
                        raise RecoveryError(
                            f"rank {self.rank}: generation {gen} did not form within "
                            f"{self.timeout:g}s; missing: {sorted(missing)}") from None
            newer = self.newest()
            if newer > gen:          # a failure while forming: everybody moves on
                gen = newer
                continue
            pg = C.init_process_group(rank=alive.index(self.rank), world_size=len(alive),
                                      store=_PrefixStore(self.client, f"{KEY}g{gen}/"))
            self.gen = _current["gen"] = gen
            return pg

    def watch(self, pg):
        """A daemon thread that aborts ``pg`` as soon as the agent opens a newer
        generation (it knows of a death at once; a peer's own liveness check takes up
        to half a second), so the survivors' collectives fail within ~50 ms."""
        import threading
        from ..collectives import env as cenv
        stop = threading.Event()
        gen = self.gen
        try:
            client = cenv.connect_store(self.info, self.timeout)
        except Exception:  # noqa: BLE001 - no watcher: the liveness check still works
            return stop

        def loop():
            try:
                while not stop.is_set():
                    try:
                        client.wait([f"{KEY}gen/{gen + 1}"], timeout=0.5)
                    except StoreTimeout:
                        continue
                    why = json.loads(client.get(f"{KEY}gen/{gen + 1}"))
                    if not stop.is_set():
                        pg.abort(f"elastic: generation {gen + 1} opened (rank "
                                 f"{why.get('rank')}: {why.get('what')})")
                    return
            except Exception:  # noqa: BLE001 - the store went away: the job is ending
                pass
            finally:
                client.close()

        threading.Thread(target=loop, name="deepseek-elastic-watch", daemon=True).start()
        return stop

    def leave(self):
        """Drop the broken group (its segments are unlinked on the way)."""
        from .. import collectives as C
        try:
            C.destroy_process_group()
        except Exception:  # noqa: BLE001 - the group is broken; what matters is gone
            from ..collectives import _world
            _world._S.__init__()


def _recoverable(e: BaseException) -> bool:
    from ..collectives.errors import (CollectiveTimeoutError, GroupBrokenError,
                                      PeerFailureError)
    return isinstance(e, (PeerFailureError, GroupBrokenError, CollectiveTimeoutError))


def _run(func, state: State, args, kwargs):
    from .. import collectives as C
    from ..collectives import env as cenv
    if not in_process_enabled() or cenv.detect().launcher != "deepseek-run":
        if not C.is_initialized():
            C.init_process_group()
        return func(*args, **kwargs)
    if C.is_initialized():
        raise RecoveryError("elastic.run forms the process group itself in in-process "
                            "mode: do not call init_process_group before it")
    info = cenv.detect()
    rec = _Recovery(info.rdzv_timeout or C.DEFAULT_TIMEOUT)
    spare = envvars_get("DEEPSEEK_ELASTIC_SPARE")
    if spare:
        rec.take_rank(spare)
    pg = rec.form(rec.newest())
    joined_late = rec.gen > 0
    if joined_late or pg.size > 1:
        state.sync(pg)          # a replacement catches up; at the start: rank 0's
    if joined_late:
        state.on_reset()
    while True:
        stop = rec.watch(pg)
        try:
            return func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only a peer's failure is recovered
            if not _recoverable(e):
                raise
            failed = time.time()
            old = rec.gen
            stop.set()
            rec.leave()
            pg = rec.form(rec.wait_newer(old))
            state.sync(pg)
            events.append({"gen": rec.gen, "failed": failed, "resumed": time.time(),
                           "error": f"{type(e).__name__}: {e}"[:300]})
            state.on_reset()
        finally:
            stop.set()


def run(arg):
    """Decorate a training function for in-process recovery (module docstring).

    ``@run`` over ``train(state, ...)`` (Horovod's shape), or ``@run(state)`` over a
    function of any arguments. The function is called again after every reset, with
    the state synced to the newest commit: build what holds the process group (DDP,
    ZeRO) inside it, and release it on the way out (``try``/``finally``)."""
    if isinstance(arg, State):
        def deco(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return _run(func, arg, args, kwargs)
            return wrapper
        return deco
    func = arg

    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        if not isinstance(state, State):
            raise TypeError("@elastic.run: the first argument must be an elastic.State "
                            f"(got {type(state).__name__}); or use @elastic.run(state)")
        return _run(func, state, (state,) + args, kwargs)
    return wrapper
