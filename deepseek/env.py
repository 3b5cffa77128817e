"""The one registry of deepseek's environment variables.

Every ``DEEPSEEK_*`` variable that any part of deepseek reads is declared here once:
its name, type, default, bounds and one line of documentation. Code reads them with
:func:`get`, which returns the typed value (the default when the variable is unset or
empty) or raises :class:`EnvError` -- a ``ValueError`` that names the variable, the
form that was expected and the value that came::

    DEEPSEEK_COLLECTIVES_TIMEOUT='abc': expected a positive number of seconds

``python -m deepseek.env`` prints the table (name, type, default, current value, what
it does); ``deepseek-run --help`` points here. A test greps the source tree so that
no variable is read without being declared.

Types: ``float``, ``int``, ``bool`` (1/0, true/false, yes/no, on/off), ``str``,
``choice`` (one of a fixed set, case-insensitive) and ``bytes`` (a size: ``65536``,
``64K``, ``1.5MiB``, ``2G``; K/M/G are powers of 1024).

This module is stdlib-only and imports nothing else of deepseek: the native kernels,
the collectives and the launcher all read their settings through it, and
``import deepseek.launcher.cli`` must stay fast.
"""
from __future__ import annotations

import math
import os
import sys

__all__ = ["EnvError", "Var", "VARIABLES", "get", "parse", "declared", "table"]


class EnvError(ValueError):
    """A variable's value does not have the declared form. ``.name``, ``.value`` and
    ``.expected`` say which variable, what came and what was expected."""

    def __init__(self, name: str, value: str, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name}={value!r}: expected {expected}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SUFFIXES = (("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30),
             ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30))


class Var:
    """The declaration of one variable.

    ``kind`` is one of float, int, bool, str, choice, bytes. ``lo``/``hi`` bound
    numbers (inclusive; ``lo_open`` makes ``lo`` exclusive, i.e. "positive" is
    ``lo=0, lo_open=True``); floats must be finite. ``choices`` lists the canonical
    values of a ``choice`` and ``aliases`` maps other spellings onto them
    (``((spelling, canonical), ...)``). ``unit`` is for messages ("seconds");
    ``set_by`` names who sets it when users are not meant to (documentation);
    ``secret`` keeps the value out of the table.
    """

    # a plain class, not a dataclass: importing dataclasses costs more than this module
    __slots__ = ("name", "kind", "default", "doc", "unit", "lo", "hi", "lo_open",
                 "choices", "aliases", "set_by", "secret")

    def __init__(self, name, kind, default, doc, unit="", lo=None, hi=None,
                 lo_open=False, choices=(), aliases=(), set_by="", secret=False):
        if kind not in ("float", "int", "bool", "str", "choice", "bytes"):
            raise ValueError(f"{name}: unknown kind {kind!r}")
        self.name, self.kind, self.default, self.doc = name, kind, default, doc
        self.unit, self.lo, self.hi, self.lo_open = unit, lo, hi, lo_open
        self.choices, self.aliases = tuple(choices), tuple(aliases)
        self.set_by, self.secret = set_by, secret

    def __repr__(self):
        return f"Var({self.name!r}, {self.kind!r}, default={self.default!r})"

    def expected(self) -> str:
        """The expected form, in words (what the error message says)."""
        if self.kind == "bool":
            return "a boolean: 1/0, true/false, yes/no or on/off"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "str":
            return "a string"
        what = {"float": f"number of {self.unit}" if self.unit else "number",
                "int": f"integer number of {self.unit}" if self.unit else "integer",
                "bytes": "size in bytes"}[self.kind]
        if self.lo == 0 and self.lo_open and self.hi is None:
            text = f"a positive {what}"
        else:
            text = f"a {what}" if what[0] not in "aeiou" else f"an {what}"
            if self.lo is not None and self.hi is not None:
                text += f" in {_num(self.lo)}..{_num(self.hi)}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
            elif self.hi is not None:
                text += f" <= {_num(self.hi)}"
        if self.kind == "bytes":
            text += " (e.g. 65536, 64K, 1MiB)"
        return text

    def parse(self, text: str):
        """``text`` converted to this variable's type; EnvError when it does not fit."""
        raw = text
        text = text.strip()
        if self.kind == "str":
            return text
        low = text.lower()
        if self.kind == "bool":
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise EnvError(self.name, raw, self.expected())
        if self.kind == "choice":
            low = dict(self.aliases).get(low, low)
            if low in self.choices:
                return low
            raise EnvError(self.name, raw, self.expected())
        try:
            if self.kind == "int":
                value = int(text)
            elif self.kind == "float":
                value = float(text)
            else:
                value = _parse_bytes(text)
        except (ValueError, OverflowError):
            raise EnvError(self.name, raw, self.expected()) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise EnvError(self.name, raw, self.expected())
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise EnvError(self.name, raw, self.expected())
        if self.hi is not None and value > self.hi:
            raise EnvError(self.name, raw, self.expected())
        return value


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _parse_bytes(text: str) -> int:
    v, mult = text.upper(), 1
    for suffix, m in _SUFFIXES:
        if v.endswith(suffix):
            v, mult = v[:-len(suffix)], m
            break
    number = float(v)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number * mult)


def _declare(*variables: Var) -> dict:
    out = {}
    for v in variables:
        assert v.name.startswith("DEEPSEEK_") and v.name not in out, v.name
        out[v.name] = v
    return out


_LAUNCHER = "deepseek-run (and spawn_ranks)"

#: Every DEEPSEEK_* variable, by name.
VARIABLES: dict[str, Var] = _declare(
    # ---- the job: set by deepseek-run for its workers (spawn_ranks sets them too)
    Var("DEEPSEEK_STORE_ADDR", "str", None,
        "host:port of the job's rendezvous store", set_by=_LAUNCHER),
    Var("DEEPSEEK_TOKEN", "str", None,
        "the job's secret; store clients prove it (export the same one on every node)",
        secret=True),
    Var("DEEPSEEK_LAUNCHER", "str", None,
        "who started this worker (deepseek-run, spawn_ranks)", set_by=_LAUNCHER),
    Var("DEEPSEEK_RUN_ID", "str", None,
        "the job's id, shared by every node; shared-memory names carry it",
        set_by=_LAUNCHER),
    Var("DEEPSEEK_NNODES", "int", None, "number of nodes in the job", lo=1,
        set_by="deepseek-run"),
    Var("DEEPSEEK_RDZV_TIMEOUT", "float", None,
        "how long init_process_group waits for every rank to arrive (deepseek-run "
        "--timeout); unset: the collectives timeout", unit="seconds", lo=0, lo_open=True,
        set_by="deepseek-run"),
    Var("DEEPSEEK_RESTART_COUNT", "int", 0,
        "how many times the job restarted before this attempt (deepseek-run "
        "--max-restarts; torchrun's TORCHELASTIC_RESTART_COUNT)", lo=0,
        set_by="deepseek-run"),
    Var("DEEPSEEK_ELASTIC_IN_PROCESS", "bool", False,
        "in-process recovery (deepseek.elastic.run): deepseek-run replaces a dead "
        "worker within --max-restarts instead of restarting the world, and the "
        "survivors re-form the group and roll back to the last commit"),
    Var("DEEPSEEK_ELASTIC_SPARES", "int", 0,
        "in-process recovery: hot spares per node, started with the workers; a spare "
        "runs the script up to elastic.run and takes a dead worker's rank at once "
        "(no interpreter start-up in the recovery)", lo=0),
    Var("DEEPSEEK_ELASTIC_SPARE", "str", None,
        "marks a hot spare of in-process recovery (its id)", set_by="deepseek-run"),
    Var("DEEPSEEK_ELASTIC_MIN_WORKERS", "int", 0,
        "in-process recovery: when a worker dies and no hot spare is free, the "
        "survivors go on without it while the world stays at least this large (0: "
        "never shrink; the dead worker is replaced)", lo=0),
    Var("DEEPSEEK_STORE_PORT", "int", None,
        "port of the store rank 0 hosts when no deepseek-run does (default: "
        "MASTER_PORT, else derived from the job id)", lo=1, hi=65535),
    # ---- collectives
    Var("DEEPSEEK_COLLECTIVES_TIMEOUT", "float", 300.0,
        "default timeout of every blocking collective call", unit="seconds", lo=0,
        lo_open=True),
    Var("DEEPSEEK_BACKEND", "choice", "auto",
        "backend of init_process_group(backend='auto'): auto picks mpi under an MPI "
        "launcher, else cpu", choices=("auto", "cpu", "mpi", "nccl"),
        aliases=(("gloo", "cpu"),)),
    Var("DEEPSEEK_DETERMINISTIC", "bool", False,
        "every reduction adds the ranks' contributions in rank order (bitwise "
        "reproducible)"),
    Var("DEEPSEEK_DEBUG_COLLECTIVES", "bool", False,
        "check through the store that all ranks call the same collective with the same "
        "shape and dtype"),
    Var("DEEPSEEK_HANG_POLL", "float", 1.0,
        "how often each rank's watchdog checks for a hang-report request; 0 turns the "
        "watchdog off", unit="seconds", lo=0),
    Var("DEEPSEEK_CPU_TRANSPORT", "choice", "auto",
        "transport of the cpu backend: shared memory on one host, ZeroMQ across hosts",
        choices=("auto", "shm", "zmq")),
    Var("DEEPSEEK_HOST_ID", "str", None,
        "what identifies this host for 'can we share memory' (default: hostname and "
        "boot id)"),
    Var("DEEPSEEK_ZMQ_HOST", "str", None,
        "address (IP or host name) peers use to reach this rank's ZeroMQ socket "
        "(default: the interface that routes to the rendezvous host)"),
    Var("DEEPSEEK_SOCKET_IFNAME", "str", None,
        "network interface whose address the ZeroMQ transport advertises (like "
        "NCCL_SOCKET_IFNAME)"),
    Var("DEEPSEEK_ZMQ_BIND", "str", None,
        "where the ZeroMQ transport listens: an IP, an interface name, or * / 0.0.0.0 "
        "for every interface (default: the advertised address)"),
    Var("DEEPSEEK_ZMQ_CONNECT_TIMEOUT", "float", 60.0,
        "how long the ZeroMQ transport waits for each peer's handshake (at most the "
        "group timeout)", unit="seconds", lo=0, lo_open=True),
    Var("DEEPSEEK_ZMQ_HEARTBEAT", "float", 2.0,
        "seconds between ZeroMQ pings on idle connections; a peer silent for 5 of them "
        "counts as lost (a partition, a dead host); 0 turns pings off", unit="seconds",
        lo=0),
    Var("DEEPSEEK_HIER_SPLIT_BYTES", "bytes", 64 << 10,
        "hierarchical allreduce (groups spanning hosts) splits messages from this size "
        "over every local rank's link (smaller: through one leader per host)", lo=0),
    Var("DEEPSEEK_ZMQ_BULK_BYTES", "bytes", 256 << 10,
        "allreduce across hosts moves per-peer segments from this size over raw TCP "
        "streams (zero-copy, pipelined) instead of ZeroMQ messages; 0: never", lo=0),
    Var("DEEPSEEK_TCP_CHUNK_BYTES", "bytes", 1 << 20,
        "pipeline chunk of the raw TCP streams: reduced and sent on while the next one "
        "arrives", lo=4096),
    Var("DEEPSEEK_TCP_STREAMS", "int", 2,
        "raw TCP streams per pair of ranks; the pipeline chunks take turns on them (one "
        "stream may not fill a fast link)", lo=1, hi=64),
    Var("DEEPSEEK_SHM_CHUNK", "bytes", 1 << 20,
        "shared-memory slot size (rounded up to 4 KiB, at least 4 KiB)", lo=0,
        lo_open=True),
    Var("DEEPSEEK_SHM_P2P_BYTES", "bytes", 1 << 20,
        "shared-memory send/recv slot size (rounded up to 64 bytes, at least 64)", lo=0,
        lo_open=True),
    Var("DEEPSEEK_SHM_RS_BYTES", "bytes", 64 << 10,
        "allreduce switches to reduce-scatter + allgather from this size", lo=0),
    Var("DEEPSEEK_SHM_SYM_BYTES", "bytes", 32 << 10,
        "allreduce of a symmetric buffer is zero-copy from this size", lo=0),
    Var("DEEPSEEK_SHM_CMA", "choice", "auto",
        "single-copy allgather (and send/recv, see DEEPSEEK_SHM_P2P_CMA_BYTES) through "
        "process_vm_readv where the kernel allows it; off turns it off",
        choices=("auto", "off"),
        aliases=tuple((s, "auto") for s in _TRUE) + tuple((s, "off") for s in _FALSE)),
    Var("DEEPSEEK_SHM_CMA_BYTES", "bytes", 8 << 10,
        "single-copy allgather from this many bytes per rank", lo=0),
    Var("DEEPSEEK_SHM_P2P_CMA_BYTES", "bytes", 0,
        "send/recv messages from this size (and above two p2p slots) are read once, "
        "straight from the sender's array (process_vm_readv); 0: never -- the default, "
        "since the two-copy slot pipeline, where both ranks copy at once, measured "
        "faster with a core per rank", lo=0),
    Var("DEEPSEEK_SHM_SPIN_US", "float", None,
        "spin this long before sleeping in the kernel (default adaptive: 2000 when "
        "ranks <= cores, else 20)", unit="microseconds", lo=0),
    Var("DEEPSEEK_SHM_YIELD_US", "float", 0.0,
        "after spinning, keep checking with sched_yield this much longer",
        unit="microseconds", lo=0),
    Var("DEEPSEEK_NO_FUTEX", "bool", False,
        "do not sleep on futexes (shared-memory waits poll instead)"),
    Var("DEEPSEEK_NATIVE_REDUCE_MIN", "int", 16384,
        "reductions of fewer elements use numpy (the C call costs more)",
        unit="elements", lo=0),
    # ---- native kernels and the engine
    Var("DEEPSEEK_NATIVE", "bool", True,
        "use the C kernels (and the C Function.apply fast path, read at import) when "
        "built; 0 forces the numpy / Python fallback"),
    Var("DEEPSEEK_MALLOC_TUNING", "bool", True,
        "raise glibc's mmap/trim thresholds once per process (0 leaves malloc alone)"),
    # ---- the JIT (deepseek.jit)
    Var("DEEPSEEK_JIT_CACHE_DIR", "str", None,
        "where compiled JIT kernels (.so, keyed by source hash) are kept (default: "
        "$XDG_CACHE_HOME/deepseek/jit, else ~/.cache/deepseek/jit)"),
    Var("DEEPSEEK_JIT_BACKEND", "choice", "auto",
        "fused elementwise kernels of deepseek.jit: c (system compiler, $CC or cc), "
        "numexpr, numpy, or auto (the first that works, in that order)",
        choices=("auto", "c", "numexpr", "numpy")),
    Var("DEEPSEEK_JIT_MAX_GRAPHS", "int", 8,
        "how many input signatures a compiled callable keeps graphs for (least "
        "recently used is dropped beyond)", lo=1),
    Var("DEEPSEEK_JIT_MAX_PLANS", "int", 64,
        "how many batch sizes a dynamic-batch JIT graph keeps inference plans for "
        "(least recently used is dropped beyond)", lo=1),
    Var("DEEPSEEK_TIMELINE", "str", None,
        "write a whole-job timeline: each rank records compute, communication and data "
        "loading to PATH.rank<N>.json, rank 0 merges them into the Chrome trace PATH "
        "(deepseek.profiler.timeline; python -m deepseek.profiler.merge PATH)"),
    Var("DEEPSEEK_STRAGGLER_REPORT", "int", None,
        "with DEEPSEEK_TIMELINE: every N optimizer steps rank 0 prints which rank arrived "
        "last at the collectives of those steps, how often and by how much "
        "(deepseek.profiler.straggler; deepseek-run --straggler-report N)", lo=1),
    Var("DEEPSEEK_TRAINER_RESULT_DIR", "str", None,
        "where rank 0 of workers a Trainer launched leaves each fit's result",
        set_by="deepseek.Trainer"),
    # ---- the model hub (deepseek.hub)
    Var("DEEPSEEK_FSDP_RELEASE", "choice", "free",
        "how ZeRO-3 gives back a unit's gathered parameters: madvise FREE (the kernel "
        "takes the pages when it needs them) or DONTNEED (resident size drops at once)",
        choices=("free", "dontneed")),
    Var("DEEPSEEK_HOME", "str", None,
        "deepseek's cache root; the hub keeps downloads in $DEEPSEEK_HOME/hub (default: "
        "~/.cache/deepseek/hub)"),
    Var("DEEPSEEK_HUB_INDEX", "str", None,
        "the model index deepseek.hub resolves names through: a URL or a local path "
        "(default: the index shipped with the package)"),
    Var("DEEPSEEK_HUB_OFFLINE", "bool", False,
        "1: deepseek.hub uses only its cache and says which files are missing"),
    Var("DEEPSEEK_HUB_TIMEOUT", "float", 30.0,
        "seconds a hub download waits on the network before retrying", unit="seconds",
        lo=0, lo_open=True),
    Var("DEEPSEEK_HUB_RETRIES", "int", 5,
        "how many times a dropped hub download is resumed before giving up", lo=0),
)


def declared(name: str) -> Var:
    """The declaration of ``name``; KeyError naming this module when it has none."""
    try:
        return VARIABLES[name]
    except KeyError:
        raise KeyError(f"{name} is not declared in deepseek/env.py (every DEEPSEEK_* "
                       "variable must be)") from None


def parse(name: str, text: str):
    """``text`` as a value of variable ``name`` (EnvError when it does not fit)."""
    return declared(name).parse(text)


def get(name: str, environ=None):
    """The typed value of ``name`` in ``environ`` (default ``os.environ``): its
    default when unset or empty; :class:`EnvError` when the value has the wrong form."""
    var = declared(name)
    env = os.environ if environ is None else environ
    text = env.get(name)
    if text is None or not text.strip():
        return var.default
    return var.parse(text)


def _shown(var: Var, value) -> str:
    if value is None:
        return "-"
    if var.kind == "bool":
        return "1" if value else "0"
    if var.kind == "bytes" and value >= 1024 and value % 1024 == 0:
        for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value % m == 0:
                return f"{value // m}{unit}"
    return _num(value) if isinstance(value, float) else str(value)


def table(environ=None) -> str:
    """The registry as a text table; the current value of each variable that is set
    (``(set)`` for secrets, ``INVALID`` for a value :func:`get` would refuse, with the
    reason under the table)."""
    env = os.environ if environ is None else environ
    rows = [("NAME", "TYPE", "DEFAULT", "CURRENT", "WHAT IT DOES")]
    errors = []
    for var in VARIABLES.values():
        kind = var.kind if var.kind != "choice" else "|".join(var.choices)
        current = ""
        if env.get(var.name) not in (None, ""):
            try:
                value = get(var.name, env)
                current = "(set)" if var.secret else _shown(var, value)
            except EnvError as e:
                current = "INVALID"
                errors.append(str(e))
        doc = var.doc
        if var.unit and var.kind in ("float", "int"):
            doc += f" ({var.unit})"
        if var.set_by:
            doc += f" [set by {var.set_by}]"
        rows.append((var.name, kind, _shown(var, var.default), current, doc))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
             for r in rows]
    if errors:
        lines += ["", "invalid values:"] + [f"  {e}" for e in errors]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m deepseek.env``: print the table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        sys.stderr.write("usage: python -m deepseek.env   (prints every DEEPSEEK_* "
                         "variable: type, default, current value, what it does)\n")
        return 2
    try:
        print(table(), flush=True)
    except BrokenPipeError:             # | head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
