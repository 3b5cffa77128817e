"""Worker for tests/test_multihost.py, started by deepseek-run inside a network namespace.

``multihost_worker.py MODE``; every rank prints ``RUNID <job id>`` first (the test
checks /dev/shm for that job's segments) and one line ``RESULT <json>`` when it got
through (the test reads them from the launchers' output). Modes:

* ``collectives``: allreduce (sum, max, several sizes and dtypes, both algorithms),
  broadcast, allgather, reduce_scatter, barrier and a cross-host subgroup; each result
  compared here with the value computed locally from the known inputs.
* ``ddp``: DDP training steps (tests/ddp_cases.py) checked against one process on the
  whole batch.
* ``ddp_zero_blocks``: DDP of a model with an embedding table (sparse gradient) with
  the automatic zero-block skipping across hosts and without: every step's gradients
  the same bit for bit, fp32 and fp16 on the wire.
* ``loop``: allreduces until the test kills a node; prints ``READY`` after the first.
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deepseek import collectives as C  # noqa: E402


def _expect(name, got, want, results):
    ok = bool(np.array_equal(got, want))
    results[name] = ok
    if not ok:
        print(f"MISMATCH {name}: got {got.ravel()[:6]} want {want.ravel()[:6]}",
              file=sys.stderr, flush=True)


def collectives():
    pg = C.init_process_group()
    r, n = pg.rank, pg.size
    res = {}
    # sizes around the zmq transport's algorithm switch and the hierarchical chunking
    for count in (1, 7, 1000, 5000, 300_000, 1_000_003):
        for dt in (np.float32, np.float64, np.int64):
            x = (np.arange(count) % 97 + r + 1).astype(dt)
            pg.allreduce(x)
            want = sum((np.arange(count) % 97 + k + 1).astype(dt) for k in range(n))
            _expect(f"allreduce/{count}/{np.dtype(dt).name}", x, want, res)
    x = np.array([r * 10.0, -r], np.float64)
    pg.allreduce(x, op="max")
    _expect("allreduce/max", x, np.array([(n - 1) * 10.0, 0.0]), res)
    b = np.full(10_000, float(r), np.float32)
    pg.broadcast(b, src=n - 1)
    _expect("broadcast", b, np.full(10_000, n - 1.0, np.float32), res)
    out = np.empty(3 * n, np.int32)
    pg.allgather(out, np.full(3, r, np.int32))
    _expect("allgather", out, np.repeat(np.arange(n, dtype=np.int32), 3), res)
    rs_out = np.empty(4, np.float32)
    pg.reduce_scatter(rs_out, np.arange(4 * n, dtype=np.float32) + r)
    full = sum(np.arange(4 * n, dtype=np.float32) + k for k in range(n))
    _expect("reduce_scatter", rs_out, full[r * 4:(r + 1) * 4], res)
    pg.barrier()
    # a subgroup with one rank per host (ranks 0 and n-1 live on different hosts)
    sub = C.new_group([0, n - 1])
    if sub is not None and r in (0, n - 1):
        y = np.full(5000, r + 1.0)
        sub.allreduce(y)
        _expect("subgroup", y, np.full(5000, n + 1.0), res)
    x = np.full(100_001, float(r), np.float64)
    pg.allreduce(x, op="avg")
    _expect("allreduce/avg", x, np.full(100_001, (n - 1) / 2.0), res)
    if n == 4:
        # hosts of unequal size (2 + 1 ranks): one rail, through the leaders
        sub3 = C.new_group([0, 1, 2])
        if sub3 is not None:
            for count in (3, 70_001):
                y = np.arange(count, dtype=np.float32) + r
                sub3.allreduce(y)
                _expect(f"uneven/{count}", y, 3 * np.arange(count, dtype=np.float32) + 3,
                        res)
            res["uneven/transport"] = sub3.transport == "hier"
    return {"rank": r, "world": n, "transport": pg.transport,
            "rails": getattr(pg._backend, "n_rails", None),
            "bulk": getattr(getattr(pg._backend, "flat", pg._backend), "_bulk", None)
            is not None,
            "host": os.environ.get("DEEPSEEK_HOST_ID"), "results": res}


def ddp():
    import ddp_cases

    r = int(os.environ["RANK"])
    n = int(os.environ["WORLD_SIZE"])
    params, _ = ddp_cases.ddp_params(r, n, steps=3)
    ref = ddp_cases.reference_params(3)
    err = max(float(np.max(np.abs(params[k] - ref[k]))) for k in ref)
    transport = C.get_default_group().transport
    return {"rank": r, "world": n, "transport": transport, "max_err": err}


def _embedding_grads(skip, compression, steps=4):
    """Each step's gradients of an embedding + linear model under DDP (each rank its
    own token batch, so the ranks' non-zero rows differ), and DDP's wire counts."""
    import deepseek as ds
    from deepseek.distributed import DistributedDataParallel

    ds.manual_seed(0)
    nn = ds.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5000, 100)  # 2 MB: a bucket of its own
            self.out = nn.Linear(100, 3)

        def forward(self, ids):
            return self.out(self.emb(ids).mean(1))

    model = Model()
    kw = {} if skip is None else {"skip_zero_blocks": skip}
    ddp = DistributedDataParallel(model, compression=compression, bucket_cap_mb=1, **kw)
    rng = np.random.default_rng(C.get_default_group().rank)
    grads = []
    for _ in range(steps):
        model.zero_grad()
        (ddp(ds.tensor(rng.integers(0, 5000, (4, 7)))) ** 2).sum().backward()
        grads.append({k: p.grad.numpy().copy() for k, p in model.named_parameters()})
    return grads, ddp.wire_dtype_counts, ddp.skip_zero_blocks


def ddp_zero_blocks():
    pg = C.init_process_group()
    res, counts = {}, {}
    for comp in (None, "fp16"):
        sparse, counts[str(comp)], auto = _embedding_grads(None, comp)
        dense, _, _ = _embedding_grads(False, comp)
        res[f"auto on {comp}"] = auto
        res[f"same {comp}"] = all(np.array_equal(a[k], b[k]) and a[k].any()
                                  for a, b in zip(sparse, dense) for k in a)
    return {"rank": pg.rank, "world": pg.size, "transport": pg.transport,
            "results": res, "counts": counts}


def loop():
    pg = C.init_process_group()
    x = np.ones(200_000, np.float32)
    pg.allreduce(x)
    print("READY", flush=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        pg.allreduce(x)
    return {"rank": pg.rank}


if __name__ == "__main__":
    mode = sys.argv[1]
    print(f"RUNID {os.environ.get('DEEPSEEK_RUN_ID', '')}", flush=True)
    result = {"collectives": collectives, "ddp": ddp, "ddp_zero_blocks": ddp_zero_blocks,
              "loop": loop}[mode]()
    print("RESULT " + json.dumps(result), flush=True)
    C.destroy_process_group()
