/*
 * dsn_shm.h - the shared-memory allreduce of deepseek.collectives, in C.
 *
 * Included by dsn_module.c (it needs the dispatched kernel table K). The segment
 * layout and the protocol are those of collectives/backends/shm.py, which runs every
 * other collective in Python on the same words:
 *
 *   ctrl block of rank r at base + r * DSN_SHM_CTRL (int32 words):
 *     0 step (posted progress counter, wrapping), 1 sleepers flag, 2 abort, 3 pid,
 *     4..11 the two signature slots (see below);
 *     32.. this rank's private state (geometry, round counter, resumable op state),
 *     on its own cache line so that peers polling the step word do not see it change.
 *   in:  per rank two halves of one slot (double buffering), `slot` bytes each
 *   out: two halves, the result area of reduce-scatter + allgather
 *
 * One call runs a whole allreduce with the GIL released: per chunk of at most one
 * slot, either the direct algorithm (copy in, post, wait for all, reduce every slot
 * in rank order) or reduce-scatter + allgather (copy in the parts the peers reduce,
 * post, wait, reduce this rank's segment in rank order into `out`, post, wait, copy
 * the chunk out). Waiting spins briefly (adaptive budget, like an adaptive mutex),
 * then sleeps in futex(FUTEX_WAIT) on the peer's step word. A wait that runs past
 * the call's deadline returns DSN_SHM_PENDING with the state saved in the private
 * words; calling again with the same array resumes. So the caller (Python) decides
 * about timeouts, peer liveness and signals, and C never blocks for long.
 *
 * Every collective, here and in Python, publishes its signature (what it is: op kind,
 * reduce op, root, dtype, byte count, and the rank's count of collectives so far) in
 * one of two slots of its ctrl block before its first post of each round, and compares
 * it with the peers' after the first wait of the round: ranks that called different
 * collectives fail with DSN_SHM_SIG_MISMATCH instead of mixing unrelated data. See
 * "Signatures" in collectives/backends/shm.py for the slots and why two suffice.
 */
#ifndef DSN_SHM_H
#define DSN_SHM_H

#include <errno.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#define DSN_HAVE_FUTEX 1
#define DSN_HAVE_CMA 1
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define DSN_PAUSE() __asm__ __volatile__("yield")
#else
#define DSN_PAUSE() do { } while (0)
#endif

#define DSN_SHM_CTRL 1024
enum { DSN_W_STEP = 0, DSN_W_SLEEP = 1, DSN_W_ABORT = 2, DSN_W_PID = 3 };
/* private words (must match collectives/backends/shm.py) */
enum {
    DSN_P_N = 32, DSN_P_RANK, DSN_P_IN_OFF, DSN_P_OUT_OFF, DSN_P_SLOT, DSN_P_RS_BYTES,
    DSN_P_SPIN_MAX, DSN_P_SPIN_CUR, DSN_P_ROUND, DSN_P_PREV, DSN_P_HASPREV,
    DSN_P_PHASE, DSN_P_CHUNK, DSN_P_TARGET, DSN_P_ERRNO,
    /* collectives begun so far (the signature's count), whether a C op is under way
     * (so that resuming it does not count it again), and the word of the signature
     * slot the last check read (for the error the caller builds) */
    DSN_P_OPS, DSN_P_INOP, DSN_P_SIG
};
/* statuses (must match collectives/backends/shm.py) */
enum { DSN_SHM_DONE = 0, DSN_SHM_PENDING = 1, DSN_SHM_ABORT = 2, DSN_SHM_MISMATCH = 3,
       DSN_SHM_NOT_ELIGIBLE = -1 };
#define DSN_SHM_SIG_MISMATCH 5
/* signature slots (shared words on the step word's cache line, which a waiting peer has
 * just read anyway): slot s at DSN_W_SIG + 4 s holds kind | reduce << 4 | root << 8 |
 * dtype << 16, the count of collectives, and the byte count (low, high) */
enum { DSN_W_SIG = 4, DSN_SIG_WORDS = 4 };
/* signature kinds (must match collectives/backends/shm.py) */
enum {
    DSN_SIG_ALLREDUCE = 1, DSN_SIG_BROADCAST, DSN_SIG_REDUCE, DSN_SIG_ALLGATHER,
    DSN_SIG_GATHER, DSN_SIG_SCATTER, DSN_SIG_REDUCE_SCATTER, DSN_SIG_ALL_TO_ALL,
    DSN_SIG_BARRIER, DSN_SIG_ALLREDUCE_SYM, DSN_SIG_ALLGATHER_SYM, DSN_SIG_REDUCE_SCATTER_SYM
};
/* shared words (second cache line of the ctrl block) where a symmetric allreduce
 * publishes what it was given, for the peers to compare: allocation id, byte offset
 * in the region (low, high), element count (low), kernel code */
enum { DSN_W_SYM = 16, DSN_W_SYM_LEN = 5 };
/* shared words of the single-copy allgather: the address of x in its process (low,
 * high); the sizes are compared through the signatures */
enum { DSN_W_CMA_ADDR = 28 };
#define DSN_SHM_CMA_FAILED 4
#define DSN_SHM_MAX_RANKS 256
#define DSN_SHM_SPIN_MIN_NS 100000LL     /* adaptive spin floor, see dsn_shm_wait_all */
#define DSN_SHM_BLOCK 16384             /* bytes reduced then copied while in L1 */
#define DSN_SHM_MAX_SLEEP_NS 2000000LL  /* bound on the cost of a missed wake-up */

static inline int64_t dsn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int32_t *dsn_ctrl(char *base, int r)
{
    return (int32_t *)(base + (size_t)r * DSN_SHM_CTRL);
}

/* cur >= target for wrapping int32 counters */
static inline int dsn_reached(int32_t cur, int32_t target)
{
    return ((uint32_t)cur - (uint32_t)target) < 0x80000000u;
}

/* Sleep while *addr == expected, at most ns; returns 1 if a signal interrupted it. */
static inline int dsn_futex_wait(int32_t *addr, int32_t expected, int64_t ns)
{
#ifdef DSN_HAVE_FUTEX
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
    return r == -1 && errno == EINTR;
#else
    struct timespec ts = {0, ns < 200000 ? (long)ns : 200000L};
    (void)addr; (void)expected;
    nanosleep(&ts, NULL);
    return 0;
#endif
}

static inline void dsn_futex_wake(int32_t *addr)
{
#ifdef DSN_HAVE_FUTEX
    syscall(SYS_futex, addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
#else
    (void)addr;
#endif
}

/* Publish step + 1 (release: the data written before is visible first). */
static inline int32_t dsn_shm_post(int32_t *myc)
{
    int32_t s = (int32_t)((uint32_t)__atomic_load_n(&myc[DSN_W_STEP], __ATOMIC_RELAXED) + 1u);
    __atomic_store_n(&myc[DSN_W_STEP], s, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&myc[DSN_W_SLEEP], __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&myc[DSN_W_SLEEP], 0, __ATOMIC_RELAXED);
        dsn_futex_wake(&myc[DSN_W_STEP]);
    }
    return s;
}

static inline int dsn_any_abort(char *base, int n, int me)
{
    for (int p = 0; p < n; p++)
        if (p != me && __atomic_load_n(&dsn_ctrl(base, p)[DSN_W_ABORT], __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* Wait until peer p's step reached target: spin, then futex. Returns DONE, PENDING
 * (deadline passed, or a signal interrupted the sleep) or ABORT. */
static int dsn_shm_wait_peer(char *base, int32_t *pv, int p, int32_t target, int64_t deadline)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    int32_t *pc = dsn_ctrl(base, p);
    if (dsn_reached(__atomic_load_n(&pc[DSN_W_STEP], __ATOMIC_ACQUIRE), target))
        return DSN_SHM_DONE;
    /* 1) spin: the peer is usually a few microseconds away. The budget adapts:
     * it doubles while waits end during the spin and halves when they end asleep
     * (a late peer, an overloaded machine), so a waiting rank does not keep
     * burning a core its peer needs. */
    int64_t spin = pv[DSN_P_SPIN_CUR], smax = pv[DSN_P_SPIN_MAX];
    /* floor: above a futex wake-up's latency in a VM (tens of us); lower, two
     * ranks can lock each other into sleeping: each wake-up comes too late for
     * the other's spin, which then shrinks further */
    int64_t smin = smax < DSN_SHM_SPIN_MIN_NS ? smax : DSN_SHM_SPIN_MIN_NS;
    int ok = 0;
    if (spin > 0) {
        int64_t end = dsn_now_ns() + spin;
        do {
            for (int i = 0; i < 32; i++) {
                if (dsn_reached(__atomic_load_n(&pc[DSN_W_STEP], __ATOMIC_ACQUIRE), target)) {
                    ok = 1;
                    break;
                }
                DSN_PAUSE();
            }
        } while (!ok && dsn_now_ns() < end);
    }
    if (ok) {
        spin = spin * 2 > smax ? smax : spin * 2;
        pv[DSN_P_SPIN_CUR] = (int32_t)(spin < smin ? smin : spin);
        return DSN_SHM_DONE;
    }
    spin /= 2;
    pv[DSN_P_SPIN_CUR] = (int32_t)(spin < smin ? smin : spin);
    /* 2) sleep in the kernel on the peer's step word */
    for (;;) {
        __atomic_store_n(&pc[DSN_W_SLEEP], 1, __ATOMIC_SEQ_CST);
        int32_t cur = __atomic_load_n(&pc[DSN_W_STEP], __ATOMIC_SEQ_CST);
        if (dsn_reached(cur, target)) break;
        if (dsn_any_abort(base, n, me)) return DSN_SHM_ABORT;
        int64_t now = dsn_now_ns();
        if (now >= deadline) return DSN_SHM_PENDING;
        int64_t ns = deadline - now;
        if (dsn_futex_wait(&pc[DSN_W_STEP], cur,
                           ns < DSN_SHM_MAX_SLEEP_NS ? ns : DSN_SHM_MAX_SLEEP_NS)) {
            /* a signal: return so that Python runs its handler */
            if (dsn_reached(__atomic_load_n(&pc[DSN_W_STEP], __ATOMIC_ACQUIRE), target))
                break;
            return DSN_SHM_PENDING;
        }
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return DSN_SHM_DONE;
}

/* Wait until every peer's step reached target (statuses as dsn_shm_wait_peer). */
static int dsn_shm_wait_all(char *base, int32_t *pv, int32_t target, int64_t deadline)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK], st;
    for (int p = 0; p < n; p++)
        if (p != me && (st = dsn_shm_wait_peer(base, pv, p, target, deadline))) return st;
    return DSN_SHM_DONE;
}

/* The signature of a collective (see DSN_W_SIG): kind, reduce op, root, dtype id (the
 * kernel's dtype + 1, or what Python chose for a plain copy), byte count; word 1, the
 * count of collectives, is filled in by dsn_shm_op_begin. */
static inline void dsn_shm_sig(int32_t *sig, int kind, int reduce, int root, int dtype_id,
                               uint64_t nbytes)
{
    sig[0] = (int32_t)((uint32_t)kind | (uint32_t)reduce << 4 | (uint32_t)(root & 0xff) << 8 |
                       (uint32_t)(dtype_id & 0xff) << 16);
    sig[1] = 0;
    sig[2] = (int32_t)(uint32_t)nbytes;
    sig[3] = (int32_t)(uint32_t)(nbytes >> 32);
}

/* A C op starts (counted once, however often a PENDING call is resumed): fill in the
 * count of collectives. */
static inline void dsn_shm_op_begin(int32_t *pv, int32_t *sig)
{
    if (!pv[DSN_P_INOP]) {
        pv[DSN_P_INOP] = 1;
        pv[DSN_P_OPS] = (int32_t)((uint32_t)pv[DSN_P_OPS] + 1u);
    }
    sig[1] = pv[DSN_P_OPS];
}

/* The op is over unless it only paused (PENDING, or ABORT, which Python turns into an
 * exception but which leaves the state resumable). */
static inline int dsn_shm_op_end(int32_t *pv, int st)
{
    if (st != DSN_SHM_PENDING && st != DSN_SHM_ABORT) pv[DSN_P_INOP] = 0;
    return st;
}

/* Publish this op's signature in slot `slot` (before the post the peers wait for). */
static inline void dsn_shm_put_sig(char *base, int32_t *pv, int slot, const int32_t *sig)
{
    int32_t *myc = dsn_ctrl(base, pv[DSN_P_RANK]);
    int w = DSN_W_SIG + slot * DSN_SIG_WORDS;
    for (int i = 0; i < DSN_SIG_WORDS; i++) myc[w + i] = sig[i];
    pv[DSN_P_SIG] = w;
}

/* After waiting for peer p (or, p < 0, for every peer) to post: 0 when its signature in
 * the slot of pv[DSN_P_SIG] equals this rank's, else DSN_SHM_SIG_MISMATCH (the op
 * state reset: the caller raises and the group is broken). */
static inline int dsn_shm_check_sig(char *base, int32_t *pv, int p)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK], w = pv[DSN_P_SIG];
    const int32_t *mine = dsn_ctrl(base, me) + w;
    for (int r = p < 0 ? 0 : p; r < (p < 0 ? n : p + 1); r++) {
        if (r == me) continue;
        const int32_t *theirs = dsn_ctrl(base, r) + w;
        if (theirs[0] != mine[0] || theirs[1] != mine[1] || theirs[2] != mine[2] ||
            theirs[3] != mine[3]) {
            pv[DSN_P_PHASE] = 0;
            pv[DSN_P_CHUNK] = 0;
            return DSN_SHM_SIG_MISMATCH;
        }
    }
    return DSN_SHM_DONE;
}

/* Begin a round: once every peer posted the first step of the previous round, nobody
 * reads the half used two rounds ago any more; claim it (ROUND & 1 is the half) and
 * publish sig in the signature slot of the same parity. The peers' signatures of the
 * previous round are compared too (all of them have posted it now): that catches the
 * ranks whose part of a mismatched op waited for nobody (a broadcast root) at their
 * next op. Resumable: a PENDING return leaves the round unclaimed. */
static int dsn_shm_begin_round(char *base, int32_t *pv, const int32_t *sig, int64_t deadline)
{
    if (pv[DSN_P_HASPREV]) {
        pv[DSN_P_TARGET] = pv[DSN_P_PREV];
        int st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline);
        if (st) return st;
        pv[DSN_P_SIG] = DSN_W_SIG + (pv[DSN_P_ROUND] & 1) * DSN_SIG_WORDS;
        if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
    }
    pv[DSN_P_ROUND] = (int32_t)((uint32_t)pv[DSN_P_ROUND] + 1u);
    pv[DSN_P_HASPREV] = 1;
    pv[DSN_P_PREV] = (int32_t)((uint32_t)dsn_ctrl(base, pv[DSN_P_RANK])[DSN_W_STEP] + 1u);
    dsn_shm_put_sig(base, pv, pv[DSN_P_ROUND] & 1, sig);
    return DSN_SHM_DONE;
}

/* The chunk a resumable op works on: [*lo, *lo + *c) of total elements, cap at a
 * time. Returns 0 once every chunk is done (and resets the op state). */
static int dsn_shm_chunk(int32_t *pv, size_t total, size_t cap, size_t *lo, size_t *c)
{
    size_t ci = (size_t)(uint32_t)pv[DSN_P_CHUNK];
    if (ci >= (total + cap - 1) / cap) {
        pv[DSN_P_CHUNK] = 0;
        pv[DSN_P_PHASE] = 0;
        return 0;
    }
    *lo = ci * cap;
    *c = total - *lo < cap ? total - *lo : cap;
    return 1;
}

/* This chunk is finished: the next one begins at phase 0. */
static inline void dsn_shm_chunk_done(int32_t *pv)
{
    pv[DSN_P_PHASE] = 0;
    pv[DSN_P_CHUNK] = (int32_t)((uint32_t)pv[DSN_P_CHUNK] + 1u);
}

/* The allreduce state machine (see the file comment); x holds count elements. */
static int dsn_shm_allreduce_run(const dsn_kernels *k, char *base, int32_t *pv, char *x,
                                 size_t count, int dtype, int op, size_t isz,
                                 const int32_t *sig, int64_t deadline)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    size_t C = (size_t)(uint32_t)pv[DSN_P_SLOT];
    char *in = base + (size_t)(uint32_t)pv[DSN_P_IN_OFF];
    char *out = base + (size_t)(uint32_t)pv[DSN_P_OUT_OFF];
    int32_t *myc = dsn_ctrl(base, me);
    int rs = count * isz >= (size_t)(uint32_t)pv[DSN_P_RS_BYTES] && count >= (size_t)n;
    size_t cap = C / isz, lo, m;
    const void *ptrs[DSN_SHM_MAX_RANKS];
    int st;
    while (dsn_shm_chunk(pv, count, cap, &lo, &m)) {
        size_t a = m * (size_t)me / (size_t)n, b = m * (size_t)(me + 1) / (size_t)n;
        char *xc = x + lo * isz;
        int h;
        switch (pv[DSN_P_PHASE]) {
        case 0:
            if ((st = dsn_shm_begin_round(base, pv, sig, deadline))) return st;
            h = pv[DSN_P_ROUND] & 1;
            {
                char *mine = in + ((size_t)me * 2 + (size_t)h) * C;
                if (!rs) {
                    memcpy(mine, xc, m * isz);
                } else {    /* peers never read this rank's own segment */
                    memcpy(mine, xc, a * isz);
                    memcpy(mine + b * isz, xc + b * isz, (m - b) * isz);
                }
            }
            pv[DSN_P_TARGET] = dsn_shm_post(myc);
            pv[DSN_P_PHASE] = 1;
            /* fall through */
        case 1:
            if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
            if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
            h = pv[DSN_P_ROUND] & 1;
            if (!rs) {
                for (int r = 0; r < n; r++) ptrs[r] = in + ((size_t)r * 2 + (size_t)h) * C;
                k->reduce(op, dtype, ptrs, (size_t)n, xc, m);
                dsn_shm_chunk_done(pv);
                continue;
            }
            {
                /* this rank's segment, block by block: reduce into `out` for the
                 * peers and copy the block to x while it is still in L1, so the
                 * final copy-out only moves the peers' segments */
                char *o = out + (size_t)h * C;
                size_t blk = DSN_SHM_BLOCK / isz;
                for (size_t s0 = a; s0 < b; s0 += blk) {
                    size_t e = b - s0 < blk ? b - s0 : blk;
                    for (int r = 0; r < n; r++)
                        ptrs[r] = (r == me ? xc : in + ((size_t)r * 2 + (size_t)h) * C) + s0 * isz;
                    k->reduce(op, dtype, ptrs, (size_t)n, o + s0 * isz, e);
                    memcpy(xc + s0 * isz, o + s0 * isz, e * isz);
                }
            }
            pv[DSN_P_TARGET] = dsn_shm_post(myc);
            pv[DSN_P_PHASE] = 2;
            /* fall through */
        case 2:
            if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
            h = pv[DSN_P_ROUND] & 1;
            memcpy(xc, out + (size_t)h * C, a * isz);
            memcpy(xc + b * isz, out + (size_t)h * C + b * isz, (m - b) * isz);
            dsn_shm_chunk_done(pv);
            continue;
        default:
            return DSN_SHM_NOT_ELIGIBLE;
        }
    }
    return DSN_SHM_DONE;
}

/*
 * The other collectives on the slots, the same protocol as their Python versions in
 * collectives/backends/shm.py (so both interleave freely), for messages where Python's
 * per-round cost would dominate. m is the element count of one rank's piece; per chunk
 * of it (a slot, or a slot / n for reduce-scatter, which stages n pieces per round):
 *   allgather / gather: copy my piece's chunk into my slot, post, wait for all (gather:
 *     the root only), copy every slot into out;
 *   reduce_scatter: copy the chunk of each of my pieces but my own into my slot, post,
 *     wait, and reduce piece `me` of every slot (mine: from x), in rank order, into out;
 *   broadcast: the root copies into its slot; everyone posts; the others wait for the
 *     root and copy out (x is in and out).
 * Resumable like the allreduce (phases 0 and 20).
 */
enum { DSN_COLL_ALLGATHER = 1, DSN_COLL_GATHER = 2, DSN_COLL_REDUCE_SCATTER = 3,
       DSN_COLL_BROADCAST = 4, DSN_COLL_ALLGATHER_CMA = 5, DSN_COLL_BARRIER = 6 };

/* Barrier: one round, post, wait for all, compare signatures (phases 0 and 30). */
static int dsn_shm_barrier_run(char *base, int32_t *pv, const int32_t *sig, int64_t deadline)
{
    int st;
    switch (pv[DSN_P_PHASE]) {
    case 0:
        if ((st = dsn_shm_begin_round(base, pv, sig, deadline))) return st;
        pv[DSN_P_TARGET] = dsn_shm_post(dsn_ctrl(base, pv[DSN_P_RANK]));
        pv[DSN_P_PHASE] = 30;
        /* fall through */
    case 30:
        if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
        if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
        pv[DSN_P_PHASE] = 0;
        return DSN_SHM_DONE;
    default:
        return DSN_SHM_NOT_ELIGIBLE;
    }
}

static int dsn_shm_coll_run(const dsn_kernels *k, char *base, int32_t *pv, int kind,
                            const char *x, char *out, size_t m, int root, int dtype, int op,
                            size_t isz, const int32_t *sig, int64_t deadline)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    size_t C = (size_t)(uint32_t)pv[DSN_P_SLOT];
    char *in = base + (size_t)(uint32_t)pv[DSN_P_IN_OFF];
    int32_t *myc = dsn_ctrl(base, me);
    size_t pieces = kind == DSN_COLL_REDUCE_SCATTER ? (size_t)n : 1;
    size_t cap = C / (isz * pieces), lo, c;
    const void *ptrs[DSN_SHM_MAX_RANKS];
    int st;
    while (dsn_shm_chunk(pv, m, cap, &lo, &c)) {
#define DSN_SLOT(r) (in + ((size_t)(r) * 2 + (size_t)(pv[DSN_P_ROUND] & 1)) * C)
        switch (pv[DSN_P_PHASE]) {
        case 0:
            if ((st = dsn_shm_begin_round(base, pv, sig, deadline))) return st;
            if (kind == DSN_COLL_REDUCE_SCATTER) {
                for (int j = 0; j < n; j++)   /* my own piece is read from x */
                    if (j != me)
                        memcpy(DSN_SLOT(me) + (size_t)j * c * isz,
                               x + ((size_t)j * m + lo) * isz, c * isz);
            } else if (kind != DSN_COLL_BROADCAST || me == root) {
                memcpy(DSN_SLOT(me), x + lo * isz, c * isz);
            }
            pv[DSN_P_TARGET] = dsn_shm_post(myc);
            pv[DSN_P_PHASE] = 20;
            /* fall through */
        case 20:
            if (kind == DSN_COLL_BROADCAST) {
                if (me != root) {
                    if ((st = dsn_shm_wait_peer(base, pv, root, pv[DSN_P_TARGET], deadline)))
                        return st;
                    if ((st = dsn_shm_check_sig(base, pv, root))) return st;
                    memcpy(out + lo * isz, DSN_SLOT(root), c * isz);
                }
            } else if (kind != DSN_COLL_GATHER || me == root) {
                if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
                if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
                if (kind == DSN_COLL_REDUCE_SCATTER) {
                    for (int r = 0; r < n; r++)
                        ptrs[r] = r == me ? x + ((size_t)me * m + lo) * isz
                                          : DSN_SLOT(r) + (size_t)me * c * isz;
                    k->reduce(op, dtype, ptrs, (size_t)n, out + lo * isz, c);
                } else {
                    for (int r = 0; r < n; r++)
                        memcpy(out + ((size_t)r * m + lo) * isz, DSN_SLOT(r), c * isz);
                }
            }
#undef DSN_SLOT
            dsn_shm_chunk_done(pv);
            continue;
        default:
            return DSN_SHM_NOT_ELIGIBLE;
        }
    }
    return DSN_SHM_DONE;
}

/*
 * Single-copy allgather through cross-memory attach (process_vm_readv: the kernel
 * copies straight from a peer's x into out), for large messages where staging through
 * the slots would copy every byte twice. Claim a round (it uses no slot, but its
 * signature goes where a round's does), publish x's address, post, wait for all; check
 * the signatures agree (SIG_MISMATCH: sizes or ops differ); copy my x into out and read
 * every peer's;
 * post, wait for all (nobody reads my x any more). The group turns it on only after
 * every rank could read every peer this way (collectives/backends/shm.py). Phases
 * 60/61; CMA_FAILED, with errno in the private word DSN_P_ERRNO, when a read fails.
 */
static int dsn_shm_allgather_cma_run(char *base, int32_t *pv, const char *x, char *out,
                                     size_t nb, const int32_t *sig, int64_t deadline)
{
#ifdef DSN_HAVE_CMA
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    int32_t *myc = dsn_ctrl(base, me);
    int st;
    switch (pv[DSN_P_PHASE]) {
    case 0:
        if ((st = dsn_shm_begin_round(base, pv, sig, deadline))) return st;
        myc[DSN_W_CMA_ADDR] = (int32_t)(uint32_t)(uintptr_t)x;
        myc[DSN_W_CMA_ADDR + 1] = (int32_t)(uint32_t)((uint64_t)(uintptr_t)x >> 32);
        pv[DSN_P_TARGET] = dsn_shm_post(myc);
        pv[DSN_P_PHASE] = 60;
        /* fall through */
    case 60:
        if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
        if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
        memcpy(out + (size_t)me * nb, x, nb);
        for (int p = 0; p < n; p++) {
            if (p == me) continue;
            int32_t *pc = dsn_ctrl(base, p);
            uint64_t addr = (uint64_t)(uint32_t)pc[DSN_W_CMA_ADDR] |
                            ((uint64_t)(uint32_t)pc[DSN_W_CMA_ADDR + 1] << 32);
            size_t done = 0;
            while (done < nb) {
                struct iovec local = {out + (size_t)p * nb + done, nb - done};
                struct iovec remote = {(void *)(uintptr_t)(addr + done), nb - done};
                ssize_t got = process_vm_readv((pid_t)pc[DSN_W_PID], &local, 1, &remote, 1, 0);
                if (got <= 0) {
                    pv[DSN_P_ERRNO] = got < 0 ? errno : 0;
                    pv[DSN_P_PHASE] = 0;
                    return DSN_SHM_CMA_FAILED;
                }
                done += (size_t)got;
            }
        }
        pv[DSN_P_TARGET] = dsn_shm_post(myc);
        pv[DSN_P_PHASE] = 61;
        /* fall through */
    case 61:
        if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
        pv[DSN_P_PHASE] = 0;
        return DSN_SHM_DONE;
    default:
        return DSN_SHM_NOT_ELIGIBLE;
    }
#else
    (void)base; (void)pv; (void)x; (void)out; (void)nb; (void)sig; (void)deadline;
    return DSN_SHM_NOT_ELIGIBLE;
#endif
}

/*
 * Allreduce of a symmetric buffer: every rank's x lives in shared memory that all ranks
 * map (bufs[r] is rank r's x as mapped in this process), so no staging copy is needed.
 * Claim a round (it uses no slot, but its signature, opsig, goes where a round's does),
 * publish what x is (sig: allocation id, offset, count, code), post (my x holds my
 * input), wait for all, and check that every peer called the same op (else
 * SIG_MISMATCH) and passed the same piece: reading a different one would silently mix
 * unrelated data, so a difference returns MISMATCH on every rank (each compares with
 * all). Then reduce my 1/n segment from every rank's x
 * in rank order into my x, block by block, and copy each block from L1 into every
 * peer's x; post, wait for all (nobody reads or writes my x any more). Each rank reads
 * the message once and writes it once, half of what staging through slots costs.
 * Phases 10 and 11 of the private words make it resumable like the slot allreduce.
 */
static int dsn_shm_sym_allreduce_run(const dsn_kernels *k, char *base, int32_t *pv,
                                     char *const *bufs, const int32_t *sig, size_t count,
                                     int dtype, int op, size_t isz, const int32_t *opsig,
                                     int64_t deadline)
{
    int n = pv[DSN_P_N], me = pv[DSN_P_RANK];
    int32_t *myc = dsn_ctrl(base, me);
    const void *ptrs[DSN_SHM_MAX_RANKS];
    int st;
    switch (pv[DSN_P_PHASE]) {
    case 0:
        if ((st = dsn_shm_begin_round(base, pv, opsig, deadline))) return st;
        for (int i = 0; i < DSN_W_SYM_LEN; i++) myc[DSN_W_SYM + i] = sig[i];
        pv[DSN_P_TARGET] = dsn_shm_post(myc);
        pv[DSN_P_PHASE] = 10;
        /* fall through */
    case 10:
        if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
        if ((st = dsn_shm_check_sig(base, pv, -1))) return st;
        for (int p = 0; p < n; p++)
            if (memcmp(dsn_ctrl(base, p) + DSN_W_SYM, myc + DSN_W_SYM,
                       DSN_W_SYM_LEN * sizeof(int32_t))) {
                pv[DSN_P_PHASE] = 0;
                return DSN_SHM_MISMATCH;
            }
        {
            size_t a = count * (size_t)me / (size_t)n, b = count * (size_t)(me + 1) / (size_t)n;
            size_t blk = DSN_SHM_BLOCK / isz;
            for (size_t s0 = a; s0 < b; s0 += blk) {
                size_t e = b - s0 < blk ? b - s0 : blk;
                for (int r = 0; r < n; r++) ptrs[r] = bufs[r] + s0 * isz;
                k->reduce(op, dtype, ptrs, (size_t)n, bufs[me] + s0 * isz, e);
                for (int r = 0; r < n; r++)
                    if (r != me) memcpy(bufs[r] + s0 * isz, bufs[me] + s0 * isz, e * isz);
            }
        }
        pv[DSN_P_TARGET] = dsn_shm_post(myc);
        pv[DSN_P_PHASE] = 11;
        /* fall through */
    case 11:
        if ((st = dsn_shm_wait_all(base, pv, pv[DSN_P_TARGET], deadline))) return st;
        pv[DSN_P_PHASE] = 0;
        return DSN_SHM_DONE;
    default:
        return DSN_SHM_NOT_ELIGIBLE;
    }
}

#endif /* DSN_SHM_H */
