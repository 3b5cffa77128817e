"""The ``cpu`` backend: shared memory on one host, ZeroMQ TCP across hosts.

``make_cpu_backend`` decides the transport for one group: if every member runs on this
host (same host id, published through the store) and POSIX shared memory works, the
group gets a :class:`ShmTransport`; when it spans hosts and some host runs several of
its ranks, a :class:`HierTransport` (shared memory inside each host, ZeroMQ between
hosts: backends/hier.py); otherwise (one rank per host) a :class:`ZmqTransport`.
``DEEPSEEK_CPU_TRANSPORT=shm|zmq`` forces one (tests use ``zmq`` to play two hosts on
127.0.0.1; ``zmq`` is also the flat, non-hierarchical mesh across hosts); ``DEEPSEEK_HOST_ID`` overrides the host id. The ZeroMQ transport picks the
address it advertises and listens on through :mod:`deepseek.collectives.netaddr`
(``DEEPSEEK_ZMQ_HOST``, ``DEEPSEEK_SOCKET_IFNAME``, the route to ``MASTER_ADDR``;
``DEEPSEEK_ZMQ_BIND``) and authenticates every message with the job's token.

Shared-memory bootstrap: group rank 0 creates the segment and publishes its name, the
others attach, everybody passes one barrier through the segment itself and then rank 0
unlinks the name -- from here on a crash cannot leave anything behind in /dev/shm.
"""
import re
import socket

from ... import env as envvars
from .. import shm as _shm
from .._context import OpContext
from ..errors import CollectiveError
from .shm import ShmTransport, _round_up, segment_size


def host_id():
    """What identifies this host for "can we share memory" (hostname + boot id)."""
    forced = envvars.get("DEEPSEEK_HOST_ID")
    if forced:
        return forced
    boot = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}"


def _safe(job_id):
    return (re.sub(r"[^A-Za-z0-9]", "", str(job_id)) or "job")[:16]


def make_cpu_backend(rank, size, store, prefix, job_id, timeout, group_name, ranks):
    want = envvars.get("DEEPSEEK_CPU_TRANSPORT")
    if want not in ("auto", "shm", "zmq"):
        raise CollectiveError(f"DEEPSEEK_CPU_TRANSPORT={want!r}: expected auto, shm or zmq")
    store.set(f"{prefix}/host/{rank}", host_id())
    hosts = store.multi_get([f"{prefix}/host/{r}" for r in range(size)], timeout=timeout)
    one_host = len(set(hosts)) == 1
    if want == "shm" and not one_host:
        raise CollectiveError("DEEPSEEK_CPU_TRANSPORT=shm but the group spans hosts")
    if want == "zmq" or not _shm.available() or not one_host and len(set(hosts)) == size:
        from .zmq import ZmqTransport

        return ZmqTransport(rank, size, store, prefix, timeout=timeout)
    if not one_host:
        return _make_hier(rank, size, store, prefix, job_id, timeout, group_name, ranks,
                          [h.decode() if isinstance(h, bytes) else h for h in hosts])
    return _make_shm(rank, size, store, prefix, job_id, timeout, group_name, ranks)


def _make_hier(rank, size, store, prefix, job_id, timeout, group_name, ranks, hosts):
    """Shared memory inside each host, ZeroMQ rails across (backends/hier.py). Every
    rank builds its parts in the same order -- host segment, its rail, the flat mesh --
    and each part waits only for its own members, so the builds cannot deadlock."""
    from .hier import HierTransport, local_index, rail_members
    from .zmq import ZmqTransport

    order = list(dict.fromkeys(hosts))          # host index: order of first appearance
    host_of = [order.index(h) for h in hosts]
    me = host_of[rank]
    mine = [g for g in range(size) if host_of[g] == me]
    counts = {host_of.count(h) for h in range(len(order))}
    n_rails = counts.pop() if len(counts) == 1 else 1  # rails need equal hosts
    j = local_index(host_of, rank)
    parts = []
    try:
        local = _make_shm(mine.index(rank), len(mine), store, f"{prefix}/h{me}", job_id,
                          timeout, f"{group_name}/host{me}", [ranks[g] for g in mine])
        parts.append(local)
        rail = None
        if j < n_rails:
            members = rail_members(host_of, j)
            rail = ZmqTransport(members.index(rank), len(members), store,
                                f"{prefix}/rail{j}", timeout=timeout)
            parts.append(rail)
        flat = ZmqTransport(rank, size, store, prefix, timeout=timeout)
        parts.append(flat)
    except BaseException:
        for p in parts:
            p.close()
        raise
    return HierTransport(rank, size, group_name, ranks, host_of, local, rail, n_rails,
                         flat, envvars.get("DEEPSEEK_HIER_SPLIT_BYTES"))


def _make_shm(rank, size, store, prefix, job_id, timeout, group_name, ranks):
    chunk = _round_up(max(envvars.get("DEEPSEEK_SHM_CHUNK"), 4096), 4096)
    p2p = _round_up(max(envvars.get("DEEPSEEK_SHM_P2P_BYTES"), 64), 64)
    nbytes = segment_size(size, chunk, p2p)
    seg = None
    try:
        if rank == 0:
            seg = _shm.Segment.create(_safe(job_id), "g", nbytes)
            store.set(f"{prefix}/shm", seg.name)
        else:
            name = store.get(f"{prefix}/shm", timeout=timeout).decode()
            seg = _shm.Segment.attach(name, nbytes)
        t = ShmTransport(rank, size, seg, chunk, p2p)
        t.bootstrap = (store, prefix, _safe(job_id))  # for symmetric allocations
        t.start()
        ctx = OpContext("init(shared memory attach)", 0, timeout, group_name, rank, ranks)
        t.barrier(ctx)
        t.probe_cma(ctx)  # every rank's pid and address are published now
    finally:
        if rank == 0 and seg is not None:
            seg.unlink()  # everyone attached (or we are failing): drop the name now
    return t
