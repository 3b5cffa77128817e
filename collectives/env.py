"""Bootstrap discovery: who started this process, which rank it is, where the store is.

``detect(environ=None) -> JobInfo`` is a pure function of the environment. It knows, in
this order of precedence:

=================  ==========================================================  =========
``launcher``       recognised by                                               store
=================  ==========================================================  =========
``deepseek-run``   ``DEEPSEEK_STORE_ADDR`` (+ RANK, WORLD_SIZE, ...)           launcher
``torchrun``       RANK/WORLD_SIZE/MASTER_* and ``TORCHELASTIC_RUN_ID``        rank 0 on
                                                                               MASTER_PORT+1
``env``            RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by hand      rank 0 on
                                                                               MASTER_PORT
``openmpi``        ``OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE``         rank 0 *
``intelmpi``       ``PMI_RANK/PMI_SIZE`` + ``I_MPI_*`` (``MPI_LOCALRANKID``)   rank 0 *
``mpich``          ``PMI_RANK/PMI_SIZE``, ``MPI_LOCALRANKID/MPI_LOCALNRANKS``  rank 0 *
                   (also ``PMIX_RANK``, ``PMI_LOCAL_RANK/SIZE``, ``PALS_*``)
``slurm``          ``srun``: ``SLURM_PROCID`` with ``SLURM_STEP_ID``;          rank 0 on
                   ``SLURM_STEP_NUM_TASKS``/``SLURM_NTASKS``, ``SLURM_LOCALID``,  derived
                   ``SLURM_NODEID``, ``SLURM_STEP_TASKS_PER_NODE``, first host   port
                   of ``SLURM_STEP_NODELIST``/``SLURM_JOB_NODELIST``
``single``         nothing of the above: world size 1, no network              in memory
=================  ==========================================================  =========

A SLURM *batch* script (``sbatch``) has ``SLURM_PROCID=0`` and ``SLURM_NTASKS=N`` but
runs one process; it is only taken as a job step when ``SLURM_STEP_ID`` is set and is
not the batch step.

How ranks agree on a store when no ``deepseek-run`` hosts one (``connect_store``):

* rank 0 hosts a :class:`~deepseek.collectives.store.StoreServer` in a thread of its own
  process; every other rank connects to it, retrying until the timeout.
* under MPI (``*`` above), when ``mpi4py`` is importable and neither MASTER_ADDR nor
  MASTER_PORT is set, rank 0 binds a free port and broadcasts ``(host, port, token)``
  over ``MPI_COMM_WORLD``: no port can collide and the token is random.
* otherwise the address is ``MASTER_ADDR`` (SLURM: first node of the step; MPI on one
  host: 127.0.0.1) and the port is ``MASTER_PORT``, else ``DEEPSEEK_STORE_PORT``, else
  ``derive_port(job id)`` in [15000, 30000) (below Linux's ephemeral range), from
  ``SLURM_JOB_ID.SLURM_STEP_ID``, Open MPI's job id / PMIx namespace, or (MPICH on one
  host) the shared parent process id.
* the token is ``DEEPSEEK_TOKEN`` when set (export the same secret to every rank);
  otherwise it is derived from the job's public facts (job id, address, port, uid).
  A derived token keeps concurrent jobs apart; it does not keep an attacker who can
  read the job id out. Set ``DEEPSEEK_TOKEN`` on shared networks.

``rendezvous(store, rank, world_size, timeout, tag="init", payload=b"") -> list[bytes]``
registers this rank and waits for all; a missing peer makes it raise
:class:`RendezvousTimeout` naming how many ranks arrived and which are missing. It
returns every rank's ``payload`` (e.g. its hostname), in rank order.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass, field

from .. import env as envvars
from .store import (ENV_STORE_ADDR, ENV_TOKEN, LocalStore, StoreClient, StoreError,
                    StoreServer, StoreTimeout, parse_address)

__all__ = [
    "JobInfo", "detect", "connect_store", "rendezvous", "RendezvousTimeout",
    "parse_slurm_nodelist", "parse_tasks_per_node", "derive_port", "derive_token",
    "worker_env_names",
]

ENV_LAUNCHER = "DEEPSEEK_LAUNCHER"          # "deepseek-run" in launched workers
ENV_RUN_ID = "DEEPSEEK_RUN_ID"              # the job's id (shared by every node)
ENV_NNODES = "DEEPSEEK_NNODES"
ENV_RDZV_TIMEOUT = "DEEPSEEK_RDZV_TIMEOUT"  # deepseek-run --timeout, in seconds
ENV_STORE_PORT = "DEEPSEEK_STORE_PORT"      # override the store port (non-deepseek-run)

MPI_LAUNCHERS = ("openmpi", "mpich", "intelmpi")
_PORT_BASE, _PORT_SPAN = 15000, 15000


def worker_env_names() -> list[str]:
    """The variables deepseek-run sets for each worker (documentation and tests)."""
    return ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
            "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", ENV_STORE_ADDR, ENV_TOKEN,
            ENV_LAUNCHER, ENV_RUN_ID, ENV_NNODES, ENV_RDZV_TIMEOUT]


@dataclass(frozen=True)
class JobInfo:
    """Where this process sits in the job.  ``store_addr``/``token`` are what
    ``connect_store`` uses; ``host_store`` says this process must host the store."""

    launcher: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    store_addr: str | None = None       # "host:port"; None when nobody hosts one yet
    token: str | None = None
    token_derived: bool = False         # True: not a secret (see module docstring)
    job_id: str | None = None
    rdzv_timeout: float | None = None
    host_store: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_mpi(self) -> bool:
        return self.launcher in MPI_LAUNCHERS


# --------------------------------------------------------------------------- helpers

def _int(env, *names, default=None):
    """The first of ``names`` that is set, as an integer (launcher variables such as
    RANK; the DEEPSEEK_* ones go through deepseek.env)."""
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                raise envvars.EnvError(n, v, "an integer") from None
    return default


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist: ``"node[01-03,07],gpu1"`` -> node01 node02 node03 node07
    gpu1.  Zero padding is kept; several bracket groups (``a[1-2]-b[3-4]``) multiply."""
    hosts: list[str] = []
    # Split on commas outside brackets.
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    for part in parts:
        expansions = [""]
        for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if not literal and not group:
                continue
            options = [""]
            if group:
                options = []
                for rng in group.split(","):
                    if "-" in rng:
                        lo, hi = rng.split("-", 1)
                        width = len(lo)
                        options += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
                    else:
                        options.append(rng)
            expansions = [e + literal + o for e in expansions for o in options]
        hosts += expansions
    return hosts


def parse_tasks_per_node(spec: str) -> list[int]:
    """SLURM's ``"2(x3),1"`` -> ``[2, 2, 2, 1]``."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ValueError(f"cannot parse SLURM tasks-per-node {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def derive_port(job_id: str) -> int:
    """A port every rank computes alike from the job id, in [15000, 30000)."""
    h = int.from_bytes(hashlib.sha256(f"deepseek-port:{job_id}".encode()).digest()[:4], "big")
    return _PORT_BASE + h % _PORT_SPAN


def derive_token(*facts) -> str:
    """A token from public facts: separates jobs, is no secret (see module docstring)."""
    text = "\0".join(str(f) for f in facts)
    return hashlib.sha256(f"deepseek-token:{os.getuid()}:{text}".encode()).hexdigest()[:32]


def _mpi_job_id(env, launcher: str, single_host: bool) -> str | None:
    for name in ("OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE",
                 "PMI_KVSNAME", "I_MPI_JOB_ID", "PALS_APID", "SLURM_JOB_ID"):
        if env.get(name):
            step = env.get("SLURM_STEP_ID", "") if name == "SLURM_JOB_ID" else ""
            return f"{name}={env[name]}.{step}"
    if single_host:
        # MPICH's Hydra exports no job id; on one host every rank is a child of the
        # same hydra_pmi_proxy, so the parent pid identifies the job.
        return f"ppid={os.getppid()}"
    return None


# --------------------------------------------------------------------------- detect

def detect(environ=None) -> JobInfo:
    """Work out this process's place in the job from ``environ`` (default os.environ)."""
    env = os.environ if environ is None else environ
    token = envvars.get(ENV_TOKEN, env)
    rdzv_timeout = envvars.get(ENV_RDZV_TIMEOUT, env)

    # deepseek-run: everything is spelled out, including the store.
    store_addr = envvars.get(ENV_STORE_ADDR, env)
    if store_addr:
        try:
            parse_address(store_addr)       # validate early
        except ValueError:
            raise envvars.EnvError(ENV_STORE_ADDR, store_addr, "host:port") from None
        ws = _int(env, "WORLD_SIZE", default=1)
        lws = _int(env, "LOCAL_WORLD_SIZE", default=ws)
        nnodes = envvars.get(ENV_NNODES, env)
        return JobInfo(
            launcher=envvars.get(ENV_LAUNCHER, env) or "deepseek-run",
            rank=_int(env, "RANK", default=0), world_size=ws,
            local_rank=_int(env, "LOCAL_RANK", default=0), local_world_size=lws,
            node_rank=_int(env, "NODE_RANK", "GROUP_RANK", default=0),
            num_nodes=nnodes if nnodes is not None else max(1, ws // max(1, lws)),
            master_addr=env.get("MASTER_ADDR"), master_port=_int(env, "MASTER_PORT"),
            store_addr=store_addr, token=token,
            job_id=envvars.get(ENV_RUN_ID, env), rdzv_timeout=rdzv_timeout)

    # torchrun, or the same variables set by hand (torch's env:// convention).
    if env.get("RANK") not in (None, "") and env.get("WORLD_SIZE") not in (None, ""):
        rank, ws = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        lws = _int(env, "LOCAL_WORLD_SIZE", default=ws)
        torchrun = bool(env.get("TORCHELASTIC_RUN_ID"))
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if ws == lws else None)
        mport = _int(env, "MASTER_PORT")
        # torchrun's own store already listens on MASTER_PORT: take the next one.
        port = envvars.get(ENV_STORE_PORT, env)
        if port is None and mport is not None:
            port = mport + (1 if torchrun else 0)
        if ws > 1 and (addr is None or port is None):
            raise ValueError("RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are "
                             "not: set both so the ranks can find each other")
        job_id = env.get("TORCHELASTIC_RUN_ID") or None
        derived = token is None
        if derived:
            token = derive_token(job_id, addr, port)
        return JobInfo(
            launcher="torchrun" if torchrun else "env", rank=rank, world_size=ws,
            local_rank=_int(env, "LOCAL_RANK", default=rank if ws == lws else 0),
            local_world_size=lws,
            node_rank=_int(env, "NODE_RANK", "GROUP_RANK", default=rank // max(1, lws)),
            num_nodes=max(1, ws // max(1, lws)), master_addr=addr, master_port=mport,
            store_addr=f"{addr}:{port}" if ws > 1 else None, token=token,
            token_derived=derived, job_id=job_id, rdzv_timeout=rdzv_timeout,
            host_store=ws > 1 and rank == 0)

    mpi = _detect_mpi(env)
    if mpi is not None:
        return _finish_cluster(env, mpi, token, rdzv_timeout)
    slurm = _detect_slurm(env)
    if slurm is not None:
        return _finish_cluster(env, slurm, token, rdzv_timeout)
    return JobInfo(launcher="single", token=token, rdzv_timeout=rdzv_timeout)


def _detect_mpi(env):
    if env.get("OMPI_COMM_WORLD_RANK"):
        rank = _int(env, "OMPI_COMM_WORLD_RANK")
        ws = _int(env, "OMPI_COMM_WORLD_SIZE", default=1)
        lr = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0)
        lws = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=ws)
        kind = "openmpi"
    elif env.get("PMI_RANK") or env.get("PMIX_RANK") or env.get("PALS_RANKID"):
        rank = _int(env, "PMI_RANK", "PMIX_RANK", "PALS_RANKID")
        ws = _int(env, "PMI_SIZE", "PMIX_SIZE", "PALS_SIZE", "SLURM_STEP_NUM_TASKS",
                  "SLURM_NTASKS", default=1)
        lr = _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID",
                  "SLURM_LOCALID", default=None)
        lws = _int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE", default=None)
        if lr is None:
            lr, lws = (rank, ws) if ws == 1 else (0, 1)
        if lws is None:
            lws = ws if lr == rank else 1
        kind = "intelmpi" if any(k.startswith("I_MPI_") for k in env) else "mpich"
    else:
        return None
    return dict(launcher=kind, rank=rank, world_size=ws, local_rank=lr,
                local_world_size=lws,
                # MPI does not export a node index; with the usual block placement it is
                # rank // ranks-per-node.
                node_rank=_int(env, "SLURM_NODEID", default=rank // max(1, lws)),
                num_nodes=max(1, -(-ws // max(1, lws))))


def _detect_slurm(env):
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if not env.get("SLURM_PROCID") or step in (None, "", "batch", "extern", "4294967294"):
        return None
    rank = _int(env, "SLURM_PROCID")
    ws = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS", default=1)
    node = _int(env, "SLURM_NODEID", default=0)
    nnodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES",
                  default=1)
    lws = None
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if spec:
        try:
            per_node = parse_tasks_per_node(spec)
            lws = per_node[node] if node < len(per_node) else per_node[-1]
        except ValueError:
            lws = None
    if lws is None:
        lws = max(1, ws // max(1, nnodes))
    hosts = None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") \
        or env.get("SLURM_NODELIST")
    if nodelist:
        hosts = parse_slurm_nodelist(nodelist)
    return dict(launcher="slurm", rank=rank, world_size=ws,
                local_rank=_int(env, "SLURM_LOCALID", default=0), local_world_size=lws,
                node_rank=node, num_nodes=nnodes,
                first_host=hosts[0] if hosts else None,
                job_id=f"{env.get('SLURM_JOB_ID', '')}.{step}")


def _finish_cluster(env, d, token, rdzv_timeout) -> JobInfo:
    ws = d["world_size"]
    single_host = d["local_world_size"] == ws
    addr = env.get("MASTER_ADDR") or d.get("first_host") or ("127.0.0.1" if single_host
                                                             else None)
    job_id = d.get("job_id") or _mpi_job_id(env, d["launcher"], single_host)
    port = _int(env, "MASTER_PORT")
    if port is None:
        port = envvars.get(ENV_STORE_PORT, env)
    if port is None and job_id:
        port = derive_port(job_id)
    derived = token is None
    if derived:
        token = derive_token(job_id, addr, port)
    # Under MPI with no explicit address the MPI broadcast in connect_store decides.
    explicit = bool(env.get("MASTER_ADDR") or env.get("MASTER_PORT"))
    store_addr = f"{addr}:{port}" if (ws > 1 and addr and port) else None
    return JobInfo(
        launcher=d["launcher"], rank=d["rank"], world_size=ws, local_rank=d["local_rank"],
        local_world_size=d["local_world_size"], node_rank=d["node_rank"],
        num_nodes=d["num_nodes"], master_addr=addr, master_port=port,
        store_addr=store_addr, token=token, token_derived=derived, job_id=job_id,
        rdzv_timeout=rdzv_timeout, host_store=ws > 1 and d["rank"] == 0,
        extra={"explicit_master": explicit})


# --------------------------------------------------------------------------- stores

def _bind_host(addr: str) -> str:
    if addr in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1" if addr != "::1" else "::1"
    return "0.0.0.0"


def _host_and_connect(host: str, port: int, token: str, timeout: float,
                      what: str) -> StoreClient:
    try:
        server = StoreServer(_bind_host(host), port, token).start()
    except OSError as e:
        raise StoreError(f"rank 0 cannot host the store on port {port} ({what}): {e}; "
                         "set MASTER_PORT (or DEEPSEEK_STORE_PORT) to a free port") from None
    local = "127.0.0.1" if server.host in ("0.0.0.0", "127.0.0.1") else server.host
    client = StoreClient(local, server.port, token, timeout=timeout)
    client._owned.append(server)      # closing the client stops the server
    return client


_MPI_MSG_BYTES = 2048


def _parse_mpi_msg(raw: bytes):
    """(host, port, token) from rank 0's broadcast; StoreError when it is not one."""
    import json

    try:
        msg = json.loads(raw.rstrip(b"\0").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        msg = None
    if isinstance(msg, dict) and isinstance(msg.get("error"), str):
        raise StoreError(msg["error"])
    if not (isinstance(msg, dict) and isinstance(msg.get("host"), str)
            and type(msg.get("port")) is int and 0 < msg["port"] < 65536
            and isinstance(msg.get("token"), str)):
        raise StoreError("the store address broadcast by rank 0 over MPI is malformed: "
                         f"expected JSON {{host, port, token}}, got {raw[:80]!r}")
    return msg["host"], msg["port"], msg["token"]


def _mpi_exchange(info: JobInfo, timeout: float):
    """Rank 0 hosts on a free port and broadcasts (host, port, token) over MPI.

    The message is JSON in a fixed-size byte buffer (``Ibcast``, polled up to
    ``timeout``): mpi4py's lowercase ``bcast`` would unpickle what rank 0 sent. Setting
    up MPI here also installs the abort-on-uncaught-exception hook (mpi_abort).
    """
    from mpi4py import MPI  # imported only here: MPI_Init must not happen at import

    import json

    from . import mpi_abort
    mpi_abort.install()
    comm = MPI.COMM_WORLD
    server = None
    buf = bytearray(_MPI_MSG_BYTES)
    if comm.Get_rank() == 0:
        multi = info.local_world_size != info.world_size
        bind = "0.0.0.0" if multi else "127.0.0.1"
        try:
            server = StoreServer(bind, 0, os.urandom(16).hex()).start()
            host = socket.gethostname() if multi else "127.0.0.1"
            msg = {"host": host, "port": server.port, "token": server._token.decode()}
        except OSError as e:
            msg = {"error": f"rank 0 cannot host the store: {e}"[:1000]}
        raw = json.dumps(msg).encode()
        buf[:len(raw)] = raw
    req = comm.Ibcast([buf, MPI.BYTE], root=0)
    end = time.monotonic() + timeout
    while not req.Test():
        if time.monotonic() > end:
            raise StoreError(f"rank {comm.Get_rank()}: no store address from rank 0 over "
                             f"MPI within {timeout:g}s")
        time.sleep(1e-3)
    host, port, token = _parse_mpi_msg(bytes(buf))
    client = StoreClient("127.0.0.1" if server else host, port, token, timeout=timeout)
    if server is not None:
        client._owned.append(server)
    return client


def connect_store(info: JobInfo | None = None, timeout: float | None = None,
                  connect_timeout: float | None = None):
    """Connect to (and on rank 0, host when needed) the job's store.

    ``timeout`` is the client's default for every wait (default: the rendezvous
    timeout, else 300 s); ``connect_timeout`` how long to keep trying to reach a store
    another rank hosts (default ``timeout``; init_process_group passes the rendezvous
    timeout). Returns a ``StoreClient`` -- closing it also stops a store this process
    hosts, so call ``close()`` only after every rank is done with the store (e.g. after
    a final barrier) -- or a ``LocalStore`` for a world of one process.
    """
    info = detect() if info is None else info
    timeout = float(timeout if timeout is not None else (info.rdzv_timeout or 300.0))
    connect_timeout = timeout if connect_timeout is None else float(connect_timeout)
    if info.launcher == "deepseek-run" or (info.store_addr and not info.host_store
                                           and not info.is_mpi):
        if not info.store_addr:
            return LocalStore(timeout)
        if not info.token:
            raise StoreError(f"{ENV_STORE_ADDR} is set but {ENV_TOKEN} is not")
        host, port = parse_address(info.store_addr)
        return StoreClient(host, port, info.token, timeout=timeout,
                           connect_timeout=connect_timeout)
    if info.world_size <= 1:
        return LocalStore(timeout)
    if info.is_mpi and not info.extra.get("explicit_master"):
        try:
            import mpi4py  # noqa: F401  (presence check; MPI starts in _mpi_exchange)
        except ImportError:
            pass
        else:
            return _mpi_exchange(info, timeout)
    if not info.store_addr:
        raise StoreError(
            f"cannot agree on a store under {info.launcher} across hosts: set "
            "MASTER_ADDR and MASTER_PORT for every rank (or install mpi4py)")
    host, port = parse_address(info.store_addr)
    if info.host_store:
        return _host_and_connect(host, port, info.token, timeout, info.launcher)
    return StoreClient(host, port, info.token, timeout=timeout,
                       connect_timeout=connect_timeout)


# --------------------------------------------------------------------------- rendezvous

class RendezvousTimeout(StoreTimeout):
    """Not every rank arrived; ``.arrived`` and ``.missing_ranks`` say who."""

    def __init__(self, message, arrived, missing_ranks, keys=()):
        super().__init__(message, keys)
        self.arrived = arrived
        self.missing_ranks = list(missing_ranks)


_rounds: dict[tuple, int] = {}


def _ranges(ranks) -> str:
    ranks = sorted(ranks)
    out, i = [], 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ", ".join(out)


def rendezvous(store, rank: int, world_size: int, timeout: float | None = None,
               tag: str = "init", payload: bytes | str = b"") -> list[bytes]:
    """Register ``rank`` and wait until all ``world_size`` ranks have; returns every
    rank's payload in rank order.

    Calling it again with the same tag starts a new round (every rank keeps the same
    count, because every rank makes the same calls), so a process group can be torn
    down and built again on one store.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    timeout = float(store.timeout if timeout is None else timeout)
    # Keyed by the store's address, not the object: ranks reconnecting make new client
    # objects but must keep counting rounds alike.
    # (The rank is part of the key so ranks that are threads of one process count apart.)
    counter = (getattr(store, "address", None) or id(store), tag, rank)
    rnd = _rounds.get(counter, 0)
    _rounds[counter] = rnd + 1
    prefix = f"deepseek/rdzv/{tag}/{rnd}"
    if isinstance(payload, str):
        payload = payload.encode()
    store.set(f"{prefix}/{rank}", payload)
    keys = [f"{prefix}/{r}" for r in range(world_size)]
    start = time.monotonic()
    try:
        return store.multi_get(keys, timeout=timeout)
    except StoreTimeout as e:
        missing = sorted(int(k.rsplit("/", 1)[1]) for k in e.keys
                         if k.startswith(prefix + "/"))
        arrived = world_size - len(missing)
        raise RendezvousTimeout(
            f"rendezvous {tag!r} timed out after {time.monotonic() - start:.1f}s on rank "
            f"{rank}: {arrived} of {world_size} ranks arrived; missing ranks: "
            f"{_ranges(missing)}", arrived, missing, e.keys) from None
