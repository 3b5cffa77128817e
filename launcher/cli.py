"""Command line of ``deepseek-run``: parsing, validation, and the job's configuration.

Everything that can be refused is refused here, with one line on stderr and exit code
2, before any process or socket exists (except the store port on node 0, which is
bound here precisely so that a busy port is refused up front): each option is checked
by its argparse ``type`` (the error names the option, what was expected and what
came), and every ``DEEPSEEK_*`` variable the workers would inherit is checked against
its declaration in :mod:`deepseek.env`, so a bad one is refused once, here, rather
than by every worker.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from .. import env as envvars

PROG = "deepseek-run"

DESCRIPTION = """\
Start one worker process per device for a distributed deepseek job, watch them, and
clean up. Works like torchrun: every worker gets RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR and MASTER_PORT, and
deepseek.distributed.init_process_group() needs no arguments."""

EPILOG = """\
examples:
  deepseek-run --nproc 4 train.py --lr 3e-4
  deepseek-run --nproc auto -m mypkg.train --epochs 2
  deepseek-run --nproc 2 --log-dir logs/ --timeout 60 train.py
  # two nodes (run one line on each; the same secret on both):
  export DEEPSEEK_TOKEN=$(python -c "import secrets; print(secrets.token_hex(16))")
  deepseek-run --nnodes 2 --node-rank 0 --master-addr node0 --master-port 29500 --nproc 8 train.py
  deepseek-run --nnodes 2 --node-rank 1 --master-addr node0 --master-port 29500 --nproc 8 train.py
  # elastic: restart the world on failure (3 times at most), 1 to 4 nodes:
  deepseek-run --nnodes 1:4 --nproc 8 --max-restarts 3 --rdzv-endpoint node0:29500 \
      --rdzv-id job42 train.py
  deepseek-run --standalone --nproc 4 --max-restarts 3 train.py

worker environment:
  RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK (=GROUP_RANK),
  MASTER_ADDR, MASTER_PORT    as torchrun sets them; the store listens on MASTER_PORT
  DEEPSEEK_STORE_ADDR         host:port of the job's rendezvous store (node 0 hosts it)
  DEEPSEEK_TOKEN              the job's secret; clients prove it to the store
  DEEPSEEK_LAUNCHER, DEEPSEEK_RUN_ID, DEEPSEEK_NNODES, DEEPSEEK_RDZV_TIMEOUT
  DEEPSEEK_RESTART_COUNT (= TORCHELASTIC_RESTART_COUNT)    restarts before this attempt
  GROUP_WORLD_SIZE, TORCHELASTIC_MAX_RESTARTS               as torchrun sets them
  OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS   see --omp-threads
  PYTHONUNBUFFERED=1          so lines show up as they are printed
  CUDA_VISIBLE_DEVICES is left as it is: every worker sees all of the node's devices
  and uses device number LOCAL_RANK among them (init_process_group does that).

output and failures:
  Each line a worker prints is shown whole, once, prefixed [rankN]: (stdout to stdout,
  stderr to stderr). When a worker exits non-zero or is killed, the others get SIGTERM
  (SIGKILL after --grace seconds); deepseek-run names the rank that failed first, its
  exit code or signal and the end of its stderr, and exits with that code (128+N for
  signal N). SIGINT/SIGTERM/SIGHUP to deepseek-run are forwarded to every worker; a
  second Ctrl-C kills them. No worker or process they started outlives deepseek-run,
  and neither does a shared-memory segment of the job in /dev/shm.

multi-node:
  Node 0 hosts the store on --master-port; the other nodes connect to it within
  --timeout. The token must reach every node: export the same DEEPSEEK_TOKEN on each
  (deepseek-run refuses --nnodes > 1 without it). On one node a fresh random token is
  made for every run.

elastic (restart the world, torchrun's contract):
  With --max-restarts N, --nnodes MIN:MAX, --rdzv-endpoint or --standalone, the job
  runs in rendezvous rounds (deepseek.elastic). A round completes when MAX nodes have
  joined, or MIN have and --rdzv-conf last_call_timeout seconds (default 30) have
  passed since; its nodes get node ranks, the world new RANK/WORLD_SIZE, a fresh store
  and token (a worker of an old round cannot reach the new one) and a fresh run id
  (shared-memory names). When a worker fails, every worker of the job is stopped and
  a new round starts, at most N times; then deepseek-run exits with the failing
  worker's code and a summary of every attempt. An agent that starts late joins the
  next round (the running one is restarted to take it in, if below MAX); one whose
  heartbeat stops for heartbeat_timeout seconds (default 15) is dropped, and the job
  goes on if MIN remain. The agent that can listen on --rdzv-endpoint hosts the store
  (on one machine: the first one started); the others connect to it. The same
  DEEPSEEK_TOKEN must be exported on every node.
  --rdzv-conf keys: join_timeout (default --timeout: how long a round waits for MIN
  nodes), last_call_timeout, heartbeat_timeout.

environment variables:
  python -m deepseek.env lists every DEEPSEEK_* variable deepseek reads (type,
  default, current value, what it does); a bad value is refused here, naming it."""


class UsageError(Exception):
    """A bad command line: reported in one line, exit code 2."""


@dataclass
class Config:
    nproc: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    log_dir: str | None
    prefix: bool
    timeout: float
    omp_threads: int | None
    omp_default: bool
    bind: str
    grace: float
    command: list[str]
    target: str                      # script path or "-m module", for messages
    token: str | None = None
    env_token: bool = False
    hang_poll: float = 1.0           # DEEPSEEK_HANG_POLL (seconds between watchdog polls)
    # elastic (see the epilog); elastic=False: a job of fixed size, run once
    elastic: bool = False
    min_nodes: int = 1
    max_nodes: int = 1
    max_restarts: int = 0
    rdzv_endpoint: tuple[str, int] | None = None   # None: standalone (ephemeral port)
    rdzv_id: str = "default"
    join_timeout: float = 300.0
    last_call: float = 30.0
    heartbeat_timeout: float = 15.0
    notes: list[str] = field(default_factory=list)
    timeline: str | None = None      # --timeline: absolute path of the merged trace
    straggler_report: int | None = None  # --straggler-report N: report every N steps


# Options that take a value: needed to find where deepseek-run's own options end.
_VALUED = {"--nproc", "--nproc-per-node", "--nproc_per_node", "--nnodes", "--node-rank",
           "--node_rank", "--master-addr", "--master_addr", "--master-port",
           "--master_port", "--log-dir", "--timeout", "--omp-threads", "--bind", "--grace",
           "--max-restarts", "--max_restarts", "--rdzv-endpoint", "--rdzv_endpoint",
           "--rdzv-id", "--rdzv_id", "--rdzv-backend", "--rdzv_backend", "--rdzv-conf",
           "--rdzv_conf", "--timeline", "--straggler-report"}


def _split(argv: list[str]):
    """Split argv into (launcher options, module or None, script or None, script args).

    Everything after the script (or after ``-m module``) belongs to the script, even
    things that look like our options.
    """
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return argv[:i], None, (argv[i + 1] if i + 1 < len(argv) else None), argv[i + 2:]
        if a == "-m":
            if i + 1 >= len(argv):
                raise UsageError("-m needs a module name")
            return argv[:i], argv[i + 1], None, argv[i + 2:]
        if a.startswith("-m") and len(a) > 2 and not a.startswith("--"):
            return argv[:i], a[2:], None, argv[i + 1:]
        if a.startswith("-"):
            i += 2 if (a in _VALUED) else 1
            continue
        return argv[:i], None, a, argv[i + 1:]
    return argv, None, None, []


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _option(kind, lo=None, hi=None, lo_open=False, unit="", auto=False):
    """An argparse ``type`` that checks a number the way deepseek.env checks a variable
    (finite, within bounds); argparse prefixes its message with the option's name.
    ``auto``: the word "auto" is accepted too (and returned as is)."""
    var = envvars.Var("option", kind, None, "", unit=unit, lo=lo, hi=hi, lo_open=lo_open)

    def convert(text):
        if auto and text.strip().lower() == "auto":
            return "auto"
        try:
            return var.parse(text)
        except envvars.EnvError:
            expected = var.expected() + (" or 'auto'" if auto else "")
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    convert.__name__ = kind     # what argparse would name in its own messages
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                usage="%(prog)s [options] script.py [args...]\n"
                      "       %(prog)s [options] -m module [args...]",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", "--nproc-per-node", "--nproc_per_node", default="1",
                   type=_option("int", lo=1, auto=True), metavar="N|auto",
                   help="workers on this node (default 1); auto: one per GPU CuPy sees, "
                        "else one per CPU core")
    p.add_argument("--nnodes", type=_nnodes, default=(1, 1), metavar="N|MIN:MAX",
                   help="number of nodes (default 1); MIN:MAX: elastic, between MIN and "
                        "MAX nodes")
    p.add_argument("--node-rank", "--node_rank", type=_option("int", lo=0), default=0,
                   metavar="R",
                   help="this node's index, 0..nnodes-1 (default 0)")
    p.add_argument("--master-addr", "--master_addr", default="127.0.0.1", metavar="A",
                   help="address of node 0, where the store runs (default 127.0.0.1)")
    p.add_argument("--master-port", "--master_port", type=_option("int", lo=0, hi=65535),
                   default=0, metavar="P",
                   help="port of the store on node 0; 0 or absent on one node: a free "
                        "port (required with --nnodes > 1)")
    p.add_argument("--log-dir", metavar="D",
                   help="also write each rank's output to D/rank<N>.log")
    p.add_argument("--no-prefix", action="store_true",
                   help="do not prefix output lines with [rankN]:")
    p.add_argument("--timeout", type=_option("float", lo=0, lo_open=True, unit="seconds"),
                   default=300.0, metavar="S",
                   help="rendezvous timeout in seconds: how long ranks (and nodes) wait "
                        "for each other, init_process_group in the workers included "
                        "(default 300)")
    p.add_argument("--omp-threads", type=_option("int", lo=1), metavar="K",
                   help="OMP/OpenBLAS/MKL threads per worker (default: cores // nproc, "
                        "at least 1, unless OMP_NUM_THREADS is already set)")
    p.add_argument("--bind", choices=("none", "core"), default="none",
                   help="core: pin each worker to its own share of this node's cores")
    p.add_argument("--grace", type=_option("float", lo=0, unit="seconds"), default=5.0,
                   metavar="S",
                   help="seconds between SIGTERM and SIGKILL when stopping workers "
                        "(default 5)")
    p.add_argument("--timeline", metavar="PATH",
                   help="record every rank's compute, communication and data-loading "
                        "events and write them merged into one Chrome/Perfetto trace at "
                        "PATH, with a straggler report at the end")
    p.add_argument("--straggler-report", type=_option("int", lo=1), metavar="N",
                   help="every N optimizer steps, print which rank arrived last at the "
                        "collectives of those steps, how often and by how much (p50/p99), "
                        "flagging a rank consistently > 20%% slower; and the same over "
                        "the whole job at the end (records a timeline: --timeline PATH "
                        "keeps it, else it goes to a temporary directory, removed after)")
    e = p.add_argument_group("elastic (torchrun's flags)")
    e.add_argument("--max-restarts", "--max_restarts", type=_option("int", lo=0),
                   default=0, metavar="N",
                   help="restart the world at most N times after a failure (default 0)")
    e.add_argument("--rdzv-endpoint", "--rdzv_endpoint", type=_endpoint, metavar="HOST:PORT",
                   help="where the rendezvous store is (the agent that can listen there "
                        "hosts it)")
    e.add_argument("--rdzv-id", "--rdzv_id", default="default", metavar="ID",
                   help="the job's id: agents of one job give the same one")
    e.add_argument("--rdzv-backend", "--rdzv_backend", default="c10d",
                   choices=("c10d", "static"),
                   help="accepted for torchrun compatibility: deepseek's store is used")
    e.add_argument("--rdzv-conf", "--rdzv_conf", type=_rdzv_conf, default={},
                   metavar="K=V,...",
                   help="join_timeout, last_call_timeout, heartbeat_timeout (seconds)")
    e.add_argument("--standalone", action="store_true",
                   help="one node, elastic, store on a free local port")
    return p


def _nnodes(text):
    """``N`` or ``MIN:MAX`` -> (min, max)."""
    one = _option("int", lo=1)
    parts = text.split(":")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}")
    lo, hi = (one(parts[0]), one(parts[-1]))
    if lo > hi:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX, got {text!r}")
    return lo, hi


def _endpoint(text):
    """``HOST:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), number


_RDZV_KEYS = {"join_timeout": "join_timeout", "timeout": "join_timeout",
              "last_call_timeout": "last_call", "heartbeat_timeout": "heartbeat_timeout"}


def _rdzv_conf(text):
    """``k=v,k=v`` -> {field: seconds} (the keys in _RDZV_KEYS)."""
    seconds = _option("float", lo=0, unit="seconds")
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in _RDZV_KEYS:
            raise argparse.ArgumentTypeError(
                f"expected K=V,... with K one of {', '.join(sorted(_RDZV_KEYS))}, "
                f"got {item!r}")
        out[_RDZV_KEYS[key.strip()]] = seconds(value)
    return out


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return list(range(os.cpu_count() or 1))


def count_gpus() -> int:
    """GPUs CuPy sees; 0 without CuPy. Avoids importing CuPy when no driver is there."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if visible is None and not os.path.exists("/dev/nvidiactl") \
            and not os.path.exists("/dev/dxg"):
        return 0
    try:
        import cupy  # noqa: PLC0415  (slow import: only when a driver is present)
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def parse_args(argv: list[str]) -> Config:
    own, module, script, script_args = _split(argv)
    parser = build_parser()
    ns = parser.parse_args(own)

    # each value was checked by its option's type; what is left spans options
    nproc = (count_gpus() or len(available_cores())) if ns.nproc == "auto" else ns.nproc
    min_nodes, max_nodes = ns.nnodes
    ns.nnodes = max_nodes
    elastic = (ns.standalone or ns.rdzv_endpoint is not None or min_nodes != max_nodes
               or ns.max_restarts > 0)
    endpoint = ns.rdzv_endpoint
    if ns.standalone and (endpoint is not None or max_nodes > 1):
        raise UsageError("--standalone is one node on a local port: it takes neither "
                         "--rdzv-endpoint nor --nnodes > 1")
    if elastic and endpoint is None and max_nodes > 1:
        if ns.master_port == 0:
            raise UsageError(f"--nnodes {min_nodes}:{max_nodes} needs --rdzv-endpoint "
                             "HOST:PORT (where the agents meet)")
        endpoint = (ns.master_addr, ns.master_port)
    if not elastic and ns.node_rank >= ns.nnodes:
        raise UsageError(f"--node-rank must be in 0..{ns.nnodes - 1} for --nnodes "
                         f"{ns.nnodes} (got {ns.node_rank})")
    if not elastic and ns.nnodes > 1 and ns.master_port == 0:
        raise UsageError("--master-port is required with --nnodes > 1 "
                         "(every node must know where node 0's store is)")
    if endpoint is not None and endpoint[1] == 0:
        raise UsageError("--rdzv-endpoint needs a port other than 0 (every agent must "
                         "know where the store is)")
    check_environment()

    if module is not None:
        if not module or module.startswith("-"):
            raise UsageError(f"-m needs a module name (got {module!r})")
        command = [sys.executable, "-m", module, *script_args]
        target = f"-m {module}"
    elif script is not None:
        if not os.path.isfile(script):
            raise UsageError(f"script {script!r} not found")
        command = [sys.executable, script, *script_args]
        target = script
    else:
        raise UsageError("no script given: deepseek-run [options] script.py [args] "
                         "(or -m module)")

    token = envvars.get("DEEPSEEK_TOKEN")
    if (ns.nnodes > 1 or (endpoint is not None and not ns.standalone)) and not token:
        what = "--nnodes > 1" if ns.nnodes > 1 else "--rdzv-endpoint"
        raise UsageError(f"{what} needs the job's secret in DEEPSEEK_TOKEN on every "
                         "node, e.g. export DEEPSEEK_TOKEN=$(python -c \"import secrets; "
                         "print(secrets.token_hex(16))\")")

    omp, omp_default = ns.omp_threads, False
    if omp is None and "OMP_NUM_THREADS" not in os.environ:
        omp, omp_default = max(1, len(available_cores()) // nproc), True

    if ns.log_dir:
        try:
            os.makedirs(ns.log_dir, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create --log-dir {ns.log_dir!r}: {e.strerror}") from None

    return Config(nproc=nproc, nnodes=ns.nnodes, node_rank=ns.node_rank,
                  master_addr=ns.master_addr, master_port=ns.master_port,
                  log_dir=ns.log_dir, prefix=not ns.no_prefix, timeout=ns.timeout,
                  omp_threads=omp, omp_default=omp_default, bind=ns.bind, grace=ns.grace,
                  command=command, target=target, token=token, env_token=bool(token),
                  hang_poll=envvars.get("DEEPSEEK_HANG_POLL"), elastic=elastic,
                  min_nodes=min_nodes, max_nodes=max_nodes, max_restarts=ns.max_restarts,
                  rdzv_endpoint=endpoint, rdzv_id=ns.rdzv_id,
                  join_timeout=ns.rdzv_conf.get("join_timeout", ns.timeout),
                  last_call=ns.rdzv_conf.get("last_call", 30.0),
                  heartbeat_timeout=ns.rdzv_conf.get("heartbeat_timeout", 15.0),
                  timeline=os.path.abspath(ns.timeline) if ns.timeline else None,
                  straggler_report=ns.straggler_report)


# What deepseek-run sets for every worker (see agent.Agent._worker_env): whatever the
# launcher's own environment says about these does not reach the workers.
_SET_FOR_WORKERS = ("DEEPSEEK_STORE_ADDR", "DEEPSEEK_LAUNCHER", "DEEPSEEK_RUN_ID",
                    "DEEPSEEK_NNODES", "DEEPSEEK_RDZV_TIMEOUT", "DEEPSEEK_RESTART_COUNT")


def check_environment(environ=None):
    """Refuse (UsageError) a ``DEEPSEEK_*`` variable the workers would inherit with a
    value its declaration in deepseek.env does not accept. Undeclared DEEPSEEK_* names
    are let through: a user's own variable may share the prefix."""
    env = os.environ if environ is None else environ
    for name in sorted(env):
        if name in envvars.VARIABLES and name not in _SET_FOR_WORKERS:
            try:
                envvars.get(name, env)
            except envvars.EnvError as e:
                raise UsageError(f"environment variable {e}") from None


def usage_error(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message} (see {PROG} --help)\n")
    sys.stderr.flush()
    return 2


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_args(argv)
    except UsageError as e:
        return usage_error(str(e))
    from .agent import Agent, StartupError
    scratch = _straggler_setup(config)
    try:
        try:
            if config.elastic:
                from .elastic_agent import ElasticAgent
                agent = ElasticAgent(config)
            else:
                agent = Agent(config)
        except StartupError as e:
            return usage_error(str(e))
        code = agent.run()
        if config.timeline and config.node_rank == 0:
            _finish_timeline(config.timeline)
        return code
    finally:
        if scratch is not None:
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)


def _straggler_setup(config):
    """--straggler-report N: the workers get DEEPSEEK_STRAGGLER_REPORT (they inherit
    this process's environment); the report is made from the timeline, so without
    --timeline one goes to a temporary directory (returned, removed at the end)."""
    if not config.straggler_report:
        return None
    # a write, for the workers to inherit (agent.worker_env copies this environment)
    os.environ.update(DEEPSEEK_STRAGGLER_REPORT=str(config.straggler_report))
    if config.timeline:
        return None
    import tempfile
    scratch = tempfile.mkdtemp(prefix="deepseek-straggler-")
    config.timeline = os.path.join(scratch, "timeline.json")
    return scratch


def _finish_timeline(path):
    """Merge the ranks' timeline files once every worker has written its own, and print
    the straggler report unless rank 0 did (it merges when its process group is
    destroyed; a job that never destroys it leaves the merge to us). stdlib only: the
    launcher never loads the engine."""
    from ..collectives import trace
    merged_by_rank0 = os.path.exists(path)
    try:
        summary = trace.merge(path)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"deepseek-run: no timeline written to {path}: {e}\n")
        return
    sys.stderr.write(f"deepseek-run: timeline of {len(summary.get('ranks', []))} ranks "
                     f"written to {path}\n")
    if not merged_by_rank0:  # else rank 0 printed these after its merge
        sys.stderr.write(f"deepseek-run: {trace.format_clock_offsets(summary)}\n")
        if summary.get("stragglers"):
            sys.stderr.write(trace.format_straggler_report(summary["stragglers"]) + "\n")
