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


class State:
    """The training state in-process recovery rolls back to (see the module
    docstring). ``State(model=m, optimizer=o, sampler=s, step=0, epoch=0)``."""

    def __init__(self, **values):
        object.__setattr__(self, "_objects", {})
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "_reset_callbacks", [])
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
                                 "it in place")
        if name == "commits":
            object.__setattr__(self, name, value)
        else:
            self._values[name] = value

    def register_reset_callbacks(self, callbacks):
        """Call each of ``callbacks`` (no arguments) after every reset: the world
        changed and the state was synced (rescale the learning rate, rebuild DDP)."""
        self._reset_callbacks.extend(callbacks)

    def on_reset(self):
        for cb in self._reset_callbacks:
            cb()

    def _take(self):
        return {"objects": {n: _snapshot(o.state_dict()) for n, o in self._objects.items()},
                "values": _snapshot(self._values)}

    def commit(self):
        """Snapshot the state in memory (what :meth:`restore` and :meth:`sync` go
        back to). Cheap: one copy of every array, no communication."""
        object.__setattr__(self, "_saved", self._take())
        object.__setattr__(self, "commits", self.commits + 1)

    def _load(self, snap):
        for n, o in self._objects.items():
            o.load_state_dict(_snapshot(snap["objects"][n]))
        self._values.clear()
        self._values.update(_snapshot(snap["values"]))

    def restore(self):
        """Go back to the last :meth:`commit` (the loaders copy: the commit stays)."""
        self._load(self._saved)

    def sync(self, pg):
        """Every rank of ``pg`` takes the last commit of the rank with the most commits
        (the lowest such rank): survivors roll back, new workers catch up.
        Collective. Returns the source rank."""
        import numpy as np
        counts = np.zeros(pg.size, np.int64)
        pg.allgather(counts, np.array([self.commits], np.int64))
        src = int(np.argmax(counts))            # first maximum: the lowest rank
        snap = broadcast_tree(pg, self._saved if pg.rank == src else None, src)
        self._load(snap)
        object.__setattr__(self, "_saved", snap)
        object.__setattr__(self, "commits", int(counts[src]))
        return src


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
