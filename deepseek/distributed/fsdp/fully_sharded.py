"""FullyShardedDataParallel: ZeRO-2 (SHARD_GRAD_OP) and ZeRO-3 (FULL_SHARD).

PyTorch FSDP's shape::

    model = FullyShardedDataParallel(model, sharding_strategy="FULL_SHARD",
                                     auto_wrap_policy=ModuleWrapPolicy({Block}))
    opt = optim.AdamW(model.parameters(), lr=1e-3)    # the sharded flat parameters
    loss = loss_fn(model(x), y); loss.backward()
    model.clip_grad_norm_(1.0); opt.step()

Units. Every FSDP instance is a unit: the wrapped module's parameters not managed by
an inner instance go into the unit's :class:`FlatParamHandle` (one per dtype). The
auto-wrap policy wraps submodules (bottom-up) into inner instances, so that under
FULL_SHARD only one unit's full parameters exist at a time (plus the one
prefetched, when the collectives are async).
The outermost instance is the *root*: it owns the per-iteration bookkeeping (the
execution order of the units, the end-of-backward callback, pending reductions).

One iteration, FULL_SHARD:

* forward of a unit: all-gather its parameters (waiting for a prefetch when there is
  one; ``forward_prefetch`` starts the next unit's gather), run the module, release
  the full parameters (``reshard_after_forward``; not the root's, which backward
  needs first), and hook the outputs' gradients;
* the first gradient reaching a unit's output re-gathers its parameters and starts
  the gather of the unit that runs backward next (``backward_prefetch``);
* each original parameter's post-accumulate-grad hook fills its bucket; a full bucket
  is reduce-scattered asynchronously (the buckets of DDP, ``buckets.py``), so the
  reduction of late layers overlaps the backward of early ones, and a bucket whose
  reduction finished is released at once (the full gradient never outlives it);
  a unit whose gradients are all in flight releases its full parameters;
* when backward ends (a callback queued on the engine) every reduction is waited and
  unused parameters contribute zeros.

Where the collectives run (``overlap_collectives``): async on the group's worker
thread, with the prefetches and the reductions overlapping compute (what the list
above describes), or inline on the calling thread -- each gather and reduce-scatter a
single C call of the shared-memory transport, no prefetch (it would only move a
blocking gather earlier and hold two units) -- the default on that transport, where
the worker thread only competes with compute for the same cores (``_overlaps``).

``min_unit_numel`` coalesces the auto-wrapped units into groups that share one set
of handles (one all-gather and one reduce-scatter per group: a model of many small
units pays the collectives' fixed cost once per group; see ``_coalesce``).

SHARD_GRAD_OP keeps the full parameters between steps (4 bytes per parameter) and
re-gathers them, all units at once and asynchronously at the start of the next
forward, only after the optimizer changed the shards. NO_SHARD is DDP.

Precision. fp32 master shards with ``deepseek.amp.autocast`` around the forward (and
``ShardedGradScaler`` for fp16: the skip decision is agreed over the group);
``mixed_precision=MixedPrecision(reduce_dtype=bf16/fp16)`` reduce-scatters the
gradients in that dtype and ``param_dtype=bf16/fp16`` (FULL_SHARD) gathers the
parameters in it over fp32 master shards (``mixed_precision.py``).
``cpu_offload=CPUOffload()`` keeps the master shards, their gradients and the
optimizer state on the host (``offload.py``).
"""
import contextlib
import math
from collections import OrderedDict

import numpy as np

from ... import nn
from ..._tensor import Tensor
from ...autograd.engine import queue_callback
from ...autograd.grad_mode import is_grad_enabled, no_grad
from ...collectives import ReduceOp, get_default_group
from .flat_param import FlatParamHandle

__all__ = ["FullyShardedDataParallel", "ShardingStrategy", "BackwardPrefetch"]


class ShardingStrategy:
    """PyTorch's names (strings are accepted too)."""
    FULL_SHARD = "FULL_SHARD"          # ZeRO-3
    SHARD_GRAD_OP = "SHARD_GRAD_OP"    # ZeRO-2
    NO_SHARD = "NO_SHARD"              # DDP


class BackwardPrefetch:
    BACKWARD_PRE = "BACKWARD_PRE"
    BACKWARD_POST = "BACKWARD_POST"


def _strategy_name(s):
    name = getattr(s, "name", s)
    if name not in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD"):
        raise ValueError(f"sharding_strategy must be 'FULL_SHARD', 'SHARD_GRAD_OP' or "
                         f"'NO_SHARD', got {s!r}")
    return name


class FullyShardedDataParallel(nn.Module):
    """Shard a module's parameters, gradients and optimizer state over a group.

    Args (PyTorch FSDP's names):
        module: the model (the same on every rank; rank 0's values are broadcast
            when ``sync_module_states``).
        process_group: the data-parallel group (default: the default group).
        sharding_strategy: "FULL_SHARD" (ZeRO-3), "SHARD_GRAD_OP" (ZeRO-2),
            "NO_SHARD" (returns the behaviour of DDP: use DistributedDataParallel).
        auto_wrap_policy: ``policy(module, recurse, nonwrapped_numel) -> bool``
            (``fsdp.wrap``: :class:`ModuleWrapPolicy`, ``size_based_auto_wrap_policy``),
            or a set of module classes; which submodules become units of their own.
        backward_prefetch: "BACKWARD_PRE" (default: gather the next unit when a
            unit's backward starts) or None.
        forward_prefetch: gather the next unit while the current one computes.
        bucket_cap_mb: gradient bucket size inside a unit (DDP's meaning).
        min_unit_numel: coalesce the auto-wrapped units, consecutive in module order,
            into groups of at least this many parameters that are gathered, released
            and reduce-scattered together (0, the default: every wrapped submodule is
            a unit of its own, PyTorch's behaviour). Fewer, larger collectives for a
            model of many small units, for a peak of one group's full parameters.
        mixed_precision: a ``fsdp.MixedPrecision``: ``reduce_dtype`` (the gradients'
            wire dtype) and, under FULL_SHARD, ``param_dtype`` (the gathered
            parameters' dtype; run the forward under autocast of that dtype).
        cpu_offload: ``fsdp.CPUOffload(offload_params=False)``: the master shards,
            their gradients and the optimizer state on the host (``offload.py``).
        overlap_collectives: run the all-gathers and reduce-scatters async on the
            group's worker thread, overlapping compute, with the prefetches (True),
            or inline on the calling thread, without prefetching (False). None, the
            default: inline on the shared-memory transport, async elsewhere
            (``_overlaps``). Not a PyTorch argument.
    """

    def __init__(self, module, process_group=None, sharding_strategy="FULL_SHARD",
                 cpu_offload=False, auto_wrap_policy=None,
                 backward_prefetch=BackwardPrefetch.BACKWARD_PRE, mixed_precision=None,
                 ignored_modules=None, param_init_fn=None, device_id=None,
                 sync_module_states=True, forward_prefetch=False, limit_all_gathers=True,
                 use_orig_params=False, bucket_cap_mb=25, min_unit_numel=0,
                 overlap_collectives=None, _exclude=(), _defer=False):
        super().__init__()
        strategy = _strategy_name(sharding_strategy)
        if strategy == "NO_SHARD":
            raise NotImplementedError("sharding_strategy='NO_SHARD' is DDP: use "
                                      "deepseek.distributed.DistributedDataParallel")
        from .mixed_precision import param_dtype_of, reduce_dtype_of
        reduce_dtype = reduce_dtype_of(mixed_precision)  # (raises on what is not here)
        self._param_dtype = param_dtype_of(mixed_precision)
        if self._param_dtype is not None and strategy != "FULL_SHARD":
            raise NotImplementedError("MixedPrecision(param_dtype=...) needs "
                                      "sharding_strategy='FULL_SHARD'")
        from .offload import offload_of
        self._offload = offload_of(cpu_offload)
        pg = process_group or get_default_group()
        self.process_group = pg
        self.sharding_strategy = strategy
        self._reshard = strategy == "FULL_SHARD"
        self.forward_prefetch = bool(forward_prefetch)
        self._overlap = _overlaps(pg) if overlap_collectives is None \
            else bool(overlap_collectives)
        self.backward_prefetch = backward_prefetch
        self._cap = int(bucket_cap_mb * (1 << 20))
        if not isinstance(min_unit_numel, (int, np.integer)) or min_unit_numel < 0:
            raise ValueError(f"min_unit_numel must be an int >= 0, got {min_unit_numel!r}")
        self._min_unit_numel = int(min_unit_numel)
        # ZeRO-2 keeps every full parameter between steps, so the units' boundaries buy
        # nothing: the units the policy makes stay (they are what the user wraps) but
        # hold no parameters of their own ("deferred"), and the root flattens the whole
        # model into DDP's buckets -- the same few large reduce-scatters and
        # all-gathers as DDP's allreduces, instead of one small pair per unit
        # (measured: 9 units of an 8-block MLP cost 1.5x DDP's CPU time per step).
        self._deferred = bool(_defer)
        if auto_wrap_policy is not None:
            from .wrap import auto_wrap
            auto_wrap(module, auto_wrap_policy, lambda m, exclude: FullyShardedDataParallel(
                m, process_group=pg, sharding_strategy=strategy,
                backward_prefetch=backward_prefetch, forward_prefetch=forward_prefetch,
                sync_module_states=sync_module_states, bucket_cap_mb=bucket_cap_mb,
                mixed_precision=mixed_precision, cpu_offload=cpu_offload,
                overlap_collectives=self._overlap, _exclude=exclude,
                _defer=not self._reshard or self._min_unit_numel > 0))
        self._fsdp_wrapped_module = module
        # (not a child module: a Module attribute would be registered as a submodule,
        # making the tree cyclic -- repr, train(), children() would recurse forever)
        object.__setattr__(self, "_root", self)
        self._cache = None          # (units, handles), computed once on the root
        for m in module.modules():
            if isinstance(m, FullyShardedDataParallel):
                object.__setattr__(m, "_root", self)
                m._cache = None
        self._init_bookkeeping()
        self._exclude_ids = {id(p) for p in _exclude}
        self._handles, self._hooks = [], []
        self._group_last = True    # reshards after its forward (see _coalesce)
        self._grouped = False      # holds its parameters (its own or its group's)
        if self._deferred:
            # the enclosing (root) unit collects this unit's parameters: nothing here
            return
        if self._reshard and self._min_unit_numel:
            self._coalesce(sync_module_states, reduce_dtype)
        entries, places = _collect(module, self._exclude_ids)
        self._adopt([self], entries, places, sync_module_states, reduce_dtype)

    def _adopt(self, members, entries, places, sync_module_states, reduce_dtype):
        """Make ``entries`` (their ``places`` in the modules) the flat parameters of
        the units ``members`` (one unit, or a coalesced group sharing its handles):
        one handle per dtype, registered on the first member."""
        pg = self.process_group
        by_dtype = OrderedDict()
        for pid, (names, p) in entries.items():
            by_dtype.setdefault(p._data.dtype, []).append((names, p))
        handles = [FlatParamHandle(ents, pg, self._reshard, self._cap,
                                   sync_module_states, reduce_dtype, self._offload,
                                   self._param_dtype, self._overlap)
                   for ents in by_dtype.values()]
        owner = members[0]
        n = 0
        for h in handles:
            for fp in h.flat_params:
                owner.register_parameter("_flat_param" + (f"_{n}" if n else ""), fp)
                n += 1
        # the originals leave the modules' parameter lists (parameters() yields the
        # flat shards) but stay attributes, so the module's forward runs unchanged
        for mod, attr, p in places:
            del mod._parameters[attr]
            object.__setattr__(mod, attr, p)
            hidden = mod.__dict__.setdefault("_fsdp_hidden", [])
            if attr not in hidden:
                hidden.append(attr)
        for h in handles:
            for p in h.params:
                owner._hooks.append(p.register_post_accumulate_grad_hook(
                    lambda p, h=h, u=owner: u._root._on_grad(u, h, p)))
        for m in members:
            m._handles = handles
            m._group_last = m is members[-1]
            m._grouped = True

    def _coalesce(self, sync_module_states, reduce_dtype):
        """``min_unit_numel``: the auto-wrapped units (built deferred) take their
        parameters in groups of consecutive units -- in the order their forwards end,
        which is module post-order -- each group holding at least ``min_unit_numel``
        parameters (the last one may hold fewer). A group shares one set of handles:
        gathered by its first unit's forward, released after its last one's, so it is
        one all-gather and one reduce-scatter where it was one per unit. (What it
        costs: a group's full parameters are held at once, not one unit's.)"""
        group, entries, places, numel = [], OrderedDict(), [], 0
        for u in _post_order(self._fsdp_wrapped_module):
            if not u._deferred or u._grouped:   # (grouped: by an inner FSDP already)
                continue
            # (an enclosing unit still sees its inner units' parameters in the modules'
            # lists until their group is adopted: they are skipped as taken)
            e, pl = _collect(u._fsdp_wrapped_module, u._exclude_ids | set(entries))
            entries.update(e)
            places.extend(pl)
            group.append(u)
            numel += sum(p.numel() for _, p in e.values())
            if numel >= self._min_unit_numel:
                self._adopt(group, entries, places, sync_module_states, reduce_dtype)
                group, entries, places, numel = [], OrderedDict(), [], 0
        if group:
            self._adopt(group, entries, places, sync_module_states, reduce_dtype)

    def _init_bookkeeping(self):
        # root bookkeeping (used on the root only)
        self.require_backward_grad_sync = True
        self._in_backward = False
        self._sync_this_backward = True
        self._exec_order = []
        self._order = []           # last iteration's forward order of the units
        self._launched = []        # (handle, bucket index) in launch order
        self._pre_bw_done = False
        self.peak_resident = (0, 0)  # most (full param, full grad) bytes held at once

    # ---- the units ----------------------------------------------------------------------
    @property
    def module(self):
        return self._fsdp_wrapped_module

    def _units(self):
        return self._structure()[0]

    def _all_handles(self):
        return self._structure()[1]

    def _structure(self):
        # walking the module tree on every gradient hook cost 15 ms of a 27 ms step
        # (py-spy/cProfile, 8-block MLP): the units never change once wrapped, so the
        # walk is done once (an enclosing FSDP built later resets the cache)
        if self._cache is None:
            units = [m for m in self.modules() if isinstance(m, FullyShardedDataParallel)]
            handles = OrderedDict((id(h), h) for u in units for h in u._handles)
            self._cache = (units, list(handles.values()))  # (a group shares its handles)
        return self._cache

    # ---- forward -----------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        root = self._root
        if root is self:
            self._pre_root_forward()
        root._exec_order.append(self)
        for h in self._handles:
            h.unshard()
        root._track()
        if root.forward_prefetch and self._reshard and root._overlap:
            nxt = root._next_in_order(self, +1)
            if nxt is not None:
                for h in nxt._handles:
                    h.unshard(async_op=True)
        out = self._fsdp_wrapped_module(*args, **kwargs)
        grad = is_grad_enabled()
        # the unit that ran last in the previous forward is the first one backward
        # needs: releasing it only to gather it again at once would cost a release and
        # a blocking all-gather (the peak is the same either way: backward holds it)
        last = grad and root._order and root._order[-1] is self
        if self._reshard and (root is not self or not grad) and not last and \
                self._group_last:
            for h in self._handles:
                h.reshard()
        if grad:
            self._pre_bw_done = False
            _register_output_hooks(out, self._pre_backward)
        return out

    def _pre_root_forward(self):
        if self._exec_order:
            self._order = self._exec_order
        self._exec_order = []
        # ZeRO-2: the optimizer changed the shards; gather every unit now, in forward
        # order, asynchronously: each unit waits for its own at its forward. (A root
        # that flattened the whole model has nothing to overlap the gather with: its
        # own forward, which comes next, gathers it blocking, on the C fast path.)
        if not self._reshard and len(self._all_handles()) > len(self._handles):
            units = self._order or self._units()
            for u in units:
                for h in u._handles:
                    if h.needs_gather():
                        h.unshard(async_op=True)

    def _next_in_order(self, unit, step):
        order = self._order
        try:
            i = order.index(unit)
        except ValueError:
            return None
        j = i + step
        while 0 <= j < len(order) and order[j]._handles is unit._handles:
            j += step   # (a unit of the same coalesced group: gathered already)
        return order[j] if 0 <= j < len(order) else None

    # ---- backward ----------------------------------------------------------------------
    def _pre_backward(self, grad):
        if self._pre_bw_done:
            return None
        self._pre_bw_done = True
        root = self._root
        for h in self._handles:
            h.unshard()
        # (inline collectives: a prefetch would only be a blocking gather done
        # earlier, holding two units' parameters for nothing)
        if self._reshard and root.backward_prefetch is not None and root._overlap:
            order = root._exec_order or root._order
            try:
                i = order.index(self)
            except ValueError:
                i = 0
            # the unit before this one may share its handles (a coalesced group):
            # the one to prefetch is the first before it that does not
            while i > 0 and order[i - 1]._handles is self._handles:
                i -= 1
            if i > 0:
                for h in order[i - 1]._handles:
                    if not h.all_launched() or not h.is_gathered():
                        h.unshard(async_op=True)
        root._track()
        return None

    def _on_grad(self, unit, h, p):
        # runs on the root, for a parameter of ``unit``
        if not self._in_backward:
            self._begin_backward()
        grew = not h.buckets[h.slot[id(p)][0]].is_materialized()
        k = h.fill(p)
        if grew:   # the full gradients held can only have grown if a bucket was made
            self._track()
        if k is None or not self._sync_this_backward:
            return
        h.launch(k)
        self._launched.append((h, k))
        self._poll()
        if unit._reshard and unit is not self and h.all_launched():
            h.reshard()

    def _begin_backward(self):
        self._in_backward = True
        self._sync_this_backward = self.require_backward_grad_sync
        if self._sync_this_backward:
            for h in self._all_handles():
                h.begin_backward()
        queue_callback(self._finalize)

    def _poll(self):
        """Finish (and free) the reductions that are done, oldest first."""
        while self._launched:
            h, k = self._launched[0]
            work = h.buckets[k].work[0]
            if work is not None and not work.is_completed():
                return
            self._launched.pop(0)
            h.finish(k)

    def _finalize(self):
        try:
            handles = self._all_handles()
            if self._sync_this_backward:
                for h in handles:
                    h.complete_missing()
                    for k, b in enumerate(h.buckets):
                        if not h.launched[k]:
                            h.launch(k)
                            self._launched.append((h, k))
                while self._launched:
                    h, k = self._launched.pop(0)
                    h.finish(k)
            for h in handles:
                if self._reshard:
                    h.reshard()
        finally:
            self._in_backward = False
            for u in self._units():
                u._pre_bw_done = False
            for h in self._all_handles():
                for b in h.buckets:
                    b.reset()

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (full, unsharded) without communication; the
        first backward outside reduce-scatters the sum (PyTorch's semantics)."""
        root = self._root
        prev = root.require_backward_grad_sync
        root.require_backward_grad_sync = False
        try:
            yield
        finally:
            root.require_backward_grad_sync = prev

    # ---- gradient clipping ----------------------------------------------------------------
    def clip_grad_norm_(self, max_norm, norm_type=2.0):
        """Clip the gradients of every shard to a *global* norm (over all ranks' shards;
        padding is zero and adds nothing); returns the total norm before clipping."""
        norm_type = float(norm_type)
        grads = [fp._grad._data for h in self._root._all_handles() for fp in h.flat_params
                 if fp._grad is not None]
        pg = self.process_group
        if norm_type == math.inf:
            local = np.array([max((float(np.abs(g).max()) for g in grads if g.size),
                                  default=0.0)])
            pg.allreduce(local, ReduceOp.MAX)
            total = float(local[0])
        else:
            local = np.array([sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                                  for g in grads)])
            pg.allreduce(local, ReduceOp.SUM)
            total = float(local[0]) ** (1.0 / norm_type)
        coef = float(max_norm) / (total + 1e-6)
        if coef < 1.0:
            for fp in (fp for h in self._root._all_handles() for fp in h.flat_params):
                g = fp._grad
                if g is not None:
                    g._data *= g._data.dtype.type(coef)
                    g._bump_version()
        return Tensor._make(np.asarray(total, dtype=np.float32))

    # ---- state --------------------------------------------------------------------------
    def _named_originals(self):
        """(clean fqn, param) for every original parameter (each name of a tied one)."""
        for name, kind, t in _walk(self._fsdp_wrapped_module, ""):
            if kind == "param":
                yield name, t

    def _handle_of(self):
        out = {}
        for h in self._all_handles():
            for p in h.params:
                out[id(p)] = h
        return out

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """The *full* state dict (PyTorch's FULL_STATE_DICT), on every rank, with the
        names of the unwrapped model: each unit is gathered in turn, copied, and
        released again (ZeRO-3)."""
        out = OrderedDict() if destination is None else destination
        owner = self._handle_of()
        gathered = set()
        master = {}   # low-precision gathered parameters: the fp32 values instead
        with no_grad():
            for name, kind, t in _walk(self._fsdp_wrapped_module, ""):
                h = owner.get(id(t)) if kind == "param" else None
                if h is not None and id(h) not in gathered:
                    if h.param_dtype != h.dtype:
                        master.update(h.master_values())
                    else:
                        h.unshard()
                    gathered.add(id(h))
                value = master.get(id(t), t._data)
                out[prefix + name] = Tensor._make(np.array(value, copy=True))
            if self._reshard:
                for h in self._all_handles():
                    h.reshard()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Load a full state dict (the unwrapped model's names) into the shards."""
        owner = self._handle_of()
        names = [(n, k, t) for n, k, t in _walk(self._fsdp_wrapped_module, "")]
        if strict:
            missing = [n for n, _, _ in names if n not in state_dict]
            extra = sorted(set(state_dict) - {n for n, _, _ in names})
            if missing or extra:
                raise RuntimeError(f"FullyShardedDataParallel.load_state_dict: missing keys "
                                   f"{missing[:10]}, unexpected keys {extra[:10]}")
        with no_grad():
            for name, kind, t in names:
                if name not in state_dict:
                    continue
                v = state_dict[name]
                v = v._data if isinstance(v, Tensor) else np.asarray(v)
                if tuple(v.shape) != tuple(t.shape):
                    raise RuntimeError(f"load_state_dict: {name} has shape {tuple(v.shape)} in "
                                       f"the state dict but {tuple(t.shape)} in the model")
                h = owner.get(id(t)) if kind == "param" else None
                if h is None:
                    t._data[...] = v
                    t._bump_version()
                    continue
                j = next(i for i, q in enumerate(h.params) if q is t)
                flat = v.reshape(-1)
                for e, a, b, view in h.local_pieces():
                    if e == j:
                        view[...] = flat[a:b]
            for h in self._all_handles():
                for fp in h.flat_params:
                    fp._bump_version()  # ZeRO-2 regathers; ZeRO-3 gathers anyway
                h.reshard()

    def sharded_pieces(self):
        """(clean fqn, param shape, start, end, shard view) of every piece of an
        original parameter this rank holds: what a sharded checkpoint writes."""
        out = []
        names = {}
        for name, t in self._named_originals():
            names.setdefault(id(t), []).append(name)
        for h in self._all_handles():
            for j, a, b, view in h.local_pieces():
                p = h.params[j]
                out.append((names[id(p)], tuple(p.shape), a, b, view, h, j))
        return out

    def optimizer_pieces(self):
        """(flat param, fqns, param shape, start, end, offset) of every piece of an
        original parameter this rank holds: elements ``start:end`` of the parameter
        (flattened) are elements ``offset:offset + end - start`` of the flat param
        the optimizer sees, and of each per-element state the optimizer keeps for it
        (what ``checkpoint.get_optimizer_state_dict`` writes and reads back)."""
        names = {}
        for name, t in self._named_originals():
            names.setdefault(id(t), []).append(name)
        out = []
        for h in self._all_handles():
            for k, j, a, e, off in h.shard_pieces():
                p = h.params[j]
                out.append((h.flat_params[k], names[id(p)], tuple(p.shape), a, e, off))
        return out

    def memory_stats(self):
        """Bytes this rank holds now: ``params`` (shards + gathered full parameters),
        ``grads`` (shard gradients + full gradient buckets), and the peak of gathered
        full parameters / full gradients seen so far (``peak_full_params``,
        ``peak_full_grads``)."""
        hs = self._root._all_handles()
        fps = [fp for h in hs for fp in h.flat_params]
        # ZeRO-2's shards are views of the full parameters: counted once, there
        shard = sum(fp._data.nbytes for h in hs if h.releasable or h.offload
                    for fp in h.flat_params)
        sgrad = sum(fp._grad._data.nbytes for fp in fps if fp._grad is not None)
        full = sum(h.resident_bytes()[0] for h in hs)
        fgrad = sum(h.resident_bytes()[1] for h in hs)
        return {"params": shard + full, "grads": sgrad + fgrad,
                "peak_full_params": self._root.peak_resident[0],
                "peak_full_grads": self._root.peak_resident[1]}

    def _track(self):
        full = grads = 0
        for h in self._all_handles():
            if h._gathered or not h.releasable:
                full += h.full.nbytes
            grads += h._grad_bytes
        pf, pg_ = self.peak_resident
        if full > pf or grads > pg_:
            self.peak_resident = (max(pf, full), max(pg_, grads))

    def __getstate__(self):
        raise TypeError("FullyShardedDataParallel cannot be pickled; save its state_dict()")


def _overlaps(pg):
    """Whether FSDP's collectives should be async (on the group's worker thread,
    overlapping compute) rather than inline. Not on the shared-memory transport: its
    inline calls are one C call each (the all-gather a single copy from the peers'
    memory), while an async one runs the Python path on a second thread that competes
    with compute for the same cores and the GIL (measured on an 8-block MLP, 2 ranks
    on 2 cores: stage 3 at 1.19-1.26x DDP's CPU time inline against 1.30-1.43x async;
    ``scripts/bench_zero.py``)."""
    return getattr(pg, "transport", None) != "shm"


def _register_output_hooks(out, fn):
    if isinstance(out, Tensor):
        if out.requires_grad:
            out.register_hook(fn)
    elif isinstance(out, (list, tuple)):
        for o in out:
            _register_output_hooks(o, fn)
    elif isinstance(out, dict):
        for o in out.values():
            _register_output_hooks(o, fn)


def _walk(module, prefix):
    """(clean fqn, "param"/"buffer", tensor) over the unwrapped model, in module order:
    FSDP wrappers are transparent and hidden originals are included."""
    if isinstance(module, FullyShardedDataParallel):
        yield from _walk(module._fsdp_wrapped_module, prefix)
        return
    for attr, p in module._parameters.items():
        if p is not None:
            yield prefix + attr, "param", p
    for attr in module.__dict__.get("_fsdp_hidden", ()):
        yield prefix + attr, "param", module.__dict__[attr]
    for attr, b in module._buffers.items():
        if b is not None and attr not in module._non_persistent_buffers_set:
            yield prefix + attr, "buffer", b
    for name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, prefix + name + ".")


def _collect(module, exclude):
    """The parameters this unit manages: every requires-grad parameter still in a
    module's parameter list below ``module`` (inner units took theirs out already),
    except ``exclude``. Returns ({id: (fqns, param)}, [(module, attr, param)])."""
    entries, places = OrderedDict(), []

    def visit(mod, prefix):
        if isinstance(mod, FullyShardedDataParallel):
            visit(mod._fsdp_wrapped_module, prefix)
            return
        for attr, p in list(mod._parameters.items()):
            if p is None or not p.requires_grad or id(p) in exclude:
                continue
            entries.setdefault(id(p), ([], p))[0].append(prefix + attr)
            places.append((mod, attr, p))
        for name, child in mod._modules.items():
            if child is not None:
                visit(child, prefix + name + ".")
    visit(module, "")
    return entries, places


def _post_order(module):
    """The FSDP units below ``module`` (not itself), each after the units inside it."""
    for child in module._modules.values():
        if child is None:
            continue
        inner = child._fsdp_wrapped_module if isinstance(child, FullyShardedDataParallel) \
            else child
        yield from _post_order(inner)
        if isinstance(child, FullyShardedDataParallel):
            yield child
