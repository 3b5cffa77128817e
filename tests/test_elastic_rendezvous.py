"""deepseek.elastic.rendezvous on a real store (threads of this process, real TCP):
round completion (max, min + last call, join timeout), node ranks, per-round stores
and tokens (an old round's token or store is useless in the new one), round numbers
(an old round's report does not touch the new one), heartbeats, scale up."""
import contextlib
import time

import pytest

from deepseek.collectives.store import (StoreAuthError, StoreClient, StoreError,
                                        StoreServer, parse_address)
from deepseek.elastic.rendezvous import (JobEnd, Member, RendezvousSettings, Round,
                                         RoundHost)

pytestmark = pytest.mark.timeout(60)
TOKEN = "rendezvous-test-token"


class Job:
    """A store, its RoundHost, and members made on demand; everything closed at the end."""

    def __init__(self, **settings):
        # closes in reverse order: each member or host before the clients it uses, the
        # server last
        self._opened = contextlib.ExitStack()
        self.server = self._closed_at_end(StoreServer("127.0.0.1", 0, TOKEN).start())
        self.host = self._closed_at_end(RoundHost(
            self.client(), "t", RendezvousSettings(**settings), TOKEN, bind="127.0.0.1",
            public_host="127.0.0.1").start())

    def _closed_at_end(self, thing):
        """``thing``, to be closed by :meth:`close`."""
        return self._opened.enter_context(contextlib.closing(thing))

    def client(self):
        return self._closed_at_end(StoreClient("127.0.0.1", self.server.port, TOKEN,
                                               timeout=10, connect_timeout=5))

    def member(self, name, nproc=1, hb=0.05):
        return self._closed_at_end(Member(self.client(), self.client(), "t", name, nproc,
                                          hb_interval=hb))

    def close(self):
        self._opened.close()


@pytest.fixture
def job_factory():
    jobs = []

    def make(**settings):
        jobs.append(Job(**settings))
        return jobs[-1]

    yield make
    for j in jobs:
        j.close()


def until(look, timeout=10.0):
    """Call look() until it returns something (failing the test at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        got = look()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def join_round(m, timeout=10.0):
    m.join()
    return until(lambda: m.poll_round(timeout=0.05), timeout)


def test_round_completes_at_max_with_ranks_in_join_order(job_factory):
    job = job_factory(min_nodes=1, max_nodes=2, last_call=30)
    a, b = job.member("a", nproc=2), job.member("b", nproc=3)
    a.join()
    b.join()
    ra, rb = (until(lambda m=m: m.poll_round(0.05)) for m in (a, b))
    assert isinstance(ra, Round) and isinstance(rb, Round)
    assert (ra.number, ra.node_rank, ra.rank_base, ra.world_size, ra.nnodes) == (0, 0, 0, 5, 2)
    assert (rb.node_rank, rb.rank_base) == (1, 2)
    assert ra.store == rb.store and ra.token == rb.token and ra.run_id == rb.run_id


def test_last_call_waits_for_more_nodes_once_min_joined(job_factory):
    job = job_factory(min_nodes=1, max_nodes=3, last_call=0.6)
    a, b = job.member("a"), job.member("b")
    t0 = time.monotonic()
    a.join()
    time.sleep(0.2)
    b.join()                            # within the last call: still in round 0
    ra = until(lambda: a.poll_round(0.05))
    took = time.monotonic() - t0
    assert 0.5 <= took < 5, took
    assert ra.nnodes == 2 and until(lambda: b.poll_round(0.05)).node_rank == 1


def test_join_timeout_ends_the_job(job_factory):
    job = job_factory(min_nodes=2, max_nodes=2, join_timeout=0.5)
    a = job.member("a")
    end = join_round(a)
    assert isinstance(end, JobEnd) and end.code == 1
    assert "rendezvous round 0 timed out after 0.5s: 1 of at least 2 node(s) joined" \
        in end.message


def test_each_round_has_its_own_store_and_token(job_factory):
    """A failure restarts the world on a new store with a new token: the old round's
    store is closed and its token is refused by the new one."""
    job = job_factory(min_nodes=1, max_nodes=1, max_restarts=2)
    a = job.member("a")
    r0 = join_round(a)
    old = StoreClient(*parse_address(r0.store), r0.token, timeout=2, connect_timeout=1)
    old.set("deepseek/rdzv/deepseek-pg/0/0", "stale")     # what a worker of round 0 wrote
    assert a.report_failure(0, {"rank": 0, "what": "exit code 3", "code": 3})
    end = until(lambda: a.poll_end(0))
    assert end["reason"] == "failed" and end["next"] == 1
    r1 = join_round(a)
    assert (r1.number, r1.restart_count) == (1, 1)
    assert r1.store != r0.store and r1.token != r0.token and r1.run_id != r0.run_id
    # the new store has none of the old keys
    fresh = StoreClient(*parse_address(r1.store), r1.token, timeout=2, connect_timeout=1)
    assert fresh.missing(["deepseek/rdzv/deepseek-pg/0/0"]) == ["deepseek/rdzv/deepseek-pg/0/0"]
    # a worker of round 0 can neither use its store (closed) nor round 1's (token)
    with pytest.raises(StoreError):
        old.get("deepseek/rdzv/deepseek-pg/0/0", timeout=1)
    with pytest.raises(StoreAuthError):
        StoreClient(*parse_address(r1.store), r0.token, timeout=2, connect_timeout=1)
    old.close()
    fresh.close()


def test_an_old_rounds_report_does_not_end_the_new_round(job_factory):
    job = job_factory(min_nodes=1, max_nodes=1, max_restarts=3)
    a = job.member("a")
    join_round(a)
    a.report_failure(0, {"rank": 0, "what": "exit code 1", "code": 1})
    until(lambda: a.poll_end(0))
    r1 = join_round(a)
    # a second, late report for round 0 (a stale worker's agent): round 1 goes on
    assert not a.report_failure(0, {"rank": 0, "what": "late", "code": 9})
    time.sleep(0.3)
    assert a.poll_end(r1.number) is None and job.host.restarts == 1


def test_restart_budget_ends_the_job_with_the_failure_code(job_factory):
    job = job_factory(min_nodes=1, max_nodes=1, max_restarts=1)
    a = job.member("a")
    for n in range(2):
        r = join_round(a)
        a.report_failure(r.number, {"rank": 0, "what": "exit code 4", "code": 4})
        until(lambda: a.job_end() or a.poll_end(r.number))
    end = until(a.job_end)
    assert end.code == 4 and end.restarts == 1 and len(end.attempts) == 2
    assert "giving up after 1 restart(s) (--max-restarts 1)" in end.message


def test_silent_member_is_lost_and_the_rest_go_on(job_factory):
    job = job_factory(min_nodes=1, max_nodes=2, max_restarts=1, heartbeat_timeout=0.5,
                      last_call=0.5)
    a, b = job.member("a"), job.member("b")
    a.join()
    b.join()
    r0 = until(lambda: a.poll_round(0.05))
    assert r0.nnodes == 2
    t0 = time.monotonic()
    b.close()                            # its heartbeat stops, as if SIGKILLed
    end = until(lambda: a.poll_end(0))
    assert end["reason"] == "node lost" and end["failure"]["node"] == "b"
    assert time.monotonic() - t0 >= 0.4
    r1 = join_round(a)                   # b never comes back: after the last call, min=1
    assert r1.nnodes == 1 and r1.restart_count == 1


def test_late_member_waits_for_the_next_round_and_scales_up(job_factory):
    job = job_factory(min_nodes=1, max_nodes=2, last_call=0.1)
    a = job.member("a")
    r0 = join_round(a)
    assert r0.nnodes == 1
    late = job.member("late")
    late.join()                          # round 0 is complete: it joins round 1
    assert late.target == 1
    end = until(lambda: a.poll_end(0))
    assert end["reason"] == "scale up"
    r1 = join_round(a)
    rl = until(lambda: late.poll_round(0.05))
    assert (r1.number, r1.nnodes, r1.node_rank, rl.node_rank) == (1, 2, 0, 1)
    assert r1.restart_count == 0 and job.host.restarts == 0   # not a failure


def test_every_member_done_ends_the_job_with_success(job_factory):
    job = job_factory(min_nodes=2, max_nodes=2)
    a, b = job.member("a"), job.member("b")
    a.join()
    b.join()
    for m in (a, b):
        until(lambda m=m: m.poll_round(0.05))
    a.report_done(0)
    time.sleep(0.2)
    assert a.job_end() is None           # b is still running
    b.report_done(0)
    end = until(a.job_end)
    assert end.code == 0 and end.attempts == []
    a.ack()
    b.ack()
    assert job.host.wait_acks(2.0)


def test_in_process_recoveries_and_world_restarts_share_one_budget(job_factory):
    """Two restarts: an in-process recovery spends one, a world restart the other;
    the next failure ends the job (and a recovery past the budget is refused)."""
    job = job_factory(min_nodes=1, max_nodes=1, max_restarts=2)
    a = job.member("a")
    join_round(a)
    assert a.spend_restart(2) == 1
    a.report_failure(0, {"rank": 0, "what": "exit code 1", "code": 1})
    assert until(lambda: a.poll_end(0))["reason"] == "failed"
    r1 = join_round(a)
    assert r1.restart_count == 2
    assert a.spend_restart(2) is None            # nothing left: nothing taken
    a.report_failure(1, {"rank": 0, "what": "exit code 4", "code": 4})
    end = until(lambda: a.job_end())
    assert end.code == 4 and end.restarts == 2 and "giving up after 2 restart(s)" in end.message
