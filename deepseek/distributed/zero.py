"""ZeroRedundancyOptimizer: ZeRO stage 1 (optimizer state sharded over the ranks).

PyTorch's ``torch.distributed.optim.ZeroRedundancyOptimizer`` shape::

    ddp = DistributedDataParallel(model)
    opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=optim.AdamW, lr=1e-3)
    loss.backward(); opt.step()          # DDP averaged the full gradients

How: the parameters (per dtype, in the order given) are moved into one flat buffer
each (PyTorch's ``parameters_as_bucket_view=True``: ``p.data`` becomes a view of it),
padded to ``world * shard`` elements, and rank ``r`` owns elements ``[r * shard, (r+1)
* shard)`` -- an even split whatever the parameter sizes. The wrapped optimizer
(``optimizer_class``) is built on views of the pieces of the parameters inside this
rank's shard, so it keeps state for ``1/N`` of the elements only, and its update runs
on the parameters' own memory (the gradient pieces are views too: nothing is copied).
After the local step one in-place all-gather per flat buffer gives every rank every
updated element. Per parameter in fp32 Adam training: 4 (params) + 4 (gradients) +
8/N (state) bytes.

``param_groups`` are the user's groups of whole parameters (an lr scheduler changes
them; they are copied to the inner optimizer before each step).
``consolidate_state_dict(to=0)`` gathers the full state in PyTorch's format on rank
``to``, where ``state_dict()`` then returns it; ``load_state_dict`` takes that full
format on every rank and keeps each rank's slice.
"""
import numpy as np

from .._tensor import Tensor
from ..autograd.grad_mode import enable_grad, no_grad
from ..optim.optimizer import Optimizer
from ._flat import FlatLayout

__all__ = ["ZeroRedundancyOptimizer"]


class _Flat:
    """One dtype's parameters in one padded flat buffer, and this rank's pieces."""

    def __init__(self, params, indices, pg):
        self.params, self.indices = params, indices   # indices: global param numbers
        self.layout = FlatLayout([p.numel() for p in params], pg.size)
        self.pos = {id(p): j for j, p in enumerate(params)}  # (Tensors compare by value)
        self.buffer = np.zeros(self.layout.padded, dtype=params[0]._data.dtype)
        with no_grad():
            for p, off, n in zip(params, self.layout.offsets, self.layout.numels):
                view = self.buffer[off:off + n].reshape(p.shape)
                view[...] = p._data
                p.data = view  # the parameter now lives in the flat buffer
        lo, hi = self.layout.shard_range(pg.rank)
        self.shard = self.buffer[lo:hi]
        # (param, its slice of the flattened data, the optimizer's view tensor)
        self.pieces = []
        for i, a, b in self.layout.pieces(pg.rank):
            p = params[i]
            view = Tensor._make(p._data.reshape(-1)[a:b])
            view.requires_grad = True
            self.pieces.append((p, a, b, view))


class ZeroRedundancyOptimizer(Optimizer):
    """Shard ``optimizer_class``'s state over the ranks of ``process_group``.

    Args:
        params: parameters or parameter groups (as for any optimizer).
        optimizer_class: the optimizer run on this rank's shard (default AdamW).
        process_group: the data-parallel group (default: the default group).
        parameters_as_bucket_view: must be True (the parameters always become views of
            the flat buffers: it is what makes the update and the all-gather copy-free).
        **defaults: the optimizer's options (``lr=...``).
    """

    def __init__(self, params, optimizer_class=None, process_group=None,
                 parameters_as_bucket_view=True, overlap_with_ddp=False, **defaults):
        from ..collectives import get_default_group
        if optimizer_class is None:
            from ..optim import AdamW
            optimizer_class = AdamW
        if not parameters_as_bucket_view:
            raise NotImplementedError("ZeroRedundancyOptimizer: parameters_as_bucket_view="
                                      "False is not supported (the parameters always become "
                                      "views of flat buffers)")
        if overlap_with_ddp:
            raise NotImplementedError("ZeroRedundancyOptimizer: overlap_with_ddp is not "
                                      "supported; use FullyShardedDataParallel("
                                      "sharding_strategy='SHARD_GRAD_OP') for ZeRO-2")
        super().__init__(params, defaults)
        self.optimizer_class = optimizer_class
        self.process_group = process_group or get_default_group()
        self._consolidated = None
        ordered = [p for g in self.param_groups for p in g["params"]]
        by_dtype = {}
        for i, p in enumerate(ordered):
            by_dtype.setdefault(p._data.dtype, []).append(i)
        self._flats = [_Flat([ordered[i] for i in idx], idx, self.process_group)
                       for idx in by_dtype.values()]
        self._index = {id(p): i for i, p in enumerate(ordered)}
        view_of = {}
        for f in self._flats:
            for p, a, b, v in f.pieces:
                view_of.setdefault(id(p), []).append(v)
        inner_groups = []
        for g in self.param_groups:
            ig = {k: v for k, v in g.items() if k != "params"}
            ig["params"] = [v for p in g["params"] for v in view_of.get(id(p), [])]
            inner_groups.append(ig)
        self.optim = optimizer_class(inner_groups, **defaults)
        for g, ig in zip(self.param_groups, self.optim.param_groups):
            for k, v in ig.items():   # the inner optimizer's defaults, seen by the user
                if k != "params":
                    g.setdefault(k, v)

    # ---- stepping ---------------------------------------------------------------------
    def step(self, closure=None):
        """Update this rank's shard with the inner optimizer, then all-gather every
        flat buffer in place so that every rank holds every updated parameter."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for g, ig in zip(self.param_groups, self.optim.param_groups):
            for k, v in g.items():
                if k != "params":
                    ig[k] = v
        for f in self._flats:
            for p, a, b, view in f.pieces:
                g = p._grad
                view._grad = None if g is None else Tensor._make(g._data.reshape(-1)[a:b])
        self.optim.step()
        for f in self._flats:
            for p, a, b, view in f.pieces:
                view._grad = None  # do not keep a reference to the gradient
        self._sync_parameters()
        self._consolidated = None
        return loss

    def _sync_parameters(self):
        pg = self.process_group
        for f in self._flats:
            if pg.size > 1:
                # into the flat buffer itself; the input is a copy of this rank's shard
                # (1/N of the buffer, transient): a backend may write the output before
                # it has read every input
                pg.allgather(f.buffer, f.shard.copy())
            for p in f.params:
                p._bump_version()

    # ---- state ------------------------------------------------------------------------
    def _local_state(self):
        """{global index: {name: ("array" | scalar)}} of this rank's pieces."""
        out = {}
        for f in self._flats:
            for p, a, b, view in f.pieces:
                st = self.optim.state.get(view)
                if not st:
                    continue
                d = out.setdefault(str(self._index[id(p)]), {})
                for name, v in st.items():
                    arr = v._data if isinstance(v, Tensor) else v
                    if isinstance(arr, np.ndarray) and arr.size == view.numel() and \
                            arr.ndim >= 1:
                        d[name] = "array"
                    else:
                        d[name] = float(np.asarray(arr)) if isinstance(arr, np.ndarray) \
                            else arr
        return out

    def consolidate_state_dict(self, to=0):
        """Gather the full optimizer state on global rank ``to`` (collective: every rank
        calls it); ``state_dict()`` on ``to`` then returns it in PyTorch's format."""
        from . import all_gather_object
        pg = self.process_group
        infos = [None] * pg.size
        all_gather_object(infos, self._local_state(), group=pg)
        merged = {}
        for info in infos:
            for k, d in info.items():
                merged.setdefault(int(k), {}).update(d)
        dst = pg.ranks.index(int(to))
        full = {}
        names = sorted({n for d in merged.values() for n, v in d.items() if v == "array"})
        for f in self._flats:
            lay = f.layout
            for name in names:
                mine = np.zeros(lay.shard_numel, dtype=f.buffer.dtype)
                lo = lay.shard_range(pg.rank)[0]
                for p, a, b, view in f.pieces:
                    st = self.optim.state.get(view)
                    if st and name in st:
                        s = lay.offsets[f.pos[id(p)]] + a - lo
                        mine[s:s + (b - a)] = st[name]._data.reshape(-1)
                out = np.zeros(lay.padded, dtype=mine.dtype) if pg.rank == dst else None
                if pg.size > 1:
                    pg.gather(mine, out, dst)
                else:
                    out[...] = mine
                if pg.rank == dst:
                    for j, (p, gi) in enumerate(zip(f.params, f.indices)):
                        if merged.get(gi, {}).get(name) == "array":
                            off, n = lay.offsets[j], lay.numels[j]
                            full.setdefault(gi, {})[name] = Tensor._make(
                                out[off:off + n].reshape(p.shape).copy())
        if pg.rank != dst:
            self._consolidated = None
            return
        for gi, d in merged.items():
            for name, v in d.items():
                if v != "array":
                    full.setdefault(gi, {})[name] = Tensor._make(np.array(v, np.float32)) \
                        if name == "step" else v
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [self._index[id(p)] for p in g["params"]]
            groups.append(packed)
        self._consolidated = {"state": dict(sorted(full.items())), "param_groups": groups}

    def state_dict(self):
        """The full state gathered by :meth:`consolidate_state_dict` (on that rank)."""
        if self._consolidated is None:
            raise RuntimeError("ZeroRedundancyOptimizer.state_dict: call "
                               "consolidate_state_dict(to=rank) on every rank first, then "
                               "state_dict() on that rank (the optimizer state is sharded)")
        return self._consolidated

    def load_state_dict(self, state_dict):
        """Load a full state (``state_dict()``'s format, on every rank): options go to
        the groups, each rank keeps the slices of the state its shard owns."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError("ZeroRedundancyOptimizer.load_state_dict expects a dict with "
                             "'state' and 'param_groups'")
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups but "
                             f"the optimizer has {len(self.param_groups)}")
        for g, sg in zip(self.param_groups, saved_groups):
            for k, v in sg.items():
                if k != "params":
                    g[k] = tuple(v) if k == "betas" and isinstance(v, list) else v
        state = {int(k): v for k, v in state_dict["state"].items()}
        self.optim.state.clear()
        for f in self._flats:
            for p, a, b, view in f.pieces:
                st = state.get(self._index[id(p)])
                if not st:
                    continue
                mine = {}
                for name, v in st.items():
                    arr = v._data if isinstance(v, Tensor) else v
                    if isinstance(arr, np.ndarray) and arr.size == p.numel() and arr.ndim:
                        mine[name] = Tensor._make(np.ascontiguousarray(
                            arr.reshape(-1)[a:b], dtype=view._data.dtype).copy())
                    elif isinstance(arr, np.ndarray):
                        mine[name] = Tensor._make(arr.copy())
                    else:
                        mine[name] = v
                self.optim.state[view] = mine
        self._consolidated = None

    # ---- sharded checkpoints ----------------------------------------------------------
    def local_pieces(self):
        """(global param index, param, start, end, state dict) of every piece this rank
        owns (``start:end`` index the parameter's flattened elements): what a sharded
        checkpoint writes for this optimizer."""
        out = []
        for f in self._flats:
            for p, a, b, view in f.pieces:
                out.append((self._index[id(p)], p, a, b, self.optim.state.get(view, {})))
        return out

