"""The elastic node agent of deepseek-run (``--max-restarts``, ``--nnodes MIN:MAX``,
``--rdzv-endpoint``, ``--standalone``): restart the world, torchrun's contract.

The loop, on every node::

    join a round  ->  run this node's workers  ->  the round ends  ->  join the next
                      (a failure here: publish it, stop ours)   (or the job ends)

The rounds themselves -- who is in, node ranks, last call, heartbeats, the restart
budget -- are :mod:`deepseek.elastic.rendezvous`'s; this module only drives them:
the agent that can listen on the endpoint (``--standalone``: always this one, on a free
loopback port) hosts the store and runs the :class:`RoundHost` in a thread, every agent
is a :class:`Member`. Each round's workers get that round's store and token (a fresh
store per round: no key of an old round is visible, and an old round's worker cannot
authenticate to the new one), its run id (so shared-memory names differ and the old
round's segments are swept by their own prefix), new RANK/WORLD_SIZE and
``DEEPSEEK_RESTART_COUNT``/``TORCHELASTIC_RESTART_COUNT``.

Between two attempts everything of the old one is gone on this node before this agent
joins the next round: its workers and what they started (the sweep of
:meth:`NodeAgent.end_attempt`), and its shared-memory segments. A signal to the agent
ends its part for good (it leaves the job; the host agent leaving ends the job).
"""
from __future__ import annotations

import errno
import json
import os
import socket

from .. import env as envvars
from ..collectives.store import StoreClient, StoreError, StoreServer, new_token
from ..elastic import inprocess
from ..elastic.inprocess import open_generation
from ..elastic.rendezvous import (JobEnd, Member, RendezvousError, RendezvousSettings,
                                  Round, RoundHost)
from .agent import NodeAgent, StartupError, worker_env
from .cli import Config
from .group import Worker, describe_exit, shell_code, signame

__all__ = ["ElasticAgent", "traceback_excerpt"]

_EXCERPT_LINES = 8


def traceback_excerpt(tail, limit: int = _EXCERPT_LINES) -> list[str]:
    """The first lines of the last traceback in ``tail`` (and its last line, the
    exception); without a traceback, the last lines."""
    lines = list(tail)
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        lines = lines[starts[-1]:]
        if len(lines) > limit:
            lines = lines[:limit - 2] + ["..."] + lines[-1:]
        return lines
    return lines[-limit:]


class ElasticAgent(NodeAgent):
    """One node of an elastic job (see module docstring)."""

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        self.token = c.token or new_token()
        self.node_id = f"{socket.gethostname()}-{os.getpid()}"
        self.server: StoreServer | None = None
        self.rdzv: RoundHost | None = None
        self.group = None
        self._clients: list[StoreClient] = []
        self._lost: StoreError | None = None     # the rendezvous store is gone
        # in-process recovery: replace a dead worker, the others re-form the group
        self._inproc = bool(envvars.get("DEEPSEEK_ELASTIC_IN_PROCESS"))
        self._spares = envvars.get("DEEPSEEK_ELASTIC_SPARES") if self._inproc else 0
        self._min_workers = envvars.get("DEEPSEEK_ELASTIC_MIN_WORKERS")
        if c.rdzv_endpoint is None:                  # --standalone: ours, on loopback
            public, port = "127.0.0.1", 0
            bind = connect = "127.0.0.1"
        else:
            public, port = c.rdzv_endpoint
            try:
                bind = connect = socket.gethostbyname(public)
            except OSError as e:
                raise StartupError(f"cannot resolve --rdzv-endpoint host {public!r}: "
                                   f"{e}") from None
        try:
            self.server = StoreServer(bind, port, self.token).start()
            port = self.server.port
        except OSError as e:
            # busy: another agent hosts it; not one of our addresses: a remote host does
            if c.rdzv_endpoint is None or e.errno not in (errno.EADDRINUSE,
                                                          errno.EADDRNOTAVAIL):
                raise StartupError(f"cannot listen on {bind}:{port} for the rendezvous "
                                   f"store: {e.strerror or e}") from None
        self.endpoint = f"{public}:{port}"
        try:
            main = self._client(connect, port, c.join_timeout)
            hb = self._client(connect, port, 10.0)
        except StoreError as e:
            self._close_clients()
            raise StartupError(f"cannot join the rendezvous store at {self.endpoint}: "
                               f"{e}") from None
        # From now on a vanished host must not stall us for the whole join timeout.
        main.connect_timeout = min(c.join_timeout, 10.0)
        settings = RendezvousSettings(
            min_nodes=c.min_nodes, max_nodes=c.max_nodes, max_restarts=c.max_restarts,
            join_timeout=c.join_timeout, last_call=c.last_call,
            heartbeat_timeout=c.heartbeat_timeout)
        if self.server is not None:
            self.rdzv = RoundHost(self._client(connect, port, 30.0), c.rdzv_id, settings,
                                  self.token, bind=bind, public_host=public).start()
        self.member = Member(main, hb, c.rdzv_id, self.node_id, c.nproc,
                             host=socket.gethostname(),
                             hb_interval=min(2.0, max(0.05, c.heartbeat_timeout / 5)))

    def _client(self, host, port, timeout) -> StoreClient:
        client = StoreClient(host, port, self.token, timeout=timeout,
                             connect_timeout=timeout)
        self._clients.append(client)
        return client

    def _close_clients(self):
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.server is not None:
            self.server.close()

    # ------------------------------------------------------------------ the job
    def run(self) -> int:
        """Run rounds until the job ends; returns deepseek-run's exit code."""
        self.begin()
        code, left = 1, False
        try:
            code, left = self._rounds()
        except StoreError as e:
            self._lost = e
            self.note(f"lost the rendezvous store at {self.endpoint} ({e}); stopping")
            code = 1
        except RendezvousError as e:
            self.note(f"{e}; stopping")
            code = 1
        finally:
            if self.group is not None:
                self.note_removed(self.end_attempt(self.group, self._run_id))
                self.group = None
            self.end()
            self._shutdown(code, left)
        return code

    def _rounds(self) -> tuple[int, bool]:
        """The loop of the module docstring; returns (exit code, whether we left)."""
        m = self.member
        m.join()
        while True:
            got = self._wait(lambda: m.poll_round(timeout=0.1))
            if isinstance(got, int):                     # a signal while waiting
                return self._leave(got), True
            if isinstance(got, JobEnd):
                return self._job_end(got), False
            rnd: Round = got
            if rnd.number > 0:
                self.note(f"round {rnd.number}: {rnd.nnodes} node(s), world size "
                          f"{rnd.world_size}, restart {rnd.restart_count} of "
                          f"--max-restarts {self.c.max_restarts}; this node is node "
                          f"{rnd.node_rank}")
            res = self._attempt(rnd)
            if self._lost is not None:      # don't wait on a dead store again
                raise self._lost
            if res.failed is not None:
                self.report_failure(res.failed, res.workers)
                self.print_hang_report(self._hang_report)
            if res.signal is not None:
                return self._leave(res.signal), True
            if res.succeeded:
                m.report_done(rnd.number)
            # the round ends (or the job does) when the host says so
            end = self._wait(lambda: m.job_end() or m.poll_end(rnd.number), sleep=0.05)
            if isinstance(end, int):
                return self._leave(end), True
            if isinstance(end, JobEnd):
                return self._job_end(end), False
            if end["reason"] == "final":
                continue        # final is set too: the next look finds it
            if res.stopped is None and res.failed is None:
                self.note(f"round {rnd.number} ended: {self._why(end)}")
            m.join()

    def _wait(self, look, sleep: float = 0.0):
        """Call ``look()`` until it returns something and return that; a signal to us
        first returns the signal's number instead. ``sleep``: pause between looks
        (0 when ``look`` itself waits on the store)."""
        while True:
            if self._signals:
                sig = self._signals.pop(0)
                self._drain_wakeup()
                self.note(f"got {signame(sig)}: leaving the job")
                return sig
            err = self._host_error()
            if err:
                raise RendezvousError(err)
            got = look()
            if got:
                return got
            if sleep:
                # the wakeup socket: a signal cuts the pause short
                self.sel.select(sleep)
                self._drain_wakeup()

    def _attempt(self, rnd: Round):
        c, m = self.c, self.member
        host, port = rnd.store.rsplit(":", 1)
        self._run_id, self._hang_report = rnd.run_id, None

        def env_for(lr):
            return worker_env(c, rank=rnd.rank_base + lr, local_rank=lr,
                              world_size=rnd.world_size, node_rank=rnd.node_rank,
                              nnodes=rnd.nnodes, master_addr=host, master_port=int(port),
                              store_addr=rnd.store, token=rnd.token, run_id=rnd.run_id,
                              restart_count=rnd.restart_count)

        def on_failure(w: Worker):
            record = {"rank": w.rank, "local_rank": w.local_rank,
                      "node_rank": rnd.node_rank, "pid": w.proc.pid,
                      "what": describe_exit(w.rc), "code": shell_code(w.rc),
                      "excerpt": traceback_excerpt(w.tail)}
            try:
                m.report_failure(rnd.number, record)
            except StoreError:
                pass
            # before stopping the others: they write their part
            self._hang_report = self.collect_hang_report(host, int(port), rnd.token)

        def watch():
            try:
                end = m.poll_end(rnd.number)
            except StoreError as e:
                self._lost = e
                return f"lost the rendezvous store ({e})"
            if end is None:
                return self._host_error()
            if end["reason"] == "final":
                return "the job ended"
            return f"round {rnd.number} ended: {self._why(end)}"

        clients = []

        def recover(w: Worker) -> bool:
            return self._inproc and self._replace(rnd, w, host, int(port), clients)

        self.group = self.start_group(env_for, lambda lr: rnd.rank_base + lr)
        self._spare_env = None
        if self._inproc and self._spares:
            self._spare_env = lambda n: dict(env_for(0), DEEPSEEK_ELASTIC_SPARE=(
                f"{rnd.node_rank}/{n}"))
            self._spare_count = 0
            for _ in range(self._spares):
                self._new_spare()
        try:
            res = self.run_attempt(self.group, on_failure=on_failure, watch=watch,
                                   watch_interval=0.1, recover=recover)
        finally:
            for client in clients:
                client.close()
            self.note_removed(self.end_attempt(self.group, rnd.run_id))
            self.group = None
        return res

    def _replace(self, rnd: Round, w: Worker, host: str, port: int, clients) -> bool:
        """In-process recovery of ``w``'s death: spend a restart, open the next
        generation, start a replacement with its rank (the survivors re-form the
        group with it). False (no restart left, no store): the ordinary path."""
        c = self.c
        what = describe_exit(w.rc)
        try:
            n = self.member.spend_restart(c.max_restarts)
            if n is None:
                self.note(f"rank {w.rank} failed ({what}) and no restart is left for "
                          "in-process recovery")
                return False
            if not clients:
                clients.append(StoreClient(host, port, rnd.token, timeout=10.0,
                                           connect_timeout=10.0))
            spare = self.group.spares[0] if self.group.spares else None
            # no spare free: the survivors go on without it, down to MIN
            drop = spare is None and inprocess.reserve_drop(
                clients[0], rnd.world_size, 1, self._min_workers)
            why = {"rank": w.rank, "pid": w.proc.pid, "what": what, "restart": n}
            gen = open_generation(clients[0], dict(why, drop=[w.rank]) if drop else why)
        except StoreError as e:
            self.note(f"in-process recovery of rank {w.rank} impossible: {e}")
            return False
        if drop:
            self.note(f"rank {w.rank} (local rank {w.local_rank}, pid {w.proc.pid}) failed: "
                      f"{what}; in-process recovery, restart {n} of --max-restarts "
                      f"{c.max_restarts}: generation {gen}, the others go on without it")
            self.group.workers.remove(w)       # gone for good, not a failure
            self.group.replaced.append(w)
            return True
        self.note(f"rank {w.rank} (local rank {w.local_rank}, pid {w.proc.pid}) failed: "
                  f"{what}; in-process recovery, restart {n} of --max-restarts "
                  f"{c.max_restarts}: generation {gen}, replacing it"
                  + (f" with spare pid {spare.proc.pid}" if spare else ""))
        if w.tail:
            self.out.block(traceback_excerpt(w.tail), indent="      ")
        if spare is None:
            self.group.respawn(w)
            return True
        try:
            clients[0].set(f"{inprocess.KEY}spare/{spare.spare_id}", json.dumps(
                {"rank": w.rank, "local_rank": w.local_rank}))
        except StoreError as e:
            self.note(f"in-process recovery of rank {w.rank} impossible: {e}")
            return False
        self.group.promote(spare, w)
        self._new_spare()
        return True

    def _new_spare(self):
        """Start one more hot spare for this round (it waits for a rank)."""
        n = self._spare_count
        self._spare_count += 1
        env = self._spare_env(n)
        spare = self.group.start_spare(env)
        spare.spare_id = env["DEEPSEEK_ELASTIC_SPARE"]

    @staticmethod
    def _why(end: dict) -> str:
        f = end.get("failure") or {}
        if "rank" in f:
            return (f"{end['reason']}: rank {f['rank']} (node {f['node_rank']}, local rank "
                    f"{f['local_rank']}, pid {f['pid']}): {f['what']}")
        if f.get("node"):
            return f"{end['reason']}: node {f['node']}: {f['what']}"
        return f"{end['reason']}" + (f": {f['what']}" if f.get("what") else "")

    def _host_error(self) -> str | None:
        if self.rdzv is not None and self.rdzv.error is not None:
            return f"the rendezvous host failed ({self.rdzv.error!r})"
        return None

    # ------------------------------------------------------------------ endings
    def _leave(self, sig: int) -> int:
        """A signal ends this agent's part: leave the job (the host ends it)."""
        code = 128 + sig
        try:
            if self.rdzv is not None:
                self.rdzv.finish(code, f"the agent hosting the store got {signame(sig)}")
            else:
                self.member.leave()
        except StoreError:
            pass
        return code

    def _job_end(self, end: JobEnd) -> int:
        failures = [a for a in end.attempts if a.get("counts")]
        if end.code != 0 or failures:
            self.note(f"summary of {len(end.attempts)} ended attempt(s):")
            for n, a in enumerate(end.attempts, 1):
                self.note(f"  attempt {n} (round {a['round']}, {a['nnodes']} node(s), "
                          f"world size {a['world_size']}): {self._why(a)}")
                excerpt = (a.get("failure") or {}).get("excerpt")
                if excerpt:
                    self.out.block(excerpt, indent="      ")
        if end.code != 0:
            self.note(f"{end.message}; exiting with code {end.code}")
        elif end.restarts:
            self.note(f"the job completed after {end.restarts} restart(s)")
        return end.code

    def _shutdown(self, code: int, left: bool):
        if self._lost is not None:          # nobody to tell
            self.member.close()
            self._close_clients()
            return
        try:
            if not left or self.rdzv is not None:
                self.member.ack()
            if self.rdzv is not None:
                if not self.rdzv.done:
                    self.rdzv.finish(code or 1, "the agent hosting the store stopped")
                # keep the store up until every node has read how the job ended
                if not self.rdzv.wait_acks(min(self.c.timeout, self.c.grace + 10.0)):
                    self.note("not every node confirmed the end of the job; closing "
                              "the store")
        except StoreError:
            pass
        self.member.close()
        if self.rdzv is not None:
            self.rdzv.close()
        self._close_clients()
