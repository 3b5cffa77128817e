"""Shared-memory transport for the ranks of one host (part of the ``cpu`` backend).

Layout of the group's segment (``n`` ranks, slot size ``C``, p2p slot size ``P``)::

    ctrl    n x 1024 B     per rank: step, sleepers, abort, pid, two signature slots
                           (words 4..11, see "Signatures"); private state (own cache
                           line, words 32..); reason text (from byte 512)
    chan    n*n x 64 B     per ordered pair (src, dst): sent, sleepers, acked, sleepers
    in      n x 2 x C      per rank, two halves (double buffering)
    out     2 x C          result area of reduce-scatter + allgather
    p2p     n*n x 2 x (64 + P)   two slots per ordered pair (protocol: shm_p2p.py)

Synchronisation is a per-rank *step* counter (int32, wrap-safe). A collective is a
sequence of *rounds*, each on one chunk of the message and one half of the buffers,
and in a round every rank posts (increments its step) the same number of times, so
all counters advance in lockstep. A rank posts a round's first step only after it has
finished everything of the previous round; hence, once all peers have reached the first
step of round k-1, nobody reads the buffers of round k-2 any more and round k may reuse
that half. While a slow peer still reduces round k, the others already copy in round
k+1: copying and reducing overlap (a two-deep pipeline).

Allreduce of numpy arrays runs in C when the native kernels are in use
(``deepseek._native.shm_allreduce``, native/src/dsn_shm.h): the whole op, all chunks,
with the GIL released, spinning briefly then sleeping on a futex, returning to Python
only to check aborts, dead peers and the deadline when a wait lasts (the
ProcessGroup calls it directly for blocking calls). It runs the protocol below on the
same words, so it interleaves freely with the collectives run here in Python; its
reduce-scatter path reduces this rank's segment block by block into ``out`` and into
``x`` while the block is in L1, so the copy-out moves only the peers' segments.

Symmetric buffers (``ProcessGroup.symmetric_empty``, PyTorch's "symmetric memory"):
arrays that live in a segment every rank of the group maps, one region per rank at the
same offsets. An allreduce of such an array (or of a contiguous piece of it at the same
offset on every rank) skips the slots: after one step each rank reduces its 1/n of the
message straight from every rank's region and writes the result into every region;
a second step tells everybody that their region is final. Each rank then reads and
writes the message once instead of twice. Smaller messages take the slot path, which
has one synchronisation less: measured with 2 ranks, the two cost the same at 16 KiB
(6.5 us), the slot path wins below (3.7 vs 6.2 us at 4 KiB) and the symmetric one above
(8.8 vs 12.1 us at 64 KiB, 40 vs 188 us at 1 MiB); default crossover 32 KiB
(``DEEPSEEK_SHM_SYM_BYTES``).

Allgather of large pieces (``DEEPSEEK_SHM_CMA_BYTES`` per rank, default 8 KiB) copies
once instead of twice where the kernel lets a rank read its peers' memory
(process_vm_readv, "cross-memory attach", as MPICH and Open MPI use it): each rank
publishes where its piece is, and every rank reads the others' straight into its
output. The group probes this once when it starts (``probe_cma``) and uses it only if
it works between every pair of ranks; ``DEEPSEEK_SHM_CMA=0`` turns it off.

Signatures: ranks that call different collectives (one in a barrier while the others
allreduce; a different dtype, size, root or reduce op) would read each other's slots
and return wrong results. So every collective, in Python and in C, publishes its
signature -- kind, reduce op, root, dtype, byte count, and this rank's count of
collectives begun so far (``_P_OPS``; it catches a rank that skipped one, e.g. an
empty op that needs no round) -- in its ctrl block before the first post of each
round, and compares it with the peers' after the first wait of the round: a
difference raises CollectiveMismatchError (``ctx.mismatch_error``, the message the
debug mode gives) before any data is used. A rank compares the peers it waited for
(a broadcast's non-roots: the root); ranks whose part waits for nobody (a broadcast
root, a gather's non-roots) find the difference when their next round begins, which
compares the previous round's signatures of every peer, or through the abort of a
rank that found it. The words sit on the step word's cache line, which the waiting
peer has just read anyway, so the check costs a few loads.

There are two signature slots, one per parity of the round counter, and round r writes
slot r & 1. Why a rank moving on cannot overwrite a signature a slow peer has still to
read: the peer reads my slot of round r after my first post of round r. I can begin
round r+1 once everybody posted the first step of round r -- the slow peer may not
have read my slot yet, but round r+1 writes the other slot. Round r+2 needs everybody's
first post of round r+1, which the slow peer makes only after it finished round r,
reading included. So every op claims a round, the symmetric and single-copy ones too,
though they use no slot: writing a signature without the wait of a round's start
would let a fast rank overwrite the one a slow peer is about to compare (the wait is
already met in lockstep, so it costs nothing). The same argument makes the check at
the start of round r+1 sound: every peer has posted round r then, and none can be past
round r+1, so slot r & 1 still holds round r.

Every reduction adds the ranks' contributions in rank order (reduce_into), in both
algorithms, so the result is bitwise identical whatever the size, the chunking and the
algorithm: ``deterministic`` groups cost nothing here.

Algorithms:
- small messages: *direct* -- each rank copies its chunk in, posts, waits for all,
  reduces all slots itself (1 step per round, lowest latency);
- large messages: reduce-scatter + allgather on shared memory -- each rank reduces
  1/n of the chunk into ``out``, posts, then copies the whole chunk out (2 steps,
  n times less reduce work per rank). Crossover: ``DEEPSEEK_SHM_RS_BYTES``.

Defaults, measured with scripts/bench_allreduce.py-style loops on a 2-core VM with 2
ranks (noisy; re-measure on new hardware): the reduce-scatter path wins from about
32-64 KiB (default crossover 64 KiB); slots of 1 MiB (``DEEPSEEK_SHM_CHUNK``) beat
256 KiB (more rounds, more synchronisation) and 4 MiB (the pipeline falls out of the
caches): about 8.5 vs 6 vs 7 GB/s at 1-4 MiB messages.
"""
import os
import sys
import time
import zlib

import numpy as np

from ... import env as envvars
from .. import _futex
from .. import shm as _shm
from .._context import OpContext
from ..errors import CollectiveError, CollectiveMismatchError, PeerFailureError
from ..reduce_ops import ReduceOp, reduce_into
from .base import Backend
from .shm_p2p import _K, ShmP2P

CTRL_BYTES = 1024
CHAN_BYTES = 64
HDR_BYTES = 64
# int32 word offsets inside a rank's ctrl block: the shared words peers read ...
_STEP, _SLEEP, _ABORT, _PID = 0, 1, 2, 3
# ... and this rank's private state, on a cache line of its own; shared with the C
# allreduce (native/src/dsn_shm.h), which runs on the same words
(_P_N, _P_RANK, _P_IN_OFF, _P_OUT_OFF, _P_SLOT, _P_RS_BYTES, _P_SPIN_MAX, _P_SPIN_CUR,
 _P_ROUND, _P_PREV, _P_HASPREV, _P_PHASE, _P_CHUNK, _P_TARGET, _P_ERRNO,
 _P_OPS, _P_INOP, _P_SIG) = range(32, 50)
_REASON_OFF = 512
# statuses of the C allreduce
NATIVE_DONE, NATIVE_PENDING, NATIVE_ABORT, NATIVE_MISMATCH, NATIVE_CMA_FAILED = 0, 1, 2, 3, 4
NATIVE_SIG_MISMATCH = 5
NATIVE_NOT_ELIGIBLE = -1
# shared ctrl words: the two signature slots (see "Signatures" above; dsn_shm.h), each
# kind | reduce << 4 | root << 8 | dtype id << 16, count of collectives, nbytes low, high
_SIG, _SIG_WORDS = 4, 4
(_K_ALLREDUCE, _K_BROADCAST, _K_REDUCE, _K_ALLGATHER, _K_GATHER, _K_SCATTER,
 _K_REDUCE_SCATTER, _K_ALL_TO_ALL, _K_BARRIER, _K_ALLREDUCE_SYM, _K_ALLGATHER_SYM,
 _K_REDUCE_SCATTER_SYM) = range(1, 13)
_KIND_NAMES = {_K_ALLREDUCE: "allreduce", _K_BROADCAST: "broadcast", _K_REDUCE: "reduce",
               _K_ALLGATHER: "allgather", _K_GATHER: "gather", _K_SCATTER: "scatter",
               _K_REDUCE_SCATTER: "reduce_scatter", _K_ALL_TO_ALL: "all_to_all",
               _K_BARRIER: "barrier",
               _K_ALLREDUCE_SYM: "allreduce (symmetric buffer)",
               _K_ALLGATHER_SYM: "allgather (symmetric buffer)",
               _K_REDUCE_SCATTER_SYM: "reduce_scatter (symmetric buffer)"}
_ROOTED = (_K_BROADCAST, _K_REDUCE, _K_GATHER, _K_SCATTER)
_REDUCING = (_K_ALLREDUCE, _K_REDUCE, _K_REDUCE_SCATTER, _K_ALLREDUCE_SYM,
             _K_REDUCE_SCATTER_SYM)
# reduce ops as the C kernels number them (deepseek.native.REDUCE_OPS)
_RED_CODES = {ReduceOp.SUM: 0, ReduceOp.AVG: 1, ReduceOp.MAX: 2, ReduceOp.MIN: 3,
              ReduceOp.PRODUCT: 4}
_RED_NAMES = {c: op.name for op, c in _RED_CODES.items()}
# Python reads and writes a signature as two int64 words (fewer, cheaper memoryview
# accesses): (word 0 | count << 32) and the byte count, for a little-endian machine
_LITTLE = sys.byteorder == "little"
_M64, _H64 = (1 << 64) - 1, 1 << 63
# kinds of the C collectives (dsn_shm.h)
_COLL_ALLGATHER, _COLL_GATHER, _COLL_REDUCE_SCATTER, _COLL_BROADCAST = 1, 2, 3, 4
COLL_ALLGATHER_CMA, _COLL_BARRIER = 5, 6
# shared ctrl words: this process's address of the segment (low, high; for the
# cross-memory-attach probe) and the probe's verdict (1 works, 2 does not)
_SEG_ADDR, _CMA_OK = 24, 26
# shared ctrl words where a symmetric allreduce publishes its piece (dsn_shm.h)
_SYM_SIG, _SYM_SIG_LEN = 16, 5
# the channel blocks' words (sent, sleepers, acked, sleepers) and the p2p slots: shm_p2p.py

_M32, _H32 = 0xFFFFFFFF, 0x80000000
try:
    from ..reduce_ops import BFLOAT16 as _BF16
except ImportError:  # pragma: no cover
    _BF16 = None


def _round_up(x, a):
    return (x + a - 1) // a * a


def _reached(cur, target):
    """cur >= target for wrapping int32 counters."""
    return ((cur - target) & _M32) < _H32


def _wrap(v):
    return ((v + _H32) & _M32) - _H32


# dtype ids of the signatures: the C kernels' dtypes are theirs + 1 (dsn_shm.h computes
# it from the kernel code; deepseek.native._DTYPE_CODES), the others fixed here, so that
# every process picks the same id without the native module
_DTYPE_IDS = {np.dtype(np.float32): 1, np.dtype(np.float16): 2, np.dtype(np.int32): 4,
              np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.bool_): 7,
              np.dtype(np.int8): 8, np.dtype(np.uint8): 9, np.dtype(np.int16): 10,
              np.dtype(np.uint16): 11, np.dtype(np.uint32): 12, np.dtype(np.uint64): 13,
              np.dtype(np.complex64): 14, np.dtype(np.complex128): 15}
if _BF16 is not None:
    _DTYPE_IDS[_BF16] = 3
_DTYPE_NAMES = {i: str(dt) for dt, i in _DTYPE_IDS.items()}


def _dtype_id(dtype):
    """The signature's id of ``dtype`` (1..255, the same in every process)."""
    i = _DTYPE_IDS.get(dtype)
    if i is None:
        # anything else: a stable hash of the full description (byte order included)
        dtype = np.dtype(dtype)
        i = _DTYPE_IDS.get(dtype) or 16 + zlib.crc32(dtype.str.encode()) % 240
        _DTYPE_IDS[dtype] = i
        _DTYPE_NAMES.setdefault(i, str(dtype))
    return i


def _wrap64(v):
    return ((v + _H64) & _M64) - _H64


def _decode_sig(sig, seq=None):
    """What a rank's signature words say (the four int32 words), as the fields of
    ``ctx.mismatch_error`` (empty: the slot was never written)."""
    w0, _, lo, hi = sig
    kind = w0 & 15
    if not kind:
        return {}
    d = {"op": _KIND_NAMES.get(kind, f"kind {kind}")}
    if kind != _K_BARRIER:
        dt = (w0 >> 16) & 0xFF
        d["dtype"] = _DTYPE_NAMES.get(dt, f"dtype id {dt}")
        d["nbytes"] = (hi & _M32) << 32 | (lo & _M32)
    if kind in _ROOTED:
        d["root"] = (w0 >> 8) & 0xFF
    if kind in _REDUCING:
        r = (w0 >> 4) & 15
        d["reduce"] = _RED_NAMES.get(r, f"op {r}")
    if seq is not None:
        d["seq"] = seq
    return d


def _sig_code(dtype, op):
    """What the ranks compare besides the piece: dtype and op, as the same small int
    in every process (str hashes are salted per process, crc32 is not)."""
    return zlib.crc32(f"{dtype}/{op.value}".encode()) & 0x3FFFFFFF


def segment_size(n, chunk, p2p):
    return (n * CTRL_BYTES + _round_up(n * n * CHAN_BYTES, 4096) + 2 * n * chunk
            + 2 * chunk + n * n * _K * (HDR_BYTES + p2p))


class ShmTransport(ShmP2P, Backend):
    """Collectives and p2p over one shared-memory segment (all ranks on one host)."""

    name = "shm"

    def __init__(self, rank, size, segment, chunk, p2p_bytes, spin_s=None):
        super().__init__(rank, size)
        n = size
        self.seg = segment
        self.C, self.P = chunk, p2p_bytes
        rs_bytes = envvars.get("DEEPSEEK_SHM_RS_BYTES")
        # Spin long when every rank has a core of its own (a futex wake-up costs tens
        # of microseconds in a VM, sched_yield hands the core to unrelated load), but
        # only briefly when ranks outnumber cores: then the spinner would be burning the
        # core the awaited peer needs.
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover
            cores = os.cpu_count() or 1
        spin_us = envvars.get("DEEPSEEK_SHM_SPIN_US")
        if spin_us is None:
            spin_us = 2000.0 if size <= cores else 20.0
        self.spin_s = spin_s if spin_s is not None else spin_us * 1e-6
        self.yield_s = self.spin_s + envvars.get("DEEPSEEK_SHM_YIELD_US") * 1e-6
        self._spin_min = min(self.spin_s, 100e-6)  # see DSN_SHM_SPIN_MIN_NS
        self._spin_cur = self.spin_s
        buf = segment.buf
        self._u8 = np.frombuffer(buf, dtype=np.uint8)
        self._w = memoryview(buf).cast("i")
        self._q = memoryview(buf).cast("q")  # the signatures, two int64 words each
        self._addr = self._u8.ctypes.data
        off = 0
        self._ctrl_off = off
        off += n * CTRL_BYTES
        self._chan_off = off
        off += _round_up(n * n * CHAN_BYTES, 4096)
        self._in_off = off
        off += 2 * n * chunk
        self._out_off = off
        off += 2 * chunk
        self._p2p_off = off
        self._step_idx = [(self._ctrl_off + r * CTRL_BYTES) // 4 + _STEP for r in range(n)]
        self._my = self._step_idx[rank]
        self._pv = self._ctrl_word(rank, 0)  # + _P_* = a private word
        self._qsig = self._pv // 2 + _SIG // 2  # this rank's signature slots, int64 index
        self.rs_bytes = rs_bytes
        # the C allreduce (GIL released, no Python per chunk) when the native kernels
        # are in use; otherwise the numpy implementation below, same protocol
        self.kernel = None
        self.state_addr = self._addr + self._pv * 4  # this rank's ctrl block
        self._codes = {}
        try:
            from deepseek import native as _native

            self.kernel = _native.shm_kernel()
            if self.kernel is not None:
                for dt in list(_native._DTYPE_CODES):
                    for opname in ("sum", "avg", "max", "min", "prod"):
                        code = _native.shm_code(dt, opname)
                        if code is not None:
                            self._codes[(dt, opname)] = code
        except Exception:  # noqa: BLE001 - optional at run time
            self.kernel = None
        self.sym_kernel = self.coll_kernel = None
        self._barrier_kernel = None
        if self.kernel is not None:
            self.sym_kernel = _native.shm_sym_kernel()
            self.coll_kernel = _native.shm_coll_kernel()
            kernel, addr, dummy = self.coll_kernel, self.state_addr, np.empty(0, np.uint8)
            self._barrier_kernel = lambda budget: kernel(addr, _COLL_BARRIER, dummy, None,
                                                         -1, 0, budget)
        #: allreduce of a symmetric buffer takes the zero-copy path from this size on
        self.sym_bytes = envvars.get("DEEPSEEK_SHM_SYM_BYTES")
        self._sym = []          # SymmetricRegion records of this group
        self._sym_tables = {}   # (address, nbytes) -> (table address, table)
        self._sym_calls = 0
        self.sym_allreduces = 0  # allreduces that took the symmetric path (tests, stats)
        self.sym_ops = 0  # allgathers / reduce-scatters that did
        self.bootstrap = None   # (store, key prefix, job tag), set by make_cpu_backend
        #: single-copy allgather (cross-memory attach) from this size on, once
        #: probe_cma() found that every rank can read every peer's memory
        self.cma = False
        # measured, 2 ranks: staged 3.3-4.2 us vs 4.4 at 4 KiB per rank, 7.4-8.2 vs
        # 5.5-5.8 at 16 KiB, 308 vs 186 us at 1 MiB, 2.49 vs 1.57 ms at 8 MiB
        self.cma_bytes = envvars.get("DEEPSEEK_SHM_CMA_BYTES")
        self._peers = [r for r in range(n) if r != rank]
        self._procs = {}
        self._sent = [0] * n   # messages this rank posted to each dst
        self._acked = [0] * n  # messages this rank consumed from each src
        self._stash = {}       # (src, tag) -> list of received arrays of other tags
        self._checked_round = None  # the last round whose signatures this rank compared
        self._closed = False
        self._p2p_init()

    # --- low-level words -----------------------------------------------------
    def _ctrl_word(self, r, word):
        return (self._ctrl_off + r * CTRL_BYTES) // 4 + word

    def _chan_word(self, src, dst, word):
        return (self._chan_off + (src * self.size + dst) * CHAN_BYTES) // 4 + word

    def start(self):
        """Publish this process's pid (for liveness checks of the peers) and the
        geometry the C allreduce reads from this rank's private words."""
        w, pv = self._w, self._pv
        w[self._ctrl_word(self.rank, _PID)] = os.getpid()
        w[pv + _P_N], w[pv + _P_RANK] = self.size, self.rank
        w[pv + _P_IN_OFF], w[pv + _P_OUT_OFF], w[pv + _P_SLOT] = \
            self._in_off, self._out_off, self.C
        spin_ns = int(min(self.spin_s, 1.0) * 1e9)
        w[pv + _P_SPIN_MAX] = w[pv + _P_SPIN_CUR] = spin_ns
        addr = self._ctrl_word(self.rank, _SEG_ADDR)
        w[addr], w[addr + 1] = _wrap(self._addr & _M32), _wrap(self._addr >> 32)

    def probe_cma(self, ctx):
        """Collective: turn on the single-copy allgather if every rank can read every
        peer's memory with process_vm_readv (Linux; same user; not forbidden by Yama's
        ptrace_scope or a container's seccomp policy). ``DEEPSEEK_SHM_CMA=0`` turns
        it off. Each rank reads every peer's pid word through the peer's own address
        of the segment and checks the value; then all agree through one barrier."""
        # 1: readable and the C allgather is there; 3: readable only (the single-copy
        # send/recv needs no C, collectives/backends/shm_p2p.py); 2: not readable
        readable = envvars.get("DEEPSEEK_SHM_CMA") != "off" \
            and all(self._cma_reads(p) for p in self._peers)
        verdict = (1 if self.coll_kernel is not None else 3) if readable else 2
        self._w[self._ctrl_word(self.rank, _CMA_OK)] = verdict
        self.barrier(ctx)
        seen = [self._w[self._ctrl_word(r, _CMA_OK)] for r in range(self.size)]
        self.cma = all(v == 1 for v in seen)
        self.p2p_cma = all(v in (1, 3) for v in seen)

    def _cma_reads(self, p):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            readv = libc.process_vm_readv
        except (OSError, AttributeError):
            return False

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        w = self._w
        a = self._ctrl_word(p, _SEG_ADDR)
        seg = (w[a] & _M32) | (w[a + 1] & _M32) << 32
        pid_word = self._ctrl_word(p, _PID)
        got = ctypes.c_int32(0)
        local = IoVec(ctypes.addressof(got), 4)
        remote = IoVec(seg + pid_word * 4, 4)
        readv.restype = ctypes.c_ssize_t
        n = readv(w[pid_word], ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        return n == 4 and got.value == w[pid_word]

    @property
    def rs_bytes(self):
        """Allreduce crossover (bytes) from the direct algorithm to reduce-scatter +
        allgather (``DEEPSEEK_SHM_RS_BYTES``)."""
        return self._rs_bytes

    @rs_bytes.setter
    def rs_bytes(self, v):
        self._rs_bytes = int(v)
        self._w[self._pv + _P_RS_BYTES] = min(self._rs_bytes, 2 ** 31 - 1)

    @property
    def _step(self):
        return self._w[self._my]

    def _post_word(self, idx, sleep_idx, value):
        w = self._w
        w[idx] = value
        if w[sleep_idx]:
            w[sleep_idx] = 0
            _futex.wake(self._addr + idx * 4)

    def _post(self):
        s = _wrap(self._w[self._my] + 1)
        self._post_word(self._my, self._my + _SLEEP, s)
        return s

    def _wait_word(self, ctx, idx, sleep_idx, target, peer, missing_fn):
        """Block until word ``idx`` reaches ``target`` (spin, then futex sleep)."""
        w = self._w
        if _reached(w[idx], target):
            return
        clock = time.perf_counter
        t0 = clock()
        # 1) spin: the peer is usually a few microseconds away. The spin budget adapts
        #    like an adaptive mutex: it grows while waits end during the spin and
        #    shrinks when they end asleep (an overloaded machine, a late peer), so a
        #    spinning rank does not keep burning a core its peer needs.
        end = t0 + self._spin_cur
        while clock() < end:
            if _reached(w[idx], target):
                self._spin_cur = min(self.spin_s, self._spin_cur * 2)
                return
        self._spin_cur = max(self._spin_min, self._spin_cur / 2)
        # 2) optional (DEEPSEEK_SHM_YIELD_US): spin with sched_yield between checks;
        #    measured slower here (the core goes to unrelated load), so off by default
        if self.yield_s > self.spin_s:
            end = t0 + self.yield_s
            sched_yield = os.sched_yield
            while clock() < end:
                sched_yield()
                if _reached(w[idx], target):
                    return
        # 3) sleep in the kernel, re-checking aborts, liveness and the deadline
        next_check = t0 + 0.05
        next_alive = t0 + 0.5
        addr = self._addr + idx * 4
        while True:
            w[sleep_idx] = 1
            cur = w[idx]
            if _reached(cur, target):
                return
            _futex.wait(addr, cur)
            if _reached(w[idx], target):
                return
            now = clock()
            if now >= next_check:
                next_check = now + 0.05
                self._check_abort(ctx)
                if now >= next_alive:
                    next_alive = now + 0.5
                    self._check_alive(ctx, [peer])
                if now >= ctx.deadline:
                    raise ctx.timeout_error(missing_fn())

    def _wait_all(self, ctx, peers, target):
        w = self._w
        for p in peers:
            idx = self._step_idx[p]
            if not _reached(w[idx], target):
                self._wait_word(
                    ctx, idx, idx + _SLEEP, target, p,
                    lambda: [q for q in peers if not _reached(w[self._step_idx[q]], target)])

    def _check_abort(self, ctx):
        w = self._w
        aborted = [p for p in self._peers if w[self._ctrl_word(p, _ABORT)]]
        if not aborted:
            return
        reasons = {}
        for p in aborted:
            off = self._ctrl_off + p * CTRL_BYTES + _REASON_OFF
            raw = bytes(self._u8[off: off + CTRL_BYTES - _REASON_OFF])
            reasons[p] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        found = [p for p in aborted if reasons[p].startswith(CollectiveMismatchError.__name__)]
        if found:
            # a peer found that the ranks called different collectives: the same error
            # here, with its finding -- preferably first-hand (a peer that only relays
            # another's abort quotes the table later in its reason, truncated)
            def first_hand(q):
                i = reasons[q].find("ranks disagree")
                return i if i >= 0 else len(reasons[q]) + 1
            p = min(found, key=first_hand)
            raise CollectiveMismatchError(
                f"{ctx.describe()}: group rank {p} (global rank {ctx.ranks[p]}) "
                f"found mismatched collectives and aborted the group: {reasons[p]}")
        p = aborted[0]
        raise PeerFailureError(
            f"{ctx.describe()}: group rank {p} (global rank {ctx.ranks[p]}) "
            f"aborted the group: {reasons[p] or 'no reason given'}", peers=[p])

    def _check_alive(self, ctx, peers):
        import psutil

        dead = []
        for p in peers:
            pid = self._w[self._ctrl_word(p, _PID)]
            if not pid:
                continue
            proc = self._procs.get(p)
            try:
                if proc is None:
                    proc = self._procs[p] = psutil.Process(pid)
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    dead.append(p)
            except psutil.NoSuchProcess:
                dead.append(p)
            except psutil.Error:
                pass
        if dead:
            raise PeerFailureError(
                f"{ctx.describe()}: peer group rank(s) {dead} (global "
                f"{[ctx.ranks[d] for d in dead]}) died (process gone) while this rank "
                f"waited for them", peers=dead)

    def abort(self, reason):
        if self._closed:
            return
        off = self._ctrl_off + self.rank * CTRL_BYTES + _REASON_OFF
        raw = str(reason).encode("utf-8", "replace")[: CTRL_BYTES - _REASON_OFF - 1]
        self._u8[off: off + len(raw) + 1] = np.frombuffer(raw + b"\0", np.uint8)
        self._w[self._ctrl_word(self.rank, _ABORT)] = 1
        _futex.wake(self._addr + self._my * 4)  # whoever sleeps on our counter

    # --- rounds ----------------------------------------------------------------
    def _begin_round(self, ctx, sig):
        """Start a round of the op with signature ``sig`` (from _op_sig); returns the
        buffer half it may use (see module doc). Checks the previous round's
        signatures of every peer (see "Signatures")."""
        w, pv = self._w, self._pv
        if w[pv + _P_HASPREV]:
            self._wait_all(ctx, self._peers, w[pv + _P_PREV])
            prev = w[pv + _P_ROUND]
            if prev != self._checked_round:  # else compared already, in that round
                self._check_sig(ctx, self._peers, prev & 1)
        r = w[pv + _P_ROUND] = _wrap(w[pv + _P_ROUND] + 1)
        w[pv + _P_HASPREV] = 1
        w[pv + _P_PREV] = _wrap(w[self._my] + 1)
        q = self._qsig + (r & 1) * 2
        self._q[q], self._q[q + 1] = sig
        return r & 1

    # --- signatures (see "Signatures" in the module doc) ---------------------------
    def _op_sig(self, kind, dtype=None, nbytes=0, root=0, op=None):
        """Count a collective begun here (in Python) and return its signature as the
        two int64 words _begin_round writes."""
        w, i = self._w, self._pv + _P_OPS
        count = w[i] + 1
        if count == _H32:
            count = -_H32  # int32 wrap
        w[i] = count
        word = kind | (root & 0xFF) << 8
        if op is not None:
            word |= _RED_CODES[op] << 4
        if dtype is not None:
            word |= (_DTYPE_IDS.get(dtype) or _dtype_id(dtype)) << 16
        if _LITTLE:  # count << 32 | word is already the signed int64 of the pair
            return count << 32 | word, nbytes
        return _wrap64(word << 32 | (count & _M32)), _wrap64(  # pragma: no cover
            (nbytes & _M32) << 32 | nbytes >> 32)

    def copy_code(self, dtype):
        """The C collectives' ``code`` for a plain copy of ``dtype``: -1 - its
        signature id (dsn_module.c), so C and Python ops compare the same dtype."""
        return -1 - _dtype_id(dtype)

    def _check_sig(self, ctx, peers, slot):
        """Raise the mismatch error unless the ``peers`` (which have posted the step
        that follows their signature) published the same signature in ``slot``."""
        qv, stride = self._q, CTRL_BYTES // 8
        q = self._qsig + slot * 2
        a, b = qv[q], qv[q + 1]
        base = q - self.rank * stride
        for p in peers:
            i = base + p * stride
            if qv[i] != a or qv[i + 1] != b:
                raise self._sig_mismatch(ctx, _SIG + slot * _SIG_WORDS)
        if peers is self._peers:
            self._checked_round = self._w[self._pv + _P_ROUND]

    def _sig_mismatch(self, ctx, word=None):
        """The CollectiveMismatchError for the signatures at ``word`` of every rank's
        ctrl block (default: the slot the last check read, which the C kernels leave in
        a private word), as ``ctx.mismatch_error`` words it."""
        w = self._w
        if word is None:
            word = w[self._pv + _P_SIG]
        sigs = [tuple(w[q: q + _SIG_WORDS]) for q in
                (self._ctrl_word(r, word) for r in range(self.size))]
        mine = sigs[self.rank]
        # how many collectives ago the one that differs began here: 0 but where this
        # rank found it only when its next op began (see "Signatures")
        lag = _wrap(w[self._pv + _P_OPS] - mine[1])
        seq = ctx.seq - lag
        same = all(s[1] == mine[1] for s in sigs if s[0] & 15)
        calls = [_decode_sig(s, None if same else seq + _wrap(s[1] - mine[1])) for s in sigs]
        if not lag:
            return ctx.mismatch_error(calls, source="collectives")
        err = OpContext(ctx.op, seq, ctx.timeout, ctx.group, ctx.rank,
                        ctx.ranks).mismatch_error(calls, source="collectives")
        return CollectiveMismatchError(f"{err}\n(found on this rank when it began "
                                       f"{ctx.describe()})")

    def _in(self, r, half, dtype, count, offset_bytes=0):
        off = self._in_off + (r * 2 + half) * self.C + offset_bytes
        return self._u8[off: off + count * dtype.itemsize].view(dtype)

    def _outbuf(self, half, dtype, count):
        off = self._out_off + half * self.C
        return self._u8[off: off + count * dtype.itemsize].view(dtype)

    def _chunks(self, count, itemsize, per_round_items=1):
        """Element ranges [lo, hi) of at most one slot (divided by per_round_items)."""
        if count * itemsize * per_round_items <= self.C:
            return ((0, count),) if count else ()
        cap = max(1, self.C // (itemsize * per_round_items))
        return [(lo, min(count, lo + cap)) for lo in range(0, count, cap)]

    # --- collectives -------------------------------------------------------------
    def barrier(self, ctx):
        if self._barrier_kernel is not None and self._drive(ctx, self._barrier_kernel):
            return  # in C: about a microsecond less than the Python version below
        h = self._begin_round(ctx, self._op_sig(_K_BARRIER))
        s = self._post()
        self._wait_all(ctx, self._peers, s)
        self._check_sig(ctx, self._peers, h)

    # --- the C allreduce -------------------------------------------------------------
    def native_code(self, x, op):
        """The kernel's code for array ``x`` and ``op``, or None (numpy path)."""
        if self.kernel is None or type(x) is not np.ndarray:
            return None
        return self._codes.get((x.dtype, op.value))

    def native_allreduce(self, ctx, x, code, status=None, table=None):
        """Run (or, given the ``status`` of a first call, finish) the C allreduce of
        ``x`` (``table``: the symmetric kernel with that table of every rank's copy),
        waiting in slices so that aborts, dead peers and the deadline are noticed.
        Returns False if the kernel refused ``x`` before touching anything."""
        addr = self.state_addr
        if x.dtype == _BF16:
            x = x.view(np.uint16)
        if table is None:
            kernel = self.kernel
            return self._drive(ctx, lambda budget: kernel(addr, x, code, budget), status)
        kernel = self.sym_kernel
        return self._drive(ctx, lambda budget: kernel(addr, x, code, budget, table), status)

    def _drive(self, ctx, call, status=None):
        """Call a resumable C kernel (``call(budget_ns) -> status``) until it is done,
        turning its statuses into the errors: ranks in different collectives, on
        different symmetric buffer pieces, aborts, dead peers, the deadline."""
        if status is None:
            status = call(50_000_000)
        next_alive = time.perf_counter() + 0.5
        while status:
            if status == NATIVE_NOT_ELIGIBLE:
                return False
            if status == NATIVE_ABORT:
                self._check_abort(ctx)
            if status == NATIVE_SIG_MISMATCH:
                raise self._sig_mismatch(ctx)
            if status == NATIVE_MISMATCH:
                raise self._sym_mismatch(ctx)
            if status == NATIVE_CMA_FAILED:
                self._check_alive(ctx, self._peers)
                err = self._w[self._pv + _P_ERRNO]
                raise CollectiveError(f"{ctx.describe()}: reading a peer's memory "
                                      f"(process_vm_readv) failed: {os.strerror(err)}")
            now = time.perf_counter()
            if now >= ctx.deadline:
                raise ctx.timeout_error(self.native_missing())
            if now >= next_alive:
                next_alive = now + 0.5
                self._check_alive(ctx, self.native_missing())
            status = call(int(min(0.05, max(ctx.deadline - now, 0.0)) * 1e9) + 1000)
        return True

    def _native_coll(self, ctx, kind, x, out, code=None, root=0, status=None):
        """Run (or, given the ``status`` of a first call, finish) allgather / gather /
        reduce_scatter / broadcast (``kind``, as in native/src/dsn_shm.h) in C; False
        when the kernel is not there or refused the arguments before touching anything
        (the Python version then runs). ``code`` None: a plain copy (copy_code)."""
        kernel = self.coll_kernel
        if kernel is None or type(x) is not np.ndarray or \
                (out is not None and type(out) is not np.ndarray):
            return False
        if code is None:
            code = self.copy_code(x.dtype)
        if x.dtype == _BF16:
            x = x.view(np.uint16)
            out = None if out is None else out.view(np.uint16)
        addr = self.state_addr
        return self._drive(ctx, lambda budget: kernel(addr, kind, x, out, code, root, budget),
                           status)

    def native_missing(self):
        """Peers that have not reached what the C allreduce waits for."""
        w = self._w
        target = w[self._pv + _P_TARGET]
        return [p for p in self._peers if not _reached(w[self._step_idx[p]], target)]

    def allreduce(self, ctx, x, op):
        if self._sym and x.nbytes >= self.sym_bytes:
            found = self.find_symmetric(x)
            if found is not None:
                return self._sym_allreduce(ctx, x, op, *found)
        code = self.native_code(x, op)
        if code is not None and self.native_allreduce(ctx, x, code):
            return
        n, dt, me = self.size, x.dtype, self.rank
        rs = x.nbytes >= self.rs_bytes and x.size >= n
        sig = self._op_sig(_K_ALLREDUCE, dt, x.nbytes, op=op)
        for lo, hi in self._chunks(x.size, dt.itemsize):
            h = self._begin_round(ctx, sig)
            m = hi - lo
            chunk = x[lo:hi]
            mine = self._in(me, h, dt, m)
            if not rs:
                mine[...] = chunk
                s = self._post()
                self._wait_all(ctx, self._peers, s)
                self._check_sig(ctx, self._peers, h)
                reduce_into(chunk, [self._in(r, h, dt, m) for r in range(n)], op)
                continue
            # reduce-scatter + allgather. The peers never read this rank's own segment
            # of its slot, so only the others are copied in, and the own segment is
            # reduced straight from ``x`` (still in rank order).
            a, b = m * me // n, m * (me + 1) // n
            mine[:a] = chunk[:a]
            mine[b:] = chunk[b:]
            s = self._post()
            self._wait_all(ctx, self._peers, s)
            self._check_sig(ctx, self._peers, h)
            out = self._outbuf(h, dt, m)
            reduce_into(out[a:b], [chunk[a:b] if r == me else self._in(r, h, dt, m)[a:b]
                                   for r in range(n)], op)
            s = self._post()
            self._wait_all(ctx, self._peers, s)
            chunk[...] = out

    # --- symmetric buffers --------------------------------------------------------
    def alloc_symmetric(self, ctx, nbytes):
        """Collective: map a new segment with one ``nbytes`` region per rank; returns
        this rank's region as a zero-filled uint8 array. Every rank must ask for the
        same size (checked through the store; all ranks raise on a mismatch)."""
        store, prefix, job = self.bootstrap
        self._sym_calls += 1
        key = f"{prefix}/sym/{self._sym_calls}"
        store.set(f"{key}/bytes/{self.rank}", str(int(nbytes)))
        sizes = [int(v) for v in store.multi_get(
            [f"{key}/bytes/{r}" for r in range(self.size)],
            timeout=max(ctx.deadline - time.perf_counter(), 0.001))]
        if len(set(sizes)) != 1:
            raise CollectiveMismatchError(
                f"{ctx.describe()}: ranks asked for symmetric buffers of different sizes "
                f"(bytes by group rank: {sizes})")
        stride = _round_up(max(int(nbytes), 1), 4096)
        seg = None
        try:
            if self.rank == 0:
                seg = _shm.Segment.create(job, "s", stride * self.size)
                store.set(f"{key}/name", seg.name)
            else:
                name = store.get(f"{key}/name",
                                 timeout=max(ctx.deadline - time.perf_counter(), 0.001))
                seg = _shm.Segment.attach(name.decode(), stride * self.size)
            self.barrier(ctx)  # everyone attached
        finally:
            if self.rank == 0 and seg is not None:
                seg.unlink()  # from here on the memory goes with the last process
        region = SymmetricRegion(seg, stride, self.rank, self.size, self._sym_calls)
        self._sym.append(region)
        return region.views[self.rank][:nbytes]

    def find_symmetric(self, x):
        """(region, byte offset) when ``x`` lies in this rank's region of a symmetric
        buffer of this group, else None."""
        p = x.__array_interface__["data"][0]
        for region in self._sym:
            if region.lo <= p and p + x.nbytes <= region.hi:
                return region, p - region.lo
        return None

    def symmetric_views(self, x):
        """``(views, (allocation id, byte offset))`` for a piece ``x`` of a symmetric
        buffer: every rank's copy of it as arrays of x's dtype and size mapped in this
        process, in rank order, and what the ranks compare to make sure they passed the
        same piece; None when x is not in one. For kernels that do a whole collective's
        arithmetic in one pass (the fused fp16 reduction of
        deepseek/distributed/shm_fused.py); the caller synchronises."""
        found = self.find_symmetric(x)
        if found is None:
            return None
        region, off = found
        return [v[off: off + x.nbytes].view(x.dtype) for v in region.views], (region.id, off)

    def symmetric_table(self, x):
        """For a piece ``x`` of a symmetric buffer: the address of the table of every
        rank's copy of it in this process (what the C kernel takes); else None. Tables
        are kept per (address, size): DDP asks for the same buckets every step."""
        key = (x.__array_interface__["data"][0], x.nbytes)
        hit = self._sym_tables.get(key)
        if hit is None:
            found = self.find_symmetric(x)
            if found is None:
                return None
            region, off = found
            # the peers' copies of x (the same offset in their regions), then what the
            # ranks compare: allocation id and offset
            table = np.array([b + off for b in region.bases] + [region.id, off],
                             dtype=np.int64)
            hit = (table.ctypes.data, table)
            if len(self._sym_tables) < 4096:
                self._sym_tables[key] = hit
        return hit[0]

    def _sym_peers(self, ctx, x, region, off, code, opsig):
        """Every rank's copy of ``x`` (a symmetric piece), once all have arrived and
        shown that they called the same op (``opsig``) and passed the same piece (the
        C kernel's checks, in Python)."""
        slot = self._begin_round(ctx, opsig)  # no slot used, but a signature's place
        w, base = self._w, self._ctrl_word(self.rank, _SYM_SIG)
        sig = [region.id, off & _M32, off >> 32, x.size & _M32, code]
        for i, v in enumerate(sig):
            w[base + i] = _wrap(v)
        s = self._post()
        self._wait_all(ctx, self._peers, s)
        self._check_sig(ctx, self._peers, slot)
        mine = list(w[base: base + _SYM_SIG_LEN])
        for p in self._peers:
            q = self._ctrl_word(p, _SYM_SIG)
            if list(w[q: q + _SYM_SIG_LEN]) != mine:
                raise self._sym_mismatch(ctx)
        return [v[off: off + x.nbytes].view(x.dtype) for v in region.views]

    def _sym_mismatch(self, ctx):
        rows = []
        for r in range(self.size):
            q = self._ctrl_word(r, _SYM_SIG)
            alloc, lo, hi, count, code = self._w[q: q + _SYM_SIG_LEN]
            rows.append(f"  group rank {r}: allocation {alloc}, byte offset "
                        f"{(hi & _M32) << 32 | (lo & _M32)}, {count & _M32} elements, "
                        f"code {code}")
        return CollectiveMismatchError(
            f"{ctx.describe()}: the ranks passed different pieces of symmetric buffers "
            "(each rank must pass the same allocation, offset, size, dtype and op):\n"
            + "\n".join(rows))

    def _sym_done(self, ctx):
        """Wait until no rank reads this rank's symmetric region any more."""
        s = self._post()
        self._wait_all(ctx, self._peers, s)

    def _sym_allreduce(self, ctx, x, op, region, off):
        self.sym_allreduces += 1
        code = self.native_code(x, op)
        if code is not None and self.sym_kernel is not None:
            if self.native_allreduce(ctx, x, code, table=self.symmetric_table(x)):
                return
        n, me = self.size, self.rank
        views = self._sym_peers(ctx, x, region, off, _sig_code(x.dtype, op),
                                self._op_sig(_K_ALLREDUCE_SYM, x.dtype, x.nbytes, op=op))
        a, b = x.size * me // n, x.size * (me + 1) // n
        # into a temporary: reduce_into lets out alias only its first input
        seg = reduce_into(np.empty(b - a, x.dtype), [v[a:b] for v in views], op)
        for v in views:
            v[a:b] = seg
        self._sym_done(ctx)

    def reduce(self, ctx, x, root, op):
        n, dt = self.size, x.dtype
        rs = x.nbytes >= self.rs_bytes and x.size >= n
        sig = self._op_sig(_K_REDUCE, dt, x.nbytes, root, op)
        for lo, hi in self._chunks(x.size, dt.itemsize):
            h = self._begin_round(ctx, sig)
            m = hi - lo
            self._in(self.rank, h, dt, m)[...] = x[lo:hi]
            s = self._post()
            if not rs:
                if self.rank == root:
                    self._wait_all(ctx, self._peers, s)
                    self._check_sig(ctx, self._peers, h)
                    reduce_into(x[lo:hi], [self._in(r, h, dt, m) for r in range(n)], op)
                continue
            self._wait_all(ctx, self._peers, s)
            self._check_sig(ctx, self._peers, h)
            a, b = m * self.rank // n, m * (self.rank + 1) // n
            out = self._outbuf(h, dt, m)
            reduce_into(out[a:b], [self._in(r, h, dt, m)[a:b] for r in range(n)], op)
            s = self._post()
            if self.rank == root:
                self._wait_all(ctx, self._peers, s)
                x[lo:hi] = out

    def broadcast(self, ctx, x, root):
        if self._native_coll(ctx, _COLL_BROADCAST, x, None, root=root):
            return
        dt = x.dtype
        sig = self._op_sig(_K_BROADCAST, dt, x.nbytes, root)
        for lo, hi in self._chunks(x.size, dt.itemsize):
            h = self._begin_round(ctx, sig)
            slot = self._in(root, h, dt, hi - lo)
            if self.rank == root:
                slot[...] = x[lo:hi]
                self._post()
            else:
                s = self._post()
                self._wait_all(ctx, [root], s)
                self._check_sig(ctx, [root], h)
                x[lo:hi] = slot

    def allgather(self, ctx, out, x):
        if self._sym and x.nbytes >= self.sym_bytes:
            found = self.find_symmetric(x)
            if found is not None:
                self.sym_ops += 1
                views = self._sym_peers(ctx, x, *found, -1,
                                        self._op_sig(_K_ALLGATHER_SYM, x.dtype, x.nbytes))
                m = x.size
                for r, v in enumerate(views):
                    out[r * m:(r + 1) * m] = v
                return self._sym_done(ctx)
        kind = COLL_ALLGATHER_CMA if self.cma and x.nbytes >= self.cma_bytes \
            else _COLL_ALLGATHER
        if not self._native_coll(ctx, kind, x, out):
            self._gather(ctx, out, x, None)

    def gather(self, ctx, out, x, root):
        if not self._native_coll(ctx, _COLL_GATHER, x, out if self.rank == root else None,
                                 root=root):
            self._gather(ctx, out, x, root)

    def _gather(self, ctx, out, x, root):
        n, dt, m = self.size, x.dtype, x.size
        sig = self._op_sig(_K_ALLGATHER, dt, x.nbytes) if root is None else \
            self._op_sig(_K_GATHER, dt, x.nbytes, root)
        for lo, hi in self._chunks(m, dt.itemsize):
            h = self._begin_round(ctx, sig)
            self._in(self.rank, h, dt, hi - lo)[...] = x[lo:hi]
            s = self._post()
            if root is not None and self.rank != root:
                continue
            self._wait_all(ctx, self._peers, s)
            self._check_sig(ctx, self._peers, h)
            for r in range(n):
                out[r * m + lo: r * m + hi] = self._in(r, h, dt, hi - lo)

    def scatter(self, ctx, out, x, root):
        n, dt, m = self.size, out.dtype, out.size
        sig = self._op_sig(_K_SCATTER, dt, out.nbytes, root)
        for lo, hi in self._chunks(m, dt.itemsize):
            h = self._begin_round(ctx, sig)
            if self.rank == root:
                for r in range(n):
                    self._in(r, h, dt, hi - lo)[...] = x[r * m + lo: r * m + hi]
                self._post()
                out[lo:hi] = x[root * m + lo: root * m + hi]
            else:
                s = self._post()
                self._wait_all(ctx, [root], s)
                self._check_sig(ctx, [root], h)
                out[lo:hi] = self._in(self.rank, h, dt, hi - lo)

    def _pieces_in(self, ctx, x, m, lo, hi, dt, sig):
        """Copy piece chunks x[j*m+lo : j*m+hi] (j = 0..n-1, but not j = rank: only
        this rank needs its own piece, and reads it from x) into this rank's slot, in a
        round of the op with signature ``sig``, and wait for every peer's."""
        n, c = self.size, hi - lo
        h = self._begin_round(ctx, sig)
        mine = self._in(self.rank, h, dt, n * c)
        for j in range(n):
            if j != self.rank:
                mine[j * c:(j + 1) * c] = x[j * m + lo: j * m + hi]
        s = self._post()
        self._wait_all(ctx, self._peers, s)
        self._check_sig(ctx, self._peers, h)
        return h, c

    def reduce_scatter(self, ctx, out, x, op):
        n, dt, m = self.size, out.dtype, out.size
        if self._sym and x.nbytes >= self.sym_bytes:
            found = self.find_symmetric(x)
            if found is not None:
                self.sym_ops += 1
                me = self.rank
                views = self._sym_peers(ctx, x, *found, -2 - _sig_code(x.dtype, op),
                                        self._op_sig(_K_REDUCE_SCATTER_SYM, out.dtype,
                                                     out.nbytes, op=op))
                reduce_into(out, [v[me * m:(me + 1) * m] for v in views], op)
                return self._sym_done(ctx)
        code = self.native_code(out, op)
        if code is not None and self._native_coll(ctx, _COLL_REDUCE_SCATTER, x, out, code):
            return
        sig = self._op_sig(_K_REDUCE_SCATTER, dt, out.nbytes, op=op)
        for lo, hi in self._chunks(m, dt.itemsize, n):
            h, c = self._pieces_in(ctx, x, m, lo, hi, dt, sig)
            me = self.rank
            reduce_into(out[lo:hi],
                        [x[me * m + lo: me * m + hi] if r == me else
                         self._in(r, h, dt, n * c)[me * c:(me + 1) * c] for r in range(n)],
                        op)

    def all_to_all(self, ctx, out, x):
        n, dt = self.size, x.dtype
        m = x.size // n
        sig = self._op_sig(_K_ALL_TO_ALL, dt, x.nbytes)
        for lo, hi in self._chunks(m, dt.itemsize, n):
            h, c = self._pieces_in(ctx, x, m, lo, hi, dt, sig)
            me = self.rank
            for r in range(n):
                out[r * m + lo: r * m + hi] = x[me * m + lo: me * m + hi] if r == me else \
                    self._in(r, h, dt, n * c)[me * c:(me + 1) * c]

    # --- point to point: collectives/backends/shm_p2p.py (ShmP2P) --------------------

    def close(self):
        if self._closed:
            return
        self._closed = True
        for region in self._sym:
            region.close()
        self._sym = []
        self._sym_tables = {}
        self._w.release()
        self._q.release()
        self._mv.release()  # the p2p byte view (shm_p2p.py)
        self._w = self._q = self._mv = None
        self._u8 = None
        self.seg.close()


class SymmetricRegion:
    """One symmetric allocation: a segment of ``n`` regions of ``stride`` bytes, one
    per rank; ``views[r]`` is rank r's region, ``bases[r]`` its address here, and
    ``lo``/``hi`` bound this rank's own region."""

    def __init__(self, seg, stride, rank, size, ident):
        self.seg, self.stride, self.id = seg, stride, ident
        whole = np.frombuffer(seg.buf, dtype=np.uint8, count=stride * size)
        self.views = [whole[r * stride:(r + 1) * stride] for r in range(size)]
        base = whole.ctypes.data
        self.bases = [base + r * stride for r in range(size)]
        self.lo = self.bases[rank]
        self.hi = self.lo + stride

    def close(self):
        self.views = []
        self.seg.close()  # a no-op while user arrays still use the mapping
