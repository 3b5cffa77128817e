/*
 * dsn_p2p.c - send/recv of the shared-memory transport in C, one call per message.
 *
 * The protocol is the eager slot protocol of collectives/backends/shm_p2p.py, on the
 * same words, so messages sent here are received there and back (the Python side is
 * the fallback and handles everything this file hands back):
 *
 *   channel (src, dst): int32 words sent, sent-sleepers, acked, acked-sleepers
 *   slots (src, dst, k), k < 2: 64 header bytes (int64 tag, total bytes, bytes in
 *   this chunk, -) + P payload bytes. Message chunk `seq` goes to slot seq % 2 once
 *   the receiver acked chunk seq - 2; the receiver copies it out and bumps acked.
 *
 * p2p_send(state, x, dst, tag, budget_ns) / p2p_recv(state, x, src, tag, budget_ns)
 * move a whole eager message: every chunk, waiting (spin -- yielding the core after
 * the first microseconds -- then futex) for a free slot or the next chunk. Nothing
 * else runs between the user's call and the copy: at 8 bytes the Python path spent
 * several microseconds per call on bookkeeping; a send + recv pair of calls here costs
 * 1.5-2 us in one process on the loaded 2-core test VM, argument parsing included.
 * The GIL is released only to wait and for large copies, so a message that needs
 * neither (a free slot, a chunk already there) costs no thread switch.
 *
 * Statuses: 0 done; 1 pending (the budget ran out, or a signal came, before the next
 * slot or chunk: call again with the same arguments to resume -- the progress is in
 * the state words -- after checking the deadline and the peers' liveness); 2 a peer
 * aborted the group; 3 (recv) the next message is not one for this call (another tag
 * or size, or a single-copy message): nothing consumed, the Python path takes it;
 * -1 not eligible (bad buffer, rank, tag, a single-copy size): nothing touched, the
 * Python path runs and raises its errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include "dsn_common.h"
#include "dsn_p2p.h"
/* the futex, clock, wrap-around and abort helpers of the collectives' kernels; the
 * rest of the header (the collectives themselves) is unused here */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "dsn_shm.h"
#pragma GCC diagnostic pop

#define DSN_P2P_K 2
#define DSN_P2P_HDR 64
#define DSN_P2P_CHAN 64
/* copies from this size on release the GIL: below, the release costs more than it
 * lets other threads do */
#define DSN_P2P_NOGIL_BYTES (64 << 10)

typedef struct {
    int64_t *g;
    char *base;
    int n, me;
} dsn_p2p;

static inline int32_t *p2p_chan(const dsn_p2p *c, int src, int dst)
{
    return (int32_t *)(c->base + c->g[DSN_G_CHAN] + (size_t)(src * c->n + dst) * DSN_P2P_CHAN);
}

static inline char *p2p_slot(const dsn_p2p *c, int src, int dst, int32_t seq)
{
    size_t k = (uint32_t)seq % DSN_P2P_K;
    size_t stride = DSN_P2P_HDR + (size_t)c->g[DSN_G_P];
    return c->base + c->g[DSN_G_SLOTS] + ((size_t)(src * c->n + dst) * DSN_P2P_K + k) * stride;
}

/* Publish `value` in `word` (release: what was written before is visible first) and
 * wake whoever sleeps on it. */
static inline void p2p_post(int32_t *word, int32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(word + 1, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(word + 1, 0, __ATOMIC_RELAXED);
        dsn_futex_wake(word);
    }
}

/* Wait (GIL released by the caller) until *word reached target: spin with the
 * adaptive budget of the state words, then sleep in futex(FUTEX_WAIT) with
 * `word + 1` as the sleepers flag, checking the peers' abort words. DONE, PENDING
 * (deadline, signal) or ABORT. */
static int p2p_wait(const dsn_p2p *c, int32_t *word, int32_t target, int64_t deadline)
{
    int64_t *g = c->g;
    int64_t spin = g[DSN_G_SPIN_CUR], smax = g[DSN_G_SPIN_MAX];
    int64_t smin = smax < DSN_SHM_SPIN_MIN_NS ? smax : DSN_SHM_SPIN_MIN_NS;
    int ok = 0;
    if (spin > 0) {
        /* Past the first microseconds (a peer on its own core answers within them),
         * every round of polls also yields the core: when ranks outnumber free cores
         * the peer may be waiting for this very one, and a futex sleep would come only
         * after the whole budget. With a core to itself, sched_yield returns at once. */
        int64_t now = dsn_now_ns(), end = now + spin, yield_ns = g[DSN_G_YIELD_NS];
        int64_t yield_from = yield_ns < 0 ? INT64_MAX : now + yield_ns;
        do {
            for (int i = 0; i < 32; i++) {
                if (dsn_reached(__atomic_load_n(word, __ATOMIC_ACQUIRE), target)) {
                    ok = 1;
                    break;
                }
                DSN_PAUSE();
            }
            if (ok) break;
            now = dsn_now_ns();
            if (now >= yield_from) sched_yield();
        } while (now < end);
    }
    /* the budget doubles while waits end spinning and halves when they end asleep
     * (see dsn_shm_wait_peer) */
    if (ok) {
        spin = spin * 2 > smax ? smax : spin * 2;
        g[DSN_G_SPIN_CUR] = spin < smin ? smin : spin;
        return DSN_P2P_DONE;
    }
    spin /= 2;
    g[DSN_G_SPIN_CUR] = spin < smin ? smin : spin;
    for (;;) {
        __atomic_store_n(word + 1, 1, __ATOMIC_SEQ_CST);
        int32_t cur = __atomic_load_n(word, __ATOMIC_SEQ_CST);
        if (dsn_reached(cur, target)) break;
        if (dsn_any_abort(c->base, c->n, c->me)) return DSN_P2P_ABORT;
        int64_t now = dsn_now_ns();
        if (now >= deadline) return DSN_P2P_PENDING;
        int64_t ns = deadline - now;
        if (dsn_futex_wait(word, cur, ns < DSN_SHM_MAX_SLEEP_NS ? ns : DSN_SHM_MAX_SLEEP_NS)) {
            if (dsn_reached(__atomic_load_n(word, __ATOMIC_ACQUIRE), target)) break;
            return DSN_P2P_PENDING;  /* a signal: Python runs its handler */
        }
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return DSN_P2P_DONE;
}

/* Wait for *word >= target: at once if it is there, else with the GIL released. */
static inline int p2p_await(const dsn_p2p *c, int32_t *word, int32_t target, int64_t budget)
{
    if (dsn_reached(__atomic_load_n(word, __ATOMIC_ACQUIRE), target)) return DSN_P2P_DONE;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = p2p_wait(c, word, target, dsn_now_ns() + budget);
    Py_END_ALLOW_THREADS
    return st;
}

static inline void p2p_copy(void *dst, const void *src, size_t k)
{
    if (k >= DSN_P2P_NOGIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, src, k);
        Py_END_ALLOW_THREADS
    } else if (k) {
        memcpy(dst, src, k);
    }
}

/* Parse (state, x, peer, tag, budget_ns): 0 with the buffer held, 1 not eligible
 * (nothing held), -1 with an exception (wrong argument types, null state). */
static int p2p_parse(PyObject *const *args, Py_ssize_t nargs, const char *name, int writable,
                     dsn_p2p *c, Py_buffer *view, int *peer, int64_t *tag, long long *budget)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "%s(state, x, peer, tag, budget_ns)", name);
        return -1;
    }
    c->g = (int64_t *)PyLong_AsVoidPtr(args[0]);
    *budget = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) return -1;
    if (!c->g) {
        PyErr_Format(PyExc_ValueError, "%s(): null state", name);
        return -1;
    }
    /* exact ints only (not bool, float, numpy scalars): anything else goes to the
     * Python path, which converts what it accepts and names what it does not */
    if (!PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3])) return 1;
    long p = PyLong_AsLong(args[2]);
    long long t = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) {  /* beyond a C long */
        PyErr_Clear();
        return 1;
    }
    c->base = (char *)(intptr_t)c->g[DSN_G_BASE];
    c->n = (int)c->g[DSN_G_N];
    c->me = (int)c->g[DSN_G_ME];
    if (p < 0 || p >= c->n || p == c->me || t < 0 || t >= (1LL << 31)) return 1;
    *peer = (int)p;
    *tag = t;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(args[1], view, flags) < 0) {
        PyErr_Clear();
        return 1;
    }
    /* object arrays hold pointers, which mean nothing in another process */
    if ((view->format && strchr(view->format, 'O')) ||
        (int64_t)view->len >= c->g[DSN_G_CMA]) {
        PyBuffer_Release(view);
        return 1;
    }
    return 0;
}

/* One message either way: every chunk of x through the channel to / from `peer`,
 * resuming at the progress word of its direction (see the file comment). */
static PyObject *p2p_call(PyObject *const *args, Py_ssize_t nargs, int sending)
{
    dsn_p2p c;
    Py_buffer view;
    int peer;
    int64_t tag;
    long long budget;
    int r = p2p_parse(args, nargs, sending ? "p2p_send" : "p2p_recv", !sending, &c, &view,
                      &peer, &tag, &budget);
    if (r) return r < 0 ? NULL : PyLong_FromLong(DSN_P2P_NOT_ELIGIBLE);
    int64_t *g = c.g, *done = &g[sending ? DSN_G_SEND_DONE : DSN_G_RECV_DONE];
    char *data = (char *)view.buf;
    size_t total = (size_t)view.len, P = (size_t)g[DSN_G_P];
    int src = sending ? c.me : peer, dst = sending ? peer : c.me;
    int32_t *sent = p2p_chan(&c, src, dst), *ack = sent + 2;
    /* the sender waits on the receiver's acks, the receiver on the sender's chunks;
     * each only ever writes its own word, so it is that side's chunk counter */
    int32_t *mine = sending ? sent : ack, *theirs = sending ? ack : sent;
    int st = DSN_P2P_DONE;
    size_t off = (size_t)*done;
    do {
        int32_t seq = __atomic_load_n(mine, __ATOMIC_RELAXED);
        /* a free slot: chunk seq - K acked; a chunk: sent reached seq + 1 */
        int32_t target = (int32_t)((uint32_t)seq + (sending ? 1u - DSN_P2P_K : 1u));
        st = p2p_await(&c, theirs, target, budget);
        if (st) break;
        size_t k = total - off < P ? total - off : P;
        char *slot = p2p_slot(&c, src, dst, seq);
        int64_t *h = (int64_t *)slot;
        if (sending) {
            h[0] = tag;
            h[1] = (int64_t)total;
            h[2] = (int64_t)k;
            p2p_copy(slot + DSN_P2P_HDR, data + off, k);
        } else if (h[0] != tag || h[1] != (int64_t)total || h[2] != (int64_t)k) {
            /* Not ours: another tag or size (the Python path stashes it or raises),
             * or a single-copy header. Only a message's first chunk can be: the
             * sender's lock keeps a message's chunks together on the channel. */
            st = DSN_P2P_OTHER;
            break;
        } else {
            p2p_copy(data + off, slot + DSN_P2P_HDR, k);
        }
        off += k;
        *done = (int64_t)off;
        p2p_post(mine, (int32_t)((uint32_t)seq + 1u));
    } while (off < total);
    if (!st) *done = 0;
    PyBuffer_Release(&view);
    return PyLong_FromLong(st);
}

PyObject *dsn_py_p2p_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return p2p_call(args, nargs, 1);
}

PyObject *dsn_py_p2p_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return p2p_call(args, nargs, 0);
}
