/*
 * dsn_p2p.h - the C send/recv of the shared-memory transport (dsn_p2p.c).
 *
 * The protocol is that of collectives/backends/shm_p2p.py; the Python side keeps a
 * small int64 "state" array per transport whose address every call gets. Its words
 * (must match shm_p2p.py):
 */
#ifndef DSN_P2P_H
#define DSN_P2P_H

#include <Python.h>

enum {
    DSN_G_BASE = 0,     /* address of the segment */
    DSN_G_N,            /* ranks */
    DSN_G_ME,           /* this rank */
    DSN_G_CHAN,         /* byte offset of the channel blocks */
    DSN_G_SLOTS,        /* byte offset of the p2p slots */
    DSN_G_P,            /* payload bytes per slot */
    DSN_G_SPIN_MAX,     /* spin budget bounds (ns) and the adaptive current one */
    DSN_G_SPIN_CUR,
    DSN_G_CMA,          /* messages from this size on take the single-copy path */
    DSN_G_SEND_DONE,    /* bytes of the current send / recv already moved (resume) */
    DSN_G_RECV_DONE,
    DSN_G_YIELD_NS,     /* spinning yields the core (sched_yield) after this long; <0 never */
    DSN_G_WORDS
};

/* statuses (must match shm_p2p.py) */
enum { DSN_P2P_DONE = 0, DSN_P2P_PENDING = 1, DSN_P2P_ABORT = 2, DSN_P2P_OTHER = 3,
       DSN_P2P_NOT_ELIGIBLE = -1 };

PyObject *dsn_py_p2p_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *dsn_py_p2p_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
