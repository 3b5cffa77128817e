"""Train a small character-level GPT on any (dp, pp, tp) layout of the workers.

    deepseek-run --nproc 4 examples/train_gpt_3d.py --dp 2 --pp 2 --tp 1
    deepseek-run --nproc 4 examples/train_gpt_3d.py --dp 1 --pp 2 --tp 2 --schedule gpipe
    deepseek-run --nproc 4 examples/train_gpt_3d.py --dp 2 --pp 1 --tp 2
    python examples/train_gpt_3d.py                      # one process: the reference

The model (token + position embedding, pre-norm blocks of causal attention and an
MLP, a final norm and the vocabulary head) is an ``nn.Sequential``; every rank builds
it whole from the same seed, then
- tensor parallelism shards it over ``mesh["tp"]`` with ``parallelize_module``
  (attention heads and MLP columns split, vocabulary-parallel embedding, head and
  cross-entropy),
- pipeline parallelism cuts it into ``pp * virtual`` stages with ``pipeline`` and runs
  a schedule (GPipe, 1F1B or interleaved 1F1B) over ``mesh["pp"]``,
- data parallelism wraps each stage in DDP over ``mesh["dp"]`` (gradients of the
  tensor-parallel shards are averaged over dp only: the dp group holds the same shard).
Each step takes the same global batch on every layout (dp ranks take contiguous
slices), so the losses and weights match one process training on the full batch.
The last stage prints the step's loss (averaged over dp).
"""
import argparse
import os
import sys

import numpy as np

import deepseek as ds
import deepseek.distributed as dist
import deepseek.nn.functional as F
from deepseek import nn
from deepseek.distributed.pipelining import (Schedule1F1B, ScheduleGPipe,
                                             ScheduleInterleaved1F1B, pipeline)
from deepseek.distributed.tensor_parallel import (ColwiseParallel, RowwiseParallel,
                                                  causal_attention, parallelize_module,
                                                  vocab_parallel_cross_entropy)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_text.txt")
SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
             "interleaved": ScheduleInterleaved1F1B}


# ---------------------------------------------------------------------- the model
class Embed(nn.Module):
    def __init__(self, vocab, d, seq):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)

    def forward(self, ids):
        t = ids.shape[1]
        return self.tok(ids) + self.pos(ds.from_numpy(np.arange(t)))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.head_dim = d // heads
        # no key bias: it shifts every score of a query equally, so softmax gives it a
        # zero gradient (rounding noise that Adam would blow up into real updates)
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        # the head count comes from q's width: the same code runs on a tp shard
        return causal_attention(x, self.q_proj, self.k_proj, self.v_proj, self.o_proj,
                                self.head_dim)


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, heads)
        self.ln2, self.mlp = nn.LayerNorm(d), MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    def __init__(self, d, vocab):
        super().__init__()
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        return self.lm_head(self.ln_f(x))


def build_gpt(vocab, d=128, layers=4, heads=4, seq=32, seed=0):
    """The GPT as a Sequential: [Embed, Block x layers, Head]."""
    ds.manual_seed(seed)
    return nn.Sequential(Embed(vocab, d, seq), *[Block(d, heads) for _ in range(layers)],
                         Head(d, vocab))


def tp_plan(layers):
    return {"0.tok": RowwiseParallel(),
            "*.attn.q_proj": ColwiseParallel(), "*.attn.k_proj": ColwiseParallel(),
            "*.attn.v_proj": ColwiseParallel(), "*.attn.o_proj": RowwiseParallel(),
            "*.mlp.fc1": ColwiseParallel(), "*.mlp.fc2": RowwiseParallel(),
            f"{layers + 1}.lm_head": ColwiseParallel()}


# ---------------------------------------------------------------------- the data
def load_text(pad_to=8):
    """Character ids of the shipped text; the vocabulary padded to a multiple of
    ``pad_to`` (Megatron pads it so it splits over tp)."""
    text = open(DATA, encoding="utf-8").read()
    chars = sorted(set(text))
    vocab = -(-len(chars) // pad_to) * pad_to
    ids = np.array([chars.index(c) for c in text], np.int64)
    return ids, vocab


def global_batch(ids, step, batch, seq, seed):
    """The step's (inputs, targets), the same on every rank and layout."""
    rng = np.random.default_rng(seed * 1000 + step)
    starts = rng.integers(0, len(ids) - seq - 1, size=batch)
    x = np.stack([ids[s:s + seq] for s in starts])
    y = np.stack([ids[s + 1:s + seq + 1] for s in starts])
    return x, y


def even_splits(n_layers, n_stages):
    """Split points cutting n_layers modules into n_stages nearly equal pieces."""
    if n_stages > n_layers:
        raise ValueError(f"{n_stages} stages for a model of {n_layers} modules")
    return [round(i * n_layers / n_stages) for i in range(1, n_stages)]


# ---------------------------------------------------------------------- training
def train(dp=1, pp=1, tp=1, schedule="1f1b", steps=5, n_microbatches=None, virtual=1,
          split_points=None, batch=12, seq=16, d=32, layers=4, heads=4, lr=3e-3, seed=0,
          log_timing=False, verbose=False, optimizer="adamw"):
    """Train ``steps`` steps on the (dp, pp, tp) mesh. Returns a dict: ``losses`` (per
    step, dp-averaged; on last-stage ranks, else None), ``params`` (this rank's
    parameters by full-model name: (array, shard dim or None)), ``coord``
    ({"dp": .., "pp": .., "tp": ..}), ``peak_live`` and ``stats`` (last step's)."""
    mesh = dist.init_device_mesh(mesh_shape=(dp, pp, tp), mesh_dim_names=("dp", "pp", "tp"))
    ids, vocab = load_text()
    model = build_gpt(vocab, d, layers, heads, seq, seed)
    tp_group, dp_group = mesh["tp"], mesh["dp"]
    if tp > 1:
        parallelize_module(model, tp_group, tp_plan(layers))

        def loss_fn(logits, y):
            return vocab_parallel_cross_entropy(logits, y, group=tp_group)
    else:
        def loss_fn(logits, y):
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    n_stages = pp * virtual
    points = split_points if split_points is not None else even_splits(len(model), n_stages)
    stages = pipeline(model, points, group=mesh["pp"])
    pieces = [st.submod for st in stages]
    if dp > 1:
        for st in stages:
            st.submod = dist.DistributedDataParallel(st.submod, process_group=dp_group)
    m = n_microbatches or (1 if pp == 1 else 2 * pp)
    cls = SCHEDULES[schedule if pp > 1 or schedule != "interleaved" else "gpipe"]
    kw = dict(loss_fn=loss_fn, log_timing=log_timing)
    sched = cls(stages, m, **kw) if cls is ScheduleInterleaved1F1B else cls(stages[0], m, **kw)
    params = [p for piece in pieces for p in piece.parameters()]
    # (the equivalence tests use SGD: Adam turns the rounding noise of a near-zero
    # gradient into a full-size step, so its weights agree less closely than its loss)
    opt = ds.optim.AdamW(params, lr=lr, weight_decay=0.0) if optimizer == "adamw" else \
        ds.optim.SGD(params, lr=lr, momentum=0.9)
    last = any(st.is_last for st in stages)
    rank_dp = mesh.get_local_rank("dp")
    per = batch // dp
    losses = []
    for step in range(steps):
        x, y = global_batch(ids, step, batch, seq, seed)
        sl = slice(rank_dp * per, (rank_dp + 1) * per)
        opt.zero_grad()
        loss = sched.step(ds.from_numpy(x[sl]), target=ds.from_numpy(y[sl]))
        opt.step()
        if last:
            v = np.array([loss], np.float64)
            dp_group.allreduce(v, dist.ReduceOp.AVG)
            losses.append(float(v[0]))
            if verbose and rank_dp == 0 and mesh.get_local_rank("tp") == 0:
                print(f"step {step + 1} loss {losses[-1]:.6f}", flush=True)
    out = {"losses": losses if last else None,
           "coord": {n: mesh.get_local_rank(n) for n in ("dp", "pp", "tp")},
           "peak_live": {st.stage_index: st.peak_live for st in stages},
           "stats": sched.stats() if log_timing else None,
           "params": {}}
    for piece in pieces:
        for mname, mod in piece.named_modules():
            dims = getattr(mod, "shard_dims", {})
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                out["params"][full] = (p.array.copy(), dims.get(pname))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="1f1b")
    ap.add_argument("--virtual", type=int, default=1,
                    help="stages per pipeline rank (interleaved schedule)")
    ap.add_argument("--microbatches", type=int, default=None,
                    help="microbatches per step (default: 2 x pp)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.schedule == "interleaved" and a.virtual == 1:
        a.virtual = 2
    train(a.dp, a.pp, a.tp, a.schedule, a.steps, a.microbatches, a.virtual, None, a.batch,
          a.seq, a.d, a.layers, a.heads, a.lr, a.seed, verbose=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
