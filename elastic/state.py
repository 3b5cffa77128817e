"""What in-process recovery rolls back to: :class:`State` and :class:`ElasticSampler`.

``State(model=..., optimizer=..., sampler=..., step=0)`` tracks two kinds of values:

* objects with ``state_dict()``/``load_state_dict()`` (a model, an optimizer, an LR
  scheduler, :class:`ElasticSampler`): duck-typed, so this module never imports the
  engine (the import contract: elastic sits on collectives only);
* plain Python values (``step``, ``epoch``...): numbers, strings, lists, dicts; read
  and written as attributes (``state.step += 1``).

:meth:`State.commit` takes an in-memory snapshot: every array in the state dicts is
copied to a numpy array (a Tensor through its ``__array__``), the rest deep-copied.
:meth:`State.restore` loads the last snapshot back (``load_state_dict`` takes numpy
arrays). :meth:`State.sync` makes every rank's state the committed state of the rank
with the newest commit (a survivor): the snapshot travels as a JSON skeleton and raw
arrays over the process group's broadcast -- never pickled. CPU arrays only.

Sharded state (ZeRO-1/2/3): a model and optimizer whose state no rank holds whole are
bound per generation with :meth:`State.bind` as
``deepseek.distributed.elastic.Sharded(model, optimizer)``. Each commit keeps this
rank's shard and, received from the previous rank over one point-to-point exchange
around the ring, that rank's: one death loses no shard. (The other way -- every
commit all-gathering the full optimizer state -- would cost every rank the memory
ZeRO saves and N - 1 shards of traffic per commit instead of one.) After a failure
:meth:`State.sync` finds the newest commit whose shards all survived, gathers them on
every rank, and :meth:`State.bind` loads the pieces the new world's sharding needs:
the reshard to the new world size.
"""
from __future__ import annotations

import copy
import json
from collections import OrderedDict

__all__ = ["State", "ElasticSampler"]


def _is_array(v) -> bool:
    return hasattr(v, "__array__") and hasattr(v, "shape") and hasattr(v, "dtype")


def _snapshot(v):
    """A private copy of a state dict: arrays as numpy copies, the rest deep-copied."""
    import numpy as np
    if isinstance(v, dict):
        items = [(k, _snapshot(x)) for k, x in v.items()]
        return OrderedDict(items) if isinstance(v, OrderedDict) else dict(items)
    if isinstance(v, (list, tuple)):
        return type(v)(_snapshot(x) for x in v)
    if _is_array(v):
        # asarray, then copy: some __array__ (the Tensor's) ignore copy=True
        return np.array(np.asarray(v), copy=True)
    return copy.deepcopy(v)


# ---------------------------------------------------------------- wire format
# A snapshot is sent as one JSON skeleton plus its arrays in order. Skeleton nodes:
# scalars as JSON; {"a": i} the i-th array; {"d": [[key, node], ...]} a dict (keys
# keep their type: int or str); {"l": [...]} a list; {"t": [...]} a tuple.

def _encode(v, arrays: list):
    import numpy as np
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"elastic.State: dict key {k!r} is neither str nor int")
            items.append([k, _encode(x, arrays)])
        return {"d": items}
    if isinstance(v, list):
        return {"l": [_encode(x, arrays) for x in v]}
    if isinstance(v, tuple):
        return {"t": [_encode(x, arrays) for x in v]}
    if isinstance(v, np.ndarray):
        arrays.append(np.ascontiguousarray(v))
        return {"a": len(arrays) - 1, "dtype": v.dtype.str, "shape": list(v.shape)}
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"elastic.State: cannot send a {type(v).__name__} between ranks "
                    "(numbers, strings, lists, dicts and arrays only)")


def _decode(node, arrays: list):
    if isinstance(node, dict):
        if "a" in node:
            return arrays[node["a"]]
        if "d" in node:
            return {k: _decode(x, arrays) for k, x in node["d"]}
        if "l" in node:
            return [_decode(x, arrays) for x in node["l"]]
        return tuple(_decode(x, arrays) for x in node["t"])
    return node


def broadcast_tree(pg, tree, src: int):
    """``src``'s ``tree`` (a snapshot) on every rank of ``pg`` (collective)."""
    import numpy as np
    arrays: list = []
    if pg.rank == src:
        skeleton = _encode(tree, arrays)
        head = json.dumps({"tree": skeleton,
                           "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    else:
        head = b""
    n = np.array([len(head)], np.int64)
    pg.broadcast(n, src=src)
    buf = np.frombuffer(head, np.uint8).copy() if pg.rank == src \
        else np.empty(int(n[0]), np.uint8)
    pg.broadcast(buf, src=src)
    meta = json.loads(buf.tobytes())
    if pg.rank != src:
        arrays = [np.empty(shape, np.dtype(dt)) for dt, shape in meta["arrays"]]
    for a in arrays:
        if a.size:
            flat = a.reshape(-1).view(np.uint8)
            pg.broadcast(flat, src=src)
    return _decode(meta["tree"], arrays)


# ---------------------------------------------------------------- packed parts
# A rank's sharded part travels and is kept as one JSON header plus one byte buffer
# holding every array (16-byte aligned): a commit copies each array once into it, the
# neighbour receives it in one message, and unpacking gives views.

def _pack(tree):
    """(header uint8 array, payload uint8 array) of ``tree`` (arrays copied once)."""
    import numpy as np
    arrays: list = []
    skeleton = _encode(tree, arrays)
    offsets, size = [], 0
    for a in arrays:
        offsets.append(size)
        size += -(-a.nbytes // 16) * 16
    payload = np.empty(max(size, 1), np.uint8)
    for a, off in zip(arrays, offsets):
        payload[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
    head = json.dumps({"tree": skeleton, "arrays": [[a.dtype.str, list(a.shape), off]
                                                     for a, off in zip(arrays, offsets)]})
    return np.frombuffer(head.encode(), np.uint8).copy(), payload


def _unpack(head, payload):
    """The tree :func:`_pack` packed; its arrays are views of ``payload``."""
    import numpy as np
    meta = json.loads(head.tobytes())
    arrays = []
    for dt, shape, off in meta["arrays"]:
        dt = np.dtype(dt)
        n = int(np.prod(shape, dtype=np.int64))
        arrays.append(payload[off:off + n * dt.itemsize].view(dt).reshape(shape))
    return _decode(meta["tree"], arrays)


def _broadcast_packed(pg, packed, src):
    """``src``'s packed part on every rank of ``pg`` (collective)."""
    import numpy as np
    n = np.array([len(packed[0]), len(packed[1])] if pg.rank == src else [0, 0], np.int64)
    pg.broadcast(n, src=src)
    if pg.rank == src:
        head, payload = packed
    else:
        head, payload = np.empty(int(n[0]), np.uint8), np.empty(int(n[1]), np.uint8)
    pg.broadcast(head, src=src)
    pg.broadcast(payload, src=src)
    return head, payload


_TAG = 0x45_4C_53      # the commit's neighbour exchange ("ELS"), apart from user p2p


class State:
    """The training state in-process recovery rolls back to (see the module
    docstring). ``State(model=m, optimizer=o, sampler=s, step=0, epoch=0)``.

    Sharded state (ZeRO): objects with ``elastic_export``/``elastic_load``
    (``deepseek.distributed.elastic.Sharded(model, optimizer)``) are bound inside the
    training function with :meth:`bind`, once per generation (they hold its process
    group). A commit then keeps this rank's shard and a copy of the previous rank's
    (one point-to-point exchange around the ring per commit: the cost of losing no
    shard to one death, instead of the full state on every rank), and the commit
    before it (a death in the middle of a commit leaves some ranks one commit ahead:
    :meth:`sync` takes the newest commit whose every shard survived). :meth:`sync`
    gathers that commit's shards on every rank; :meth:`bind` loads them resharded to
    the new world's size."""

    def __init__(self, **values):
        object.__setattr__(self, "_objects", {})
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "_prev", None)     # the commit before (sharded only)
        object.__setattr__(self, "_reset_callbacks", [])
        object.__setattr__(self, "_sent", {})       # the exchange's last header, per pg
        object.__setattr__(self, "commits", 0)
        for name, v in values.items():
            if hasattr(v, "state_dict") and hasattr(v, "load_state_dict"):
                self._objects[name] = v
            else:
                self._values[name] = v
        self.commit()

    # plain values read and written as attributes
    def __getattr__(self, name):
        objects, values = self.__dict__["_objects"], self.__dict__["_values"]
        if name in objects:
            return objects[name]
        if name in values:
            return values[name]
        raise AttributeError(f"elastic.State has no value {name!r}")

    def __setattr__(self, name, value):
        if name in self._objects:
            raise AttributeError(f"elastic.State: {name!r} is a tracked object; change "
                                 "it in place (or bind a new one: State.bind)")
        if name == "commits":
            object.__setattr__(self, name, value)
        else:
            self._values[name] = value

    def register_reset_callbacks(self, callbacks):
        """Call each of ``callbacks`` (no arguments) after every reset: the world
        changed and the state was synced (rescale the learning rate, rebuild DDP)."""
        self._reset_callbacks.extend(callbacks)

    def on_reset(self):
        """Run the reset callbacks (``run`` does, after every reset)."""
        for cb in self._reset_callbacks:
            cb()

    def bind(self, **objects):
        """Track ``objects`` from now on, replacing those of the same names: the ones
        a generation builds on its process group (``Sharded(model, optimizer)`` of
        :mod:`deepseek.distributed.elastic` for ZeRO; any ``state_dict`` object). An
        object the last commit holds is loaded from it (after a reset: the synced
        commit, resharded to this world); new ones are committed at once, so call it
        on every rank at the same point (collective when a new one is sharded)."""
        fresh = []
        for name, o in objects.items():
            if name in self._values:
                raise ValueError(f"elastic.State.bind: {name!r} is a plain value")
            if not (_sharded(o) or hasattr(o, "load_state_dict")):
                raise TypeError(f"elastic.State.bind: {name!r} has neither state_dict() "
                                "nor elastic_export() (deepseek.distributed.elastic."
                                "Sharded wraps a model and its optimizer)")
            self._objects[name] = o
            snap = self._saved
            if name in snap["objects"] or name in snap["replicated"]:
                self._load_object(name, o, snap)
            else:
                fresh.append(name)
        if fresh:
            self.commit()

    # ------------------------------------------------------------ taking and loading
    def _group(self):
        for o in self._objects.values():
            if _sharded(o):
                return o.process_group
        return None

    def _take(self):
        objects, replicated, mine = {}, {}, {}
        for n, o in self._objects.items():
            if _sharded(o):
                exp = o.elastic_export()
                replicated[n] = _snapshot(exp["replicated"])
                mine[n] = exp["sharded"]
            else:
                objects[n] = _snapshot(o.state_dict())
        rec = {"objects": objects, "values": _snapshot(self._values),
               "replicated": replicated, "parts": {}, "world": 0}
        pg = self._group()
        if pg is not None:
            rec["world"], rec["parts"] = pg.size, {pg.rank: _pack(mine)}
        return rec

    def _exchange(self, pg, rec):
        """Send this rank's part to the next rank, keep the previous rank's."""
        import numpy as np
        if pg.size == 1:
            return
        right, left = (pg.rank + 1) % pg.size, (pg.rank - 1) % pg.size
        head, payload = rec["parts"][pg.rank]
        # the header (the layout) rarely changes: sent again only when it does
        last = self._sent.get(id(pg))
        same = last is not None and last[0] is pg and np.array_equal(last[1], head)
        sizes = np.array([-1 if same else len(head), len(payload)], np.int64)
        works = [pg.send(sizes, right, _TAG, async_op=True)]
        if not same:
            works.append(pg.send(head, right, _TAG, async_op=True))
        works.append(pg.send(payload, right, _TAG, async_op=True))
        got = np.empty(2, np.int64)
        pg.recv(got, left, _TAG)
        if got[0] >= 0:
            theirs = np.empty(int(got[0]), np.uint8)
            pg.recv(theirs, left, _TAG)
        else:
            theirs = self._sent[id(pg)][2]
        data = np.empty(int(got[1]), np.uint8)
        pg.recv(data, left, _TAG)
        for w in works:
            w.wait()
        self._sent.clear()
        self._sent[id(pg)] = (pg, head, theirs)
        rec["parts"][left] = (theirs, data)

    def commit(self):
        """Snapshot the state in memory (what :meth:`restore` and :meth:`sync` go
        back to). Plain state: one copy of every array, no communication. With a
        bound sharded object: also one exchange with the ring neighbours (collective)."""
        rec = self._take()
        rec["n"] = self.commits + 1
        pg = self._group()
        if pg is not None:
            self._exchange(pg, rec)
            object.__setattr__(self, "_prev", self._saved)
        object.__setattr__(self, "_saved", rec)
        object.__setattr__(self, "commits", rec["n"])

    def _load_object(self, name, o, rec):
        if _sharded(o):
            parts = [_unpack(*p)[name] for _, p in sorted(rec["parts"].items())]
            o.elastic_load(rec["replicated"][name], parts)
        else:
            o.load_state_dict(_snapshot(rec["objects"][name]))

    def _load(self, rec, sharded=True):
        for n, o in list(self._objects.items()):
            if _sharded(o) and not sharded:
                del self._objects[n]    # the old generation's: bind() brings a new one
            elif n in rec["objects"] or n in rec["replicated"]:
                self._load_object(n, o, rec)
        self._values.clear()
        self._values.update(_snapshot(rec["values"]))

    def restore(self):
        """Go back to the last :meth:`commit` (the loaders copy: the commit stays)."""
        self._load(self._saved)

    def sync(self, pg):
        """Every rank of ``pg`` takes the newest commit that survived: survivors roll
        back, new workers catch up. Plain state: the last commit of the rank with the
        most commits (the lowest such rank). Sharded state: the newest commit whose
        every rank's shard is still held somewhere (its own rank or the next one),
        gathered on every rank; sharded objects are dropped (they belonged to the old
        group): :meth:`bind` loads them again. Collective. Returns the source rank."""
        import numpy as np
        recs = [self._saved, self._prev]
        info = np.array([(r["n"], r["world"]) if r is not None else (-1, 0)
                         for r in recs], np.int64).reshape(-1)
        infos = np.zeros((pg.size, 4), np.int64)
        pg.allgather(infos, info)
        wmax = max(1, int(infos[:, 1::2].max()))
        mask = np.zeros((2, wmax), np.uint8)
        for i, r in enumerate(recs):
            for old in (r or {}).get("parts", {}):
                mask[i, old] = 1
        masks = np.zeros((pg.size, 2, wmax), np.uint8)
        pg.allgather(masks, mask)
        n, where, lost = _newest_whole(infos, masks)
        if n is None:
            raise RuntimeError(f"elastic.State.sync: no commit survived whole: the shards "
                               f"of old ranks {lost} are gone (a rank and the next one "
                               "died together)")
        src, slot = where[0]
        mine = recs[slot] if pg.rank == src else None
        body = broadcast_tree(pg, None if mine is None else
                              {k: mine[k] for k in ("objects", "values", "replicated")}, src)
        world = int(infos[src, 2 * slot + 1])
        parts = {}
        for old in range(world):
            holder, hslot = next((r, s) for r, s in where if masks[r, s, old])
            have = recs[hslot]["parts"][old] if pg.rank == holder else None
            parts[old] = _broadcast_packed(pg, have, holder)
        rec = dict(body, parts=parts, world=world, n=n)
        self._load(rec, sharded=False)
        object.__setattr__(self, "_saved", rec)
        object.__setattr__(self, "_prev", None)
        object.__setattr__(self, "commits", n)
        return src


def _sharded(o) -> bool:
    return hasattr(o, "elastic_export") and hasattr(o, "elastic_load")


def _newest_whole(infos, masks):
    """(commit number, [(rank, slot)] holding it, None) for the newest commit every
    shard of which some rank holds; ``(None, None, lost old ranks)`` if none is.
    ``infos[rank] = [n, world, n_prev, world_prev]``, ``masks[rank, slot, old]``: the
    rank holds old rank ``old``'s shard of that slot's commit."""
    import numpy as np
    lost = []
    for n in sorted({int(v) for v in infos[:, 0::2].reshape(-1) if v >= 0}, reverse=True):
        where = [(r, s) for r in range(len(infos)) for s in (0, 1)
                 if infos[r, 2 * s] == n]
        world = int(infos[where[0][0], 2 * where[0][1] + 1])
        if world == 0:
            if lost:      # not a silent fall back past a lost sharded commit
                break
            return n, where, None
        have = np.zeros(world, bool)
        for r, s in where:
            have |= masks[r, s, :world].astype(bool)
        if have.all():
            return n, where, None
        if not lost:
            lost = [int(i) for i in np.flatnonzero(~have)]
    return None, None, lost


class ElasticSampler:
    """Sample indices of a dataset in one global order per epoch (a permutation seeded
    by ``seed + epoch``, or ``range(n)`` when ``shuffle=False``), consumed in global
    batches: step ``k`` of a world of ``W`` ranks takes positions
    ``[processed, processed + W * batch_size)``; rank ``r`` gets its ``r``-th slice.
    ``processed`` is in :meth:`state_dict`, so a commit/restore in a new world size
    resumes exactly where the committed step left off: no sample twice, none skipped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True):
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.processed = 0, 0

    def _order(self):
        import numpy as np
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng(self.seed + self.epoch).permutation(self.num_samples)

    def next_batch(self, rank: int, world_size: int):
        """This rank's indices of the next global batch (ints), and advances
        ``processed`` by the whole global batch; a new epoch starts when fewer than a
        global batch is left (the tail is dropped, the same on every rank)."""
        g = world_size * self.batch_size
        if self.processed + g > self.num_samples:
            self.epoch, self.processed = self.epoch + 1, 0
        if g > self.num_samples:
            raise ValueError(f"ElasticSampler: a global batch of {g} is more than the "
                             f"{self.num_samples} samples")
        a = self.processed + rank * self.batch_size
        out = [int(i) for i in self._order()[a:a + self.batch_size]]
        self.processed += g
        return out

    def state_dict(self):
        return {"epoch": self.epoch, "processed": self.processed, "seed": self.seed}

    def load_state_dict(self, sd):
        self.epoch, self.processed = int(sd["epoch"]), int(sd["processed"])
        self.seed = int(sd.get("seed", self.seed))
