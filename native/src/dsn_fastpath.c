/*
 * dsn_fastpath.c - the C fast path of Function.apply (deepseek/autograd/function.py).
 *
 * Function.apply is the engine's single dispatch point. When nothing intercepts ops
 * (no dispatch mode entered in any thread, no global dispatch hook), an op call is
 * always the same sequence: unwrap the Tensor arguments, build a Context, call the
 * op's Python forward on raw arrays, wrap the outputs in Tensors and, with grad,
 * record the graph node. This file does that sequence in C, with the Tensor and
 * Context slots written directly (their offsets are read once from the classes'
 * member descriptors). The op itself stays the Python forward/backward pair.
 *
 * Anything unusual is handed back to Python helpers given at init: the hooked path
 * (global hooks: the whole call goes to Python; dispatch modes: the op goes to the
 * innermost mode of this context, and the call the mode makes with itself popped
 * runs here again), outputs that are not ndarrays, view
 * ops' version-counter sharing, a leaf's first AccumulateGrad node, multi-output
 * shapes, non-differentiable outputs and unseen output dtypes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* Python objects given by fastpath_init (strong references, kept for the process). */
static PyObject *T_tensor, *T_context, *T_ndarray;
static PyObject *F_slow;        /* slow(cls, args, kwargs): the full Python apply */
static PyObject *F_output;      /* output(o) -> ndarray (numpy scalars, cupy arrays) */
static PyObject *F_view;        /* view(src, outs): share version counters of views */
static PyObject *F_edge;        /* edge(t): (node, nr) of a leaf without its node yet */
static PyObject *F_multi;       /* multi(ctx, outs): record out_shapes */
static PyObject *F_floating;    /* floating(dtype) -> bool (cache misses only) */
static PyObject *O_seq;         /* itertools.count shared with the Python path */
static PyObject *O_grad_state;  /* grad_mode._state (threading.local, .enabled) */
static PyObject *D_floating;    /* dtype -> bool cache */
static PyObject *O_modes;       /* dispatch_mode._modes (ContextVar: this context's stack) */
static PyObject *F_in_mode;     /* run_in_mode(cls, args, kwargs, modes) */
static int hooked = 1;          /* until init: everything goes to Python */
/* While only dispatch modes are active (no global hook), `hooked` is true for every
 * thread but only the contexts that entered a mode have a non-empty stack. With
 * `modes_only` set, apply reads this context's stack and, when it is empty (another
 * thread's mode, or the inner call a mode's __dispatch__ makes with itself popped),
 * runs the op here instead of paying the Python path; a non-empty stack goes straight
 * to run_in_mode. */
static int modes_only = 0;

/* slot offsets */
static Py_ssize_t t_data, t_rg, t_grad, t_fn, t_nr, t_vc, t_acc, t_hooks, t_post, t_owned;
static Py_ssize_t c_fn, c_edges, c_nig, c_seq, c_saved, c_checks, c_nout, c_ohooks, c_freed,
    c_nd;

static PyObject *S_forward, *S_is_view, *S_enabled, *S_dtype, *S_shape;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static void slot_set(PyObject *o, Py_ssize_t off, PyObject *v) /* steals v */
{
    PyObject *old = SLOT(o, off);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static int slot_offset(PyObject *type, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyObject_GetAttrString(type, name);
    if (!d) return -1;
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "fastpath_init(): %R.%s is not an object slot", type,
                     name);
        Py_DECREF(d);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

static int truthy(PyObject *o)
{
    if (o == Py_True) return 1;
    if (o == Py_False || o == NULL || o == Py_None) return 0;
    return PyObject_IsTrue(o);
}

/* A new Tensor around `data` (a reference is taken), as Tensor._make does. */
static PyObject *make_tensor(PyObject *data)
{
    PyTypeObject *tp = (PyTypeObject *)T_tensor;
    PyObject *t = tp->tp_alloc(tp, 0);
    if (!t) return NULL;
    PyObject *vc = PyList_New(1);
    if (!vc) { Py_DECREF(t); return NULL; }
    PyList_SET_ITEM(vc, 0, PyLong_FromLong(0));
    SLOT(t, t_data) = Py_NewRef(data);
    SLOT(t, t_rg) = Py_NewRef(Py_False);
    SLOT(t, t_grad) = Py_NewRef(Py_None);
    SLOT(t, t_fn) = Py_NewRef(Py_None);
    SLOT(t, t_nr) = PyLong_FromLong(0);
    SLOT(t, t_vc) = vc;
    SLOT(t, t_acc) = Py_NewRef(Py_None);
    SLOT(t, t_hooks) = Py_NewRef(Py_None);
    SLOT(t, t_post) = Py_NewRef(Py_None);
    SLOT(t, t_owned) = Py_NewRef(Py_False);
    return t;
}

static PyObject *make_context(PyObject *cls)
{
    PyTypeObject *tp = (PyTypeObject *)T_context;
    PyObject *c = tp->tp_alloc(tp, 0);
    if (!c) return NULL;
    SLOT(c, c_fn) = Py_NewRef(cls);
    SLOT(c, c_saved) = PyTuple_New(0);
    SLOT(c, c_checks) = Py_NewRef(Py_None);
    SLOT(c, c_ohooks) = Py_NewRef(Py_None);
    SLOT(c, c_freed) = Py_NewRef(Py_False);
    SLOT(c, c_nd) = Py_NewRef(Py_None);
    SLOT(c, c_nig) = PyTuple_New(0);
    return c;
}

/* kwargs dict from a vectorcall's keyword part (NULL kwnames: an empty dict). */
static PyObject *kwargs_dict(PyObject *const *kwvals, PyObject *kwnames)
{
    PyObject *kw = PyDict_New();
    if (!kw || !kwnames) return kw;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), kwvals[i]) < 0) {
            Py_DECREF(kw);
            return NULL;
        }
    }
    return kw;
}

static PyObject *call_slow(PyObject *cls, PyObject *const *args, Py_ssize_t n,
                           PyObject *kwnames)
{
    PyObject *tup = PyTuple_New(n);
    if (!tup) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(tup, i, Py_NewRef(args[i]));
    PyObject *kw = kwargs_dict(args + n, kwnames);
    if (!kw) { Py_DECREF(tup); return NULL; }
    PyObject *r = PyObject_CallFunctionObjArgs(F_slow, cls, tup, kw, NULL);
    Py_DECREF(tup);
    Py_DECREF(kw);
    return r;
}

/* The op handed to the innermost mode of `modes` (this context's non-empty stack). */
static PyObject *call_in_mode(PyObject *cls, PyObject *const *args, Py_ssize_t n,
                              PyObject *kwnames, PyObject *modes)
{
    PyObject *tup = PyTuple_New(n);
    if (!tup) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(tup, i, Py_NewRef(args[i]));
    PyObject *kw = kwargs_dict(args + n, kwnames);
    if (!kw) { Py_DECREF(tup); return NULL; }
    PyObject *r = PyObject_CallFunctionObjArgs(F_in_mode, cls, tup, kw, modes, NULL);
    Py_DECREF(tup);
    Py_DECREF(kw);
    return r;
}

/* Is `dtype` one whose outputs carry gradient (floating)? -1 on error. */
static int is_floating(PyObject *arr)
{
    PyObject *dt = PyObject_GetAttr(arr, S_dtype);
    if (!dt) return -1;
    PyObject *v = PyDict_GetItemWithError(D_floating, dt);
    if (!v) {
        if (PyErr_Occurred()) { Py_DECREF(dt); return -1; }
        v = PyObject_CallOneArg(F_floating, dt);
        if (!v || PyDict_SetItem(D_floating, dt, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(dt);
            return -1;
        }
        Py_DECREF(v);  /* the dict holds it */
    }
    Py_DECREF(dt);
    return v == Py_True;
}

/* The graph edge of argument tensor t (new reference). */
static PyObject *edge_of(PyObject *t)
{
    PyObject *fn = SLOT(t, t_fn);
    if (fn && fn != Py_None) return PyTuple_Pack(2, fn, SLOT(t, t_nr));
    /* t._acc: a weak reference to the leaf's AccumulateGrad node (function.acc_node) */
    PyObject *ref = SLOT(t, t_acc);
    if (ref && ref != Py_None && PyWeakref_CheckRef(ref)) {
        PyObject *acc = PyWeakref_GetObject(ref);     /* borrowed; None once freed */
        if (acc && acc != Py_None) {
            PyObject *zero = PyLong_FromLong(0);
            PyObject *e = PyTuple_Pack(2, acc, zero);
            Py_DECREF(zero);
            return e;
        }
    }
    return PyObject_CallOneArg(F_edge, t);
}

/* ctx.saved_checks: (version counter, version, index, shape) of each saved array that
 * is the data of an argument or output tensor (in-place writes are caught at backward). */
static int saved_checks(PyObject *ctx, PyObject *saved, PyObject *const *args, Py_ssize_t n,
                        PyObject **outs, Py_ssize_t nout)
{
    PyObject *checks = PyList_New(0);
    if (!checks) return -1;
    Py_ssize_t ns = PyTuple_GET_SIZE(saved);
    for (Py_ssize_t k = 0; k < ns; k++) {
        PyObject *s = PyTuple_GET_ITEM(saved, k);
        PyObject *owner = NULL;
        for (Py_ssize_t i = 0; i < n + nout && !owner; i++) {
            PyObject *t = i < n ? args[i] : outs[i - n];
            if (PyObject_TypeCheck(t, (PyTypeObject *)T_tensor) && SLOT(t, t_data) == s)
                owner = t;
        }
        if (!owner) continue;
        PyObject *vc = SLOT(owner, t_vc);
        PyObject *ver = PyList_Check(vc) && PyList_GET_SIZE(vc) ? PyList_GET_ITEM(vc, 0)
                                                                 : NULL;
        PyObject *shape = PyObject_GetAttr(s, S_shape);
        PyObject *shape_t = shape ? PySequence_Tuple(shape) : NULL;
        Py_XDECREF(shape);
        PyObject *idx = PyLong_FromSsize_t(k);
        PyObject *rec = (ver && shape_t && idx) ? PyTuple_Pack(4, vc, ver, idx, shape_t) : NULL;
        Py_XDECREF(shape_t);
        Py_XDECREF(idx);
        if (!rec || PyList_Append(checks, rec) < 0) {
            if (!rec && !PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "saved_checks: bad version counter");
            Py_XDECREF(rec);
            Py_DECREF(checks);
            return -1;
        }
        Py_DECREF(rec);
    }
    slot_set(ctx, c_checks, checks);
    return 0;
}

#define SMALL 8

/* apply(cls, *args, **kwargs): bound as the classmethod Function.apply. */
static PyObject *py_fast_apply(PyObject *self, PyObject *const *argv, size_t nargsf,
                               PyObject *kwnames)
{
    Py_ssize_t nall = PyVectorcall_NARGS(nargsf);
    if (nall < 1) {
        PyErr_SetString(PyExc_TypeError, "apply() needs the Function class");
        return NULL;
    }
    PyObject *cls = argv[0];
    PyObject *const *args = argv + 1;
    Py_ssize_t n = nall - 1;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (hooked) {
        if (!modes_only) return call_slow(cls, args, n, kwnames);
        PyObject *modes = NULL;
        if (PyContextVar_Get(O_modes, NULL, &modes) < 0) return NULL;
        int active = modes && (!PyTuple_Check(modes) || PyTuple_GET_SIZE(modes) > 0);
        if (active) {
            PyObject *r = call_in_mode(cls, args, n, kwnames, modes);
            Py_DECREF(modes);
            return r;
        }
        Py_XDECREF(modes);
    }

    PyObject *forward = PyObject_GetAttr(cls, S_forward);
    if (!forward) return NULL;

    PyObject *small[SMALL + 1];
    PyObject **fargs = small;
    if (n + nkw + 1 > SMALL + 1) {
        fargs = PyMem_Malloc(sizeof(PyObject *) * (size_t)(n + nkw + 1));
        if (!fargs) { Py_DECREF(forward); return PyErr_NoMemory(); }
    }
    PyObject *result = NULL, *ctx = NULL, *raw = NULL;
    PyObject *outs_small[SMALL];
    PyObject **outs = outs_small;
    Py_ssize_t nout = 0, made = 0;
    int needs = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = args[i];
        if (PyObject_TypeCheck(a, (PyTypeObject *)T_tensor)) {
            fargs[i + 1] = SLOT(a, t_data);
            if (!fargs[i + 1]) {
                PyErr_SetString(PyExc_AttributeError, "Tensor without data");
                goto done;
            }
            if (!needs) {
                int r = truthy(SLOT(a, t_rg));
                if (r < 0) goto done;
                needs = r;
            }
        } else {
            fargs[i + 1] = a;
        }
    }
    for (Py_ssize_t i = 0; i < nkw; i++) fargs[n + 1 + i] = args[n + i];
    if (needs) {
        PyObject *en = PyObject_GetAttr(O_grad_state, S_enabled);
        if (!en) goto done;
        needs = truthy(en);
        Py_DECREF(en);
        if (needs < 0) goto done;
    }
    ctx = make_context(cls);
    if (!ctx) goto done;
    if (needs) {
        PyObject *nig = PyTuple_New(n);
        if (!nig) goto done;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *a = args[i];
            int r = PyObject_TypeCheck(a, (PyTypeObject *)T_tensor) ? truthy(SLOT(a, t_rg)) : 0;
            if (r < 0) { Py_DECREF(nig); goto done; }
            PyTuple_SET_ITEM(nig, i, Py_NewRef(r ? Py_True : Py_False));
        }
        slot_set(ctx, c_nig, nig);
    }
    fargs[0] = ctx;
    raw = PyObject_Vectorcall(forward, fargs, (size_t)(n + 1), kwnames);
    if (!raw) goto done;

    int multi = PyTuple_Check(raw);
    nout = multi ? PyTuple_GET_SIZE(raw) : 1;
    if (nout > SMALL) {
        outs = PyMem_Malloc(sizeof(PyObject *) * (size_t)nout);
        if (!outs) { PyErr_NoMemory(); goto done; }
    }
    for (; made < nout; made++) {
        PyObject *o = multi ? PyTuple_GET_ITEM(raw, made) : raw;
        PyObject *t;
        if ((PyObject *)Py_TYPE(o) == T_ndarray) {
            t = make_tensor(o);
        } else {
            PyObject *arr = PyObject_CallOneArg(F_output, o);
            if (!arr) goto done;
            t = make_tensor(arr);
            Py_DECREF(arr);
        }
        if (!t) goto done;
        outs[made] = t;
    }
    PyObject *tup = NULL;
    if (multi || needs) {
        tup = PyTuple_New(nout);
        if (!tup) goto done;
        for (Py_ssize_t i = 0; i < nout; i++) PyTuple_SET_ITEM(tup, i, Py_NewRef(outs[i]));
    }
    PyObject *is_view = PyObject_GetAttr(cls, S_is_view);
    if (!is_view) { Py_XDECREF(tup); goto done; }
    int view = truthy(is_view);
    Py_DECREF(is_view);
    if (view < 0) { Py_XDECREF(tup); goto done; }
    if (view && n > 0 && PyObject_TypeCheck(args[0], (PyTypeObject *)T_tensor)) {
        PyObject *src_outs = tup ? Py_NewRef(tup) : PyTuple_Pack(1, outs[0]);
        PyObject *r = src_outs ? PyObject_CallFunctionObjArgs(F_view, args[0], src_outs, NULL)
                               : NULL;
        Py_XDECREF(src_outs);
        if (!r) { Py_XDECREF(tup); goto done; }
        Py_DECREF(r);
    }
    if (needs) {
        PyObject *seq = PyIter_Next(O_seq);
        if (!seq) { Py_DECREF(tup); goto done; }
        slot_set(ctx, c_seq, seq);
        slot_set(ctx, c_nout, PyLong_FromSsize_t(nout));
        if (multi) {
            PyObject *r = PyObject_CallFunctionObjArgs(F_multi, ctx, tup, NULL);
            if (!r) { Py_DECREF(tup); goto done; }
            Py_DECREF(r);
        }
        PyObject *edges = PyTuple_New(n);
        if (!edges) { Py_DECREF(tup); goto done; }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *a = args[i], *e;
            if (PyObject_TypeCheck(a, (PyTypeObject *)T_tensor) && truthy(SLOT(a, t_rg)) > 0) {
                e = edge_of(a);
                if (!e) { Py_DECREF(edges); Py_DECREF(tup); goto done; }
            } else {
                e = Py_NewRef(Py_None);
            }
            PyTuple_SET_ITEM(edges, i, e);
        }
        slot_set(ctx, c_edges, edges);
        PyObject *nd = SLOT(ctx, c_nd);
        for (Py_ssize_t i = 0; i < nout; i++) {
            PyObject *data = SLOT(outs[i], t_data);
            int f = is_floating(data);
            if (f < 0) { Py_DECREF(tup); goto done; }
            if (!f) continue;
            if (nd && nd != Py_None) {
                PyObject *id = PyLong_FromVoidPtr(data);
                int in = id ? PySequence_Contains(nd, id) : -1;
                Py_XDECREF(id);
                if (in < 0) { Py_DECREF(tup); goto done; }
                if (in) continue;
            }
            slot_set(outs[i], t_rg, Py_NewRef(Py_True));
            slot_set(outs[i], t_fn, Py_NewRef(ctx));
            slot_set(outs[i], t_nr, PyLong_FromSsize_t(i));
        }
        PyObject *saved = SLOT(ctx, c_saved);
        if (saved && PyTuple_Check(saved) && PyTuple_GET_SIZE(saved)) {
            if (saved_checks(ctx, saved, args, n, outs, nout) < 0) { Py_DECREF(tup); goto done; }
        }
    }
    if (multi) result = tup;
    else {
        result = Py_NewRef(outs[0]);
        Py_XDECREF(tup);
    }
done:
    for (Py_ssize_t i = 0; i < made; i++) Py_DECREF(outs[i]);
    if (outs != outs_small) PyMem_Free(outs);
    if (fargs != small) PyMem_Free(fargs);
    Py_XDECREF(raw);
    Py_XDECREF(ctx);
    Py_DECREF(forward);
    return result;
}

/* fastpath_init(Tensor, Context, ndarray, slow, output, view, edge, multi, floating,
 *               seq, grad_state) */
static PyObject *py_fastpath_init(PyObject *self, PyObject *args)
{
    PyObject *o[11];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO:fastpath_init", &o[0], &o[1], &o[2], &o[3],
                          &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10]))
        return NULL;
    for (int i = 0; i < 3; i++) {
        if (!PyType_Check(o[i])) {
            PyErr_SetString(PyExc_TypeError, "fastpath_init(): the first three must be types");
            return NULL;
        }
    }
    static const char *tn[] = {"_data", "requires_grad", "_grad", "grad_fn", "_out_nr", "_vc",
                               "_acc", "_hooks", "_post_hooks", "_grad_owned"};
    Py_ssize_t *to[] = {&t_data, &t_rg, &t_grad, &t_fn, &t_nr, &t_vc, &t_acc, &t_hooks, &t_post,
                        &t_owned};
    for (int i = 0; i < 10; i++)
        if (slot_offset(o[0], tn[i], to[i]) < 0) return NULL;
    static const char *cn[] = {"fn", "next_edges", "needs_input_grad", "seq", "saved",
                               "saved_checks", "n_outputs", "out_hooks", "freed",
                               "non_differentiable"};
    Py_ssize_t *co[] = {&c_fn, &c_edges, &c_nig, &c_seq, &c_saved, &c_checks, &c_nout, &c_ohooks,
                        &c_freed, &c_nd};
    for (int i = 0; i < 10; i++)
        if (slot_offset(o[1], cn[i], co[i]) < 0) return NULL;
    PyObject **dst[] = {&T_tensor, &T_context, &T_ndarray, &F_slow, &F_output, &F_view, &F_edge,
                        &F_multi, &F_floating, &O_seq, &O_grad_state};
    for (int i = 0; i < 11; i++) Py_XSETREF(*dst[i], Py_NewRef(o[i]));
    if (!D_floating && !(D_floating = PyDict_New())) return NULL;
#define INTERN(var, s) if (!var && !(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(S_forward, "forward");
    INTERN(S_is_view, "is_view");
    INTERN(S_enabled, "enabled");
    INTERN(S_dtype, "dtype");
    INTERN(S_shape, "shape");
#undef INTERN
    Py_RETURN_NONE;
}

/* fastpath_set_hooked(flag): while true every apply goes to the Python path. */
static PyObject *py_fastpath_set_hooked(PyObject *self, PyObject *arg)
{
    int r = PyObject_IsTrue(arg);
    if (r < 0) return NULL;
    hooked = r || !T_tensor;
    Py_RETURN_NONE;
}

/* fastpath_modes(modes_var, run_in_mode): where apply finds this context's mode stack
 * and how it hands an op to the innermost mode (see modes_only). */
static PyObject *py_fastpath_modes(PyObject *self, PyObject *args)
{
    PyObject *var, *fn;
    if (!PyArg_ParseTuple(args, "OO:fastpath_modes", &var, &fn)) return NULL;
    if (!PyContextVar_CheckExact(var) || !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError,
                        "fastpath_modes(): needs a ContextVar and a callable");
        return NULL;
    }
    Py_XSETREF(O_modes, Py_NewRef(var));
    Py_XSETREF(F_in_mode, Py_NewRef(fn));
    Py_RETURN_NONE;
}

/* fastpath_set_modes_only(flag): true while modes are active but no global hook is
 * installed (apply then asks the context's mode stack itself). */
static PyObject *py_fastpath_set_modes_only(PyObject *self, PyObject *arg)
{
    int r = PyObject_IsTrue(arg);
    if (r < 0) return NULL;
    modes_only = r && O_modes && F_in_mode && T_tensor;
    Py_RETURN_NONE;
}

PyMethodDef dsn_fastpath_methods[] = {
    {"fast_apply", (PyCFunction)(void (*)(void))py_fast_apply, METH_FASTCALL | METH_KEYWORDS,
     "fast_apply(cls, *args, **kwargs): Function.apply without modes or hooks "
     "(private: deepseek.autograd.function)"},
    {"fastpath_init", py_fastpath_init, METH_VARARGS, "(private: deepseek.autograd.function)"},
    {"fastpath_set_hooked", py_fastpath_set_hooked, METH_O,
     "(private: deepseek.autograd.function)"},
    {"fastpath_modes", py_fastpath_modes, METH_VARARGS, "(private: deepseek.autograd.function)"},
    {"fastpath_set_modes_only", py_fastpath_set_modes_only, METH_O,
     "(private: deepseek.autograd.function)"},
    {NULL, NULL, 0, NULL},
};
