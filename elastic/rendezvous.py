"""Rendezvous rounds of an elastic job, on the public API of the job's store
(:mod:`deepseek.collectives.store`): which nodes make up the world of each attempt.

Roles. Exactly one :class:`RoundHost` per job runs in the process that hosts the store
(the store lives and dies with it, so nothing is lost by making it the only one that
decides); every node agent -- the host's own included -- is a :class:`Member`. The
host's decisions are written to keys, the members' facts (joins, heartbeats, failures)
too; nobody else writes a decision, so there are no races to settle.

A round ``r`` goes through two phases:

open
    Members join (an atomic counter hands out join slots). The round completes when
    ``max_nodes`` live nodes have joined, or ``min_nodes`` have and ``last_call``
    seconds have passed since the host first saw that many. Fewer than ``min_nodes``
    for ``join_timeout`` seconds ends the job (a rendezvous timeout). On completion
    the host drops joiners whose heartbeat is stale or who left, orders the rest (the
    previous round's node ranks first, then join order), makes the round's worker
    store -- a fresh :class:`StoreServer` with a fresh token, so a worker of an older
    round can neither reach nor authenticate to it -- and publishes ``{r}/result``.
running
    The members run their workers. The round ends (``{r}/end``) when a member reports
    a failure, a member's heartbeat is older than ``heartbeat_timeout`` (the node is
    lost: its agent was killed; but see below), a member leaves (a signal ended its agent), or --
    while nobody has finished yet -- nodes wait to join and the world is below
    ``max_nodes`` (scale up). A failure or a lost node uses up one restart; when none
    are left the job ends with that failure (``final``). Every member reporting done
    ends the job with success. In-process recovery with
    ``DEEPSEEK_ELASTIC_MIN_WORKERS`` (:mod:`deepseek.elastic.inprocess`): a lost node
    does not end the round while the other nodes' workers are at least that many and a
    restart is left; the host spends one and opens a generation on the round's store
    that drops the lost node's ranks, and the survivors go on in a smaller world.

Round numbers are part of every key, and a member acts only on the round whose result
named it: a late joiner that finds round ``r`` already complete joins ``r + 1``.

Keys, under ``elastic/<job id>/``::

    round            the round open or running now                      host
    node/<id>        a member's description (nproc, host)                member
    hb/<id>          a member's heartbeat counter (a thread bumps it)    member
    left/<id>        the member's agent is gone for good                 member
    <r>/count        join slots handed out                               member (add)
    <r>/join/<n>     the node id in slot n                               member
    <r>/result       the round: nodes, ranks, store, token, run id        host
    <r>/fail         the round's first failure (compare_set)             member
    <r>/done/<id>    the member's workers all exited 0                   member
    <r>/end          why round r ended                                   host
    spent            restarts used (rounds and in-process recoveries)     both (add)
    final            the job's outcome: code, message, every attempt      host
    ack/<id>         the member has read final                           member
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from ..collectives.store import StoreClient, StoreError, StoreServer, StoreTimeout, new_token

__all__ = ["RendezvousSettings", "RoundHost", "Member", "Round", "JobEnd",
           "RendezvousError"]


class RendezvousError(RuntimeError):
    """The rendezvous store is gone or answers nonsense."""


@dataclass
class RendezvousSettings:
    """The rules of every round (the host's are the ones that count)."""
    min_nodes: int = 1
    max_nodes: int = 1
    max_restarts: int = 0
    join_timeout: float = 300.0      # a round with fewer than min_nodes for this long fails
    last_call: float = 30.0          # extra wait for more nodes once min_nodes joined
    heartbeat_timeout: float = 15.0  # a member silent this long is lost
    tick: float = 0.05               # how often the host looks at the keys


@dataclass
class Round:
    """One completed round, as one member sees it."""
    number: int
    node_rank: int
    nnodes: int
    world_size: int
    rank_base: int          # global rank of this node's local rank 0
    store: str              # host:port of the round's worker store
    token: str              # its token
    run_id: str             # the round's run id (shared-memory names carry it)
    restart_count: int      # failures before this round
    nodes: list             # [{"id", "node_rank", "nproc", "rank_base", "host"}]


@dataclass
class JobEnd:
    """The job is over: the code every agent exits with, and what happened."""
    code: int
    message: str
    attempts: list          # one dict per ended round (see RoundHost._end)
    restarts: int


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Keys:
    def __init__(self, job: str):
        self.base = f"elastic/{job}/"

    def __call__(self, *parts) -> str:
        return self.base + "/".join(str(p) for p in parts)


class RoundHost:
    """Decides every round (see the module docstring); runs in a daemon thread of the
    process that hosts the store.

    ``client`` is a store client of its own (the thread blocks on it); ``bind`` is
    where round stores listen and ``public_host`` the name workers reach them by.
    """

    def __init__(self, client, job: str, settings: RendezvousSettings, token: str,
                 bind: str, public_host: str, run_base: str | None = None):
        self.client = client
        self.k = _Keys(job)
        self.s = settings
        self.token = token
        self.bind, self.public_host = bind, public_host
        self.run_base = (run_base or new_token())[:10]
        self.round = 0
        self.phase = "open"
        self.restarts = 0
        self.attempts: list[dict] = []
        self.members: list[dict] = []        # nodes of the running round
        self.order: list[str] = []           # node ids by node rank, last round
        self.done = False
        self.error: BaseException | None = None
        self._stores: dict[int, StoreServer] = {}
        self._hb: dict[str, tuple[int, float]] = {}
        self._joins: list[str] = []          # node ids in slot order, this round
        self._opened = time.monotonic()
        self._min_seen: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "RoundHost":
        self.client.set(self.k("round"), str(self.round))
        self._thread = threading.Thread(target=self._loop, name="deepseek-rdzv-host",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stop deciding and close every round store (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for server in self._stores.values():
            server.close()
        self._stores.clear()

    def finish(self, code: int, message: str):
        """End the job now (a signal to the host agent): publish ``final``."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self.done:
            self._final(code, message)

    def _loop(self):
        try:
            while not self._stop.is_set() and not self.done:
                self.step()
                self._stop.wait(self.s.tick)
        except StoreError as e:   # the store closed under us: the agent is shutting down
            if not self._stop.is_set():
                self.error = e
        except BaseException as e:  # noqa: BLE001 - reported by the agent, never lost
            self.error = e

    # ------------------------------------------------------------------ one look
    def step(self):
        """Look at the keys once and take whatever decision is due."""
        now = time.monotonic()
        if self.phase == "open":
            self._step_open(now)
        else:
            self._step_running(now)

    def _alive(self, node_id: str, now: float, left: bool) -> bool:
        if left:
            return False
        last = self._hb.get(node_id)
        return last is None or now - last[1] <= self.s.heartbeat_timeout

    def _watch_heartbeats(self, ids, now: float) -> dict[str, bool]:
        """Read the heartbeat counters and left flags of ``ids``; returns id -> alive."""
        if not ids:
            return {}
        c, k = self.client, self.k
        gone = set(c.missing([k("left", i) for i in ids]))
        values = c.multi_get([k("hb", i) for i in ids], timeout=5)
        alive = {}
        for i, v in zip(ids, values):
            n = int(v or 0)
            last = self._hb.get(i)
            if last is None or last[0] != n:
                self._hb[i] = (n, now)
            alive[i] = self._alive(i, now, k("left", i) not in gone)
        return alive

    def _read_joins(self, r: int) -> list[str]:
        c, k = self.client, self.k
        count = c.add(k(r, "count"), 0)
        if count > len(self._joins):
            slots = [k(r, "join", n) for n in range(len(self._joins) + 1, count + 1)]
            # a member sets its slot right after taking it
            self._joins += [v.decode() for v in c.multi_get(slots, timeout=10)]
        return list(dict.fromkeys(self._joins))

    def _step_open(self, now: float):
        r = self.round
        joined = self._read_joins(r)
        alive = self._watch_heartbeats(joined, now)
        live = [i for i in joined if alive.get(i)]
        s = self.s
        if len(live) >= s.max_nodes:
            self._complete(live[:s.max_nodes])
        elif len(live) >= s.min_nodes:
            if self._min_seen is None:
                self._min_seen = now
            if now - self._min_seen >= s.last_call:
                self._complete(live)
        else:
            self._min_seen = None
            if now - self._opened >= s.join_timeout:
                self._final(1, f"rendezvous round {r} timed out after {s.join_timeout:g}s: "
                               f"{len(live)} of at least {s.min_nodes} node(s) joined")

    def _complete(self, ids: list[str]):
        r, c, k = self.round, self.client, self.k
        rank = {i: n for n, i in enumerate(self.order)}
        slot = {i: n for n, i in enumerate(ids)}
        ids = sorted(ids, key=lambda i: (rank.get(i, len(rank)), slot[i]))
        infos = [json.loads(v) for v in c.multi_get([k("node", i) for i in ids], timeout=10)]
        nodes, base = [], 0
        for n, (i, info) in enumerate(zip(ids, infos)):
            nodes.append({"id": i, "node_rank": n, "nproc": int(info["nproc"]),
                          "rank_base": base, "host": info.get("host", "")})
            base += int(info["nproc"])
        self.restarts = self._spent()
        token = new_token()
        server = StoreServer(self.bind, 0, token).start()
        self._stores[r] = server
        result = {"round": r, "nodes": nodes, "world_size": base,
                  "store": f"{self.public_host}:{server.port}", "token": token,
                  "run_id": f"{self.run_base}r{r}", "restart_count": self.restarts}
        c.set(k(r, "result"), _dumps(result))
        self._round_store = (self.bind, server.port, token, base)
        # every member of the old round has stopped its workers and joined, or is gone
        for old in [n for n in self._stores if n < r]:
            self._stores.pop(old).close()
        self.members, self.order = nodes, ids
        self.phase = "running"

    def _step_running(self, now: float):
        r, c, k = self.round, self.client, self.k
        ids = [m["id"] for m in self.members]
        alive = self._watch_heartbeats(ids, now)
        fail = c.missing([k(r, "fail")])
        if not fail:
            record = json.loads(c.get(k(r, "fail"), timeout=5))
            return self._end("failed", record, counts=True)
        for i in ids:
            if not alive[i]:
                if c.check([k("left", i)]):
                    return self._end("node left", {"node": i, "what": "its agent left "
                                                   "(a signal ended it)"}, counts=False)
                if self._drop_lost(i):
                    return None
                return self._end("node lost", {
                    "node": i, "code": 1,
                    "what": f"no heartbeat for {self.s.heartbeat_timeout:g}s "
                            "(its agent is gone)"}, counts=True)
        done = c.missing([k(r, "done", i) for i in ids])
        if not done:
            return self._final(0, "every worker of every node exited 0")
        if len(done) == len(ids) and len(ids) < self.s.max_nodes \
                and c.add(k(r + 1, "count"), 0) > 0:
            return self._end("scale up", {"what": "node(s) waiting to join"}, counts=False)

    def _drop_lost(self, node_id: str) -> bool:
        """In-process recovery of a lost node (module docstring): True when the
        survivors go on without its ranks (a restart spent, a generation opened)."""
        from . import inprocess
        if not inprocess.in_process_enabled() or len(self.members) < 2:
            return False
        min_workers = inprocess.envvars_get("DEEPSEEK_ELASTIC_MIN_WORKERS")
        host, port, token, world = self._round_store
        m = next(m for m in self.members if m["id"] == node_id)
        c, k = self.client, self.k
        n = c.add(k("spent"), 1)
        if n > self.s.max_restarts:
            c.add(k("spent"), -1)
            return False
        client = StoreClient(host, port, token, timeout=10.0, connect_timeout=10.0)
        try:
            # its slots not dropped already (its workers may have died one by one)
            alive = inprocess.members(client, world, client.add(inprocess.KEY + "gen", 0),
                                      timeout=10.0)
            slots = [r for r in range(m["rank_base"], m["rank_base"] + m["nproc"])
                     if r in alive]
            if not slots:
                c.add(k("spent"), -1)        # nothing of the world was on it
            elif inprocess.reserve_drop(client, world, len(slots), min_workers):
                inprocess.open_generation(client, {
                    "node": node_id, "restart": n, "rank": slots[0], "drop": slots,
                    "what": f"node {node_id} lost (no heartbeat for "
                            f"{self.s.heartbeat_timeout:g}s)"})
            else:
                c.add(k("spent"), -1)
                return False
        finally:
            client.close()
        self.members = [x for x in self.members if x["id"] != node_id]
        self.restarts = self._spent()
        return True

    def _record(self, reason: str, failure: dict | None, counts: bool) -> dict:
        return {"round": self.round, "nnodes": len(self.members),
                "world_size": sum(m["nproc"] for m in self.members),
                "restart_count": self.restarts, "reason": reason, "failure": failure,
                "counts": counts}

    def _spent(self) -> int:
        """Restarts used so far: the world's and in-process recoveries' (members
        spend those with :meth:`Member.spend_restart`)."""
        return min(self.client.add(self.k("spent"), 0), self.s.max_restarts)

    def _end(self, reason: str, failure: dict | None, counts: bool):
        self.restarts = self._spent()
        self.attempts.append(self._record(reason, failure, counts))
        if counts and self.restarts >= self.s.max_restarts:
            code = int((failure or {}).get("code", 1)) or 1
            return self._final(code, f"giving up after {self.restarts} restart(s) "
                                     f"(--max-restarts {self.s.max_restarts})")
        r, c, k = self.round, self.client, self.k
        if counts:
            self.restarts = min(c.add(k("spent"), 1), self.s.max_restarts)
        c.set(k(r, "end"), _dumps({"reason": reason, "failure": failure,
                                   "next": r + 1}))
        self.round = r + 1
        self.phase = "open"
        self._joins = []
        self._opened = time.monotonic()
        self._min_seen = None
        c.set(k("round"), str(self.round))

    def _final(self, code: int, message: str):
        c, k = self.client, self.k
        final = {"code": code, "message": message, "attempts": self.attempts,
                 "restarts": self.restarts}
        final["restarts"] = self.restarts = max(self.restarts, self._spent())
        c.set(k("final"), _dumps(final))
        c.set(k(self.round, "end"), _dumps({"reason": "final", "next": None}))
        self.done = True

    def wait_acks(self, timeout: float):
        """Keep the store up until every node that ever joined read ``final``
        (bounded by ``timeout``; nodes that left or were lost are not waited for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self._watch_heartbeats(list(self._hb), time.monotonic())
            waited = [i for i, ok in alive.items() if ok]
            if not self.client.missing([self.k("ack", i) for i in waited]):
                return True
            time.sleep(0.05)
        return False


class Member:
    """One node agent's side of the rendezvous.

    ``client`` is for the agent's own calls; ``hb_client`` (another connection: the
    agent's calls may block) is used by the heartbeat thread, which starts here and
    bumps ``hb/<id>`` every ``hb_interval`` seconds until :meth:`close`.
    """

    def __init__(self, client, hb_client, job: str, node_id: str, nproc: int,
                 host: str = "", hb_interval: float = 1.0):
        self.client = client
        self.k = _Keys(job)
        self.id = node_id
        self._hb_client = hb_client
        self._hb_interval = hb_interval
        self._stop = threading.Event()
        self.target: int | None = None        # the round we joined (or will)
        self._joined: set[int] = set()
        client.set(self.k("node", node_id), _dumps({"nproc": nproc, "host": host}))
        client.add(self.k("hb", node_id), 1)
        self._thread = threading.Thread(target=self._beat, name="deepseek-rdzv-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self):
        key = self.k("hb", self.id)
        while not self._stop.wait(self._hb_interval):
            try:
                self._hb_client.add(key, 1)
            except StoreError:
                return      # the store is gone; the agent's own calls notice it too

    def close(self):
        """Stop the heartbeat (idempotent); the clients are the caller's."""
        self._stop.set()
        # a daemon thread: one stuck reconnecting to a dead store is not waited for
        self._thread.join(timeout=1)

    # ------------------------------------------------------------------ joining
    def _final(self) -> JobEnd | None:
        c, k = self.client, self.k
        if c.missing([k("final")]):
            return None
        f = json.loads(c.get(k("final"), timeout=5))
        return JobEnd(int(f["code"]), f["message"], f["attempts"], int(f["restarts"]))

    def join(self) -> None:
        """Take a slot in the next round that is not complete yet."""
        c, k = self.client, self.k
        r = int(c.get(k("round")))      # the host sets it first thing
        if self.target is not None:
            r = max(r, self.target)
        if not c.missing([k(r, "result")]):
            r += 1        # complete already (we are late): the next one
        self.target = r
        if r not in self._joined:
            n = c.add(k(r, "count"), 1)
            c.set(k(r, "join", n), self.id)
            self._joined.add(r)

    def poll_round(self, timeout: float = 0.1) -> Round | JobEnd | None:
        """The round we joined, once complete and with us in it; the job's end; or
        None (still open: call again). Not named in the result: joins the next one."""
        c, k, r = self.client, self.k, self.target
        end = self._final()
        if end is not None:
            return end
        try:
            c.wait([k(r, "result")], timeout=timeout)
        except StoreTimeout:
            return None
        res = json.loads(c.get(k(r, "result"), timeout=5))
        for node in res["nodes"]:
            if node["id"] == self.id:
                return Round(number=r, node_rank=node["node_rank"], nnodes=len(res["nodes"]),
                             world_size=res["world_size"], rank_base=node["rank_base"],
                             store=res["store"], token=res["token"], run_id=res["run_id"],
                             restart_count=res["restart_count"], nodes=res["nodes"])
        self.target = r + 1       # too late for round r (or dropped): wait for the next
        self.join()
        return None

    # ------------------------------------------------------------------ running
    def poll_end(self, r: int) -> dict | None:
        """Why round ``r`` ended (``{"reason", "failure", "next"}``), or None."""
        c, k = self.client, self.k
        if c.missing([k(r, "end")]):
            return None
        return json.loads(c.get(k(r, "end"), timeout=5))

    def report_failure(self, r: int, record: dict) -> bool:
        """Publish round ``r``'s failure unless another node's came first; returns
        whether ours is the one."""
        c, k = self.client, self.k
        body = _dumps(dict(record, node=self.id))
        return c.compare_set(k(r, "fail"), b"", body) == body

    def spend_restart(self, max_restarts: int) -> int | None:
        """Take one restart of the job's budget for an in-process recovery; returns
        how many are spent now, or None when none was left (nothing taken)."""
        c, k = self.client, self.k
        n = c.add(k("spent"), 1)
        if n > max_restarts:
            c.add(k("spent"), -1)
            return None
        return n

    def report_done(self, r: int):
        self.client.set(self.k(r, "done", self.id), "0")

    def leave(self):
        """This agent is going away for good (a signal): drop it from every round."""
        self.client.set(self.k("left", self.id), "1")

    def job_end(self) -> JobEnd | None:
        """``final``, if the host published it."""
        return self._final()

    def ack(self):
        """Tell the host we read ``final`` (it keeps the store up until all did)."""
        self.client.set(self.k("ack", self.id), "1")
