"""The backward engine: an iterative walk of the graph in reverse creation order.

Nodes run when every gradient flowing into them has arrived (dependency counting),
and among ready nodes the most recently created runs first. Leaf gradients are
accumulated as soon as they are complete, and post-accumulate-grad hooks fire right
then, so distributed training can start communicating while backward still runs.
"""
import heapq

import numpy as _np
import threading

from .function import AccumulateGrad, acc_node
from .grad_mode import _state


class _Callbacks(threading.local):
    def __init__(self):
        self.pending = []
        self.depth = 0


_callbacks = _Callbacks()


def queue_callback(fn):
    """Run ``fn()`` once when the backward pass now running in this thread finishes
    (PyTorch's ``Variable._execution_engine.queue_callback``; DDP waits for its
    gradient buckets there). Outside a backward pass it raises."""
    if _callbacks.depth == 0:
        raise RuntimeError("queue_callback() can only be called while backward is running")
    _callbacks.pending.append(fn)


def _add(buf, g):
    if buf is None:
        return g
    if g is None:
        return buf
    return buf + g  # out of place: buf may alias another node's gradient


def _collect(roots):
    """Dependency counts of every node reachable from ``roots`` (iteratively)."""
    deps = {}
    seen = set()
    stack = [n for n in roots]
    for n in roots:
        seen.add(n)
    while stack:
        node = stack.pop()
        if isinstance(node, AccumulateGrad):
            continue
        for edge in node.next_edges:
            if edge is None:
                continue
            nxt = edge[0]
            deps[nxt] = deps.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return deps


def run_backward(tensors, grad_tensors, retain_graph=False, inputs=None, accumulate=True):
    """Backpropagate from ``tensors`` seeded with ``grad_tensors`` (raw arrays).

    With ``inputs`` (a list of tensors) and ``accumulate=False`` the gradients of
    those inputs are returned instead of being accumulated into ``.grad``.
    """
    roots = []
    buffers = {}
    for t, g in zip(tensors, grad_tensors):
        if t.grad_fn is None:
            if not t.requires_grad:
                raise RuntimeError("element 0 of tensors does not require grad and does not "
                                   "have a grad_fn: nothing to backpropagate through")
            node, nr = acc_node(t), 0
        else:
            node, nr = t.grad_fn, t._out_nr
        if node not in buffers:
            roots.append(node)
            buffers[node] = [None] * (1 if isinstance(node, AccumulateGrad) else node.n_outputs)
        buffers[node][nr] = _add(buffers[node][nr], g)

    capture = None
    if inputs is not None:
        capture = {}
        for i, t in enumerate(inputs):
            if t.grad_fn is not None:
                key = (t.grad_fn, t._out_nr)
            else:
                if not t.requires_grad:
                    raise RuntimeError(f"input {i} of autograd.grad does not require grad")
                key = (acc_node(t), 0)
            capture.setdefault(key, []).append(i)
        results = [None] * len(inputs)

    deps = _collect(roots)
    ready = []
    for n in roots:
        if deps.get(n, 0) == 0:
            heapq.heappush(ready, (-n.seq, id(n), n))
    _callbacks.depth += 1
    try:
        _drain(ready, buffers, deps, capture, results if capture is not None else None,
               accumulate, not retain_graph)
        if _callbacks.depth == 1:
            # callbacks may queue more callbacks; run until none is left
            while _callbacks.pending:
                _callbacks.pending.pop(0)()
    finally:
        _callbacks.depth -= 1
        if _callbacks.depth == 0:
            _callbacks.pending.clear()
    return results if capture is not None else None


def _drain(ready, buffers, deps, capture, results, accumulate, release):
    """Run ready nodes until the graph is exhausted (grad mode off meanwhile). With
    ``release`` (no retain_graph) each node frees its saved arrays right after its
    backward, as PyTorch does: the activations of the layers already walked do not
    stay alive until the end of the pass (they were half the backward peak)."""
    prev = _state.enabled
    _state.enabled = False
    try:
        _drain_nodes(ready, buffers, deps, capture, results, accumulate, release)
    finally:
        _state.enabled = prev


def _drain_nodes(ready, buffers, deps, capture, results, accumulate, release):
    # The per-node loop of backward: kept flat (no helper calls on the common path,
    # exact type tests before isinstance) because it runs once per graph node.
    pop, push, Acc = heapq.heappop, heapq.heappush, AccumulateGrad
    ndarray, generic, Tensor = _np.ndarray, _np.generic, _tensor_cls()
    owned = set()  # (node, output nr) whose gradient buffer is a sum made here
    while ready:
        node = pop(ready)[2]
        grads = buffers.pop(node)
        if type(node) is Acc:
            _accumulate(node, grads[0], capture, results, accumulate)
            continue
        if node.out_hooks:
            for nr, hooks in node.out_hooks.items():
                for hook in hooks:
                    grads[nr] = _run_hook(hook, grads[nr])
        if capture is not None:
            for nr in range(len(grads)):
                for i in capture.get((node, nr), ()):
                    results[i] = grads[nr]
        edges = node.next_edges
        if len(grads) == 1:
            if grads[0] is None:
                in_grads = (None,) * len(edges)
            else:
                in_grads = node.run_backward(grads)
        elif all(g is None for g in grads):
            in_grads = (None,) * len(edges)
        else:
            if any(g is None for g in grads):
                grads = _materialize(node, grads)
            in_grads = node.run_backward(grads)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) < len(edges):
            in_grads = tuple(in_grads) + (None,) * (len(edges) - len(in_grads))
        if release:
            node.release()
        sent = None
        for edge, g in zip(edges, in_grads):
            if edge is None:
                continue
            nxt, nr = edge
            if g is not None:
                if type(g) is not ndarray and isinstance(g, Tensor):
                    g = g._data
                if type(nxt) is Acc:
                    # one array handed to two leaves (e.g. by add's backward) must not
                    # become both their .grad: give later ones a copy
                    if sent is None:
                        sent = {id(g)}
                    elif id(g) in sent:
                        g = g.copy()
                    else:
                        sent.add(id(g))
            buf = buffers.get(nxt)
            if buf is None:
                buf = buffers[nxt] = [None] * (1 if type(nxt) is Acc else nxt.n_outputs)
            if g is not None:
                cur = buf[nr]
                if cur is None:
                    buf[nr] = g
                elif (nxt, nr) in owned and cur.shape == g.shape and cur.dtype == g.dtype \
                        and not isinstance(cur, generic):
                    cur += g  # a sum this loop made: in place (one pass, no new array)
                else:
                    # out of place: cur may alias another node's gradient or an input;
                    # the fresh sum is ours, so later gradients are added into it
                    buf[nr] = cur + g
                    owned.add((nxt, nr))
            left = deps[nxt] - 1
            deps[nxt] = left
            if left == 0:
                push(ready, (-nxt.seq, id(nxt), nxt))


_TENSOR = []


def _tensor_cls():
    """deepseek.Tensor (imported once: the engine loads before it exists)."""
    if not _TENSOR:
        from .._tensor import Tensor
        _TENSOR.append(Tensor)
    return _TENSOR[0]


def _as_array(g):
    return g._data if isinstance(g, _tensor_cls()) else g


def _run_hook(hook, g):
    """Tensor hooks see and may replace the gradient (as a Tensor)."""
    if g is None:
        return None
    if isinstance(g, _np.generic):
        g = _np.array(g)
    out = hook(_tensor_cls()._make(g))
    return g if out is None else _as_array(out)


def _materialize(node, grads):
    """Missing gradients of a multi-output op become zeros of the output's shape."""
    shapes = getattr(node, "out_shapes", None)
    ref = next(g for g in grads if g is not None)
    import numpy as np  # backend-agnostic zeros via the reference grad's module
    from ..backend import get_array_module
    xp = get_array_module(ref)
    out = []
    for i, g in enumerate(grads):
        if g is None:
            if shapes is None:
                raise RuntimeError(f"{node.name()} has several outputs but did not record "
                                   "out_shapes to build zero gradients")
            g = xp.zeros(shapes[i], dtype=ref.dtype)
        out.append(g)
    del np
    return out


def _accumulate(node, g, capture, results, accumulate):
    t = node.tensor
    if g is None:
        return
    if t._hooks:
        for hook in t._hooks:
            g = _run_hook(hook, g)
    if capture is not None:
        idx = capture.get((node, 0))
        if idx:
            for i in idx:
                results[i] = g
        return
    if not accumulate:
        return
    if g.dtype != t._data.dtype:
        g = g.astype(t._data.dtype)
    if isinstance(g, _np.generic):  # numpy ops on 0-d arrays return scalars
        g = _np.array(g)
    if g.shape != t._data.shape:
        raise RuntimeError(f"gradient of shape {g.shape} does not match parameter of shape "
                           f"{t._data.shape} in AccumulateGrad")
    t._accumulate_grad(g)
    if t._post_hooks:
        for hook in t._post_hooks:
            hook(t)
