"""Training steps of small models, deepseek next to PyTorch, at one thread.

The models are written once below against a module namespace ``torch``: the same
code runs with ``import deepseek as torch`` and with real PyTorch. Each is a small
model whose step time is dominated by per-op overhead, not by large GEMMs:

  nanogpt     GPT, 4 layers, d 128, 4 heads, block 64, vocab 65, batch 8, AdamW
  gpt_nano    GPT, 3 layers, d 48, 3 heads, block 16, vocab 10, batch 32 (minGPT's
              gpt-nano shape), AdamW
  mm_transf   makemore-style character transformer: 4 layers, d 64, 4 heads,
              block 16, vocab 27, batch 32, AdamW
  mm_gru      makemore-style character GRU: embedding 64, nn.GRU hidden 128,
              block 16, vocab 27, batch 32, AdamW
  mnist_cnn   2 conv + max-pool + dropout + 2 linear on 28x28, batch 64, Adadelta
  vae         784-400-20 VAE (BCE + KL), batch 128, Adam

Both systems run in this one process, in interleaved rounds; each round times
``--steps`` steps of one (model, system) after warm-up and keeps their median; the
table shows the median over rounds and deepseek's step time over PyTorch's.
``--baseline DIR`` adds a third system, the deepseek tree at DIR (e.g. a ``git archive``
of HEAD, native module built); both deepseek trees then run in worker processes of
their own (alike: neither shares its process with PyTorch) that take their turns in
every round (only one system runs at a time). ``--clock cpu`` times process CPU time
instead of wall time (steadier on a loaded machine; every system runs one thread).

    python scripts/bench_programs.py [--rounds 5] [--steps 10] [--models nanogpt vae]
                                     [--baseline /tmp/base] [--clock cpu]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(_HERE, ".."), _HERE]
from _timing import interleaved_medians  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# ---- the models: PyTorch API only, ``torch`` is whichever library runs them --------------
def gpt_classes(torch):
    """A GPT (pre-LayerNorm blocks, causal self-attention, GELU MLP, tied nothing)."""
    nn, F = torch.nn, torch.nn.functional

    class SelfAttention(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.register_buffer("mask", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).split(d, dim=2)
            q = q.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            k = k.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            v = v.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(b, t, d)
            return self.out(y)

    class Block(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = SelfAttention(d, heads, block)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.proj = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.proj(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self, vocab, block, layers, d, heads):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(block, d)
            self.blocks = nn.ModuleList([Block(d, heads, block) for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)

        def forward(self, idx, targets):
            b, t = idx.shape
            x = self.tok(idx) + self.pos(torch.arange(t))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln(x))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    return GPT


def training_step(opt, loss_fn, clip=None):
    """The step every model shares: zero grads, loss, backward, (clip), optimizer step."""
    def step():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        if clip is not None:
            clip()
        opt.step()
        return loss
    return step


def gpt_step(torch, vocab, block, layers, d, heads, batch):
    """One AdamW training step of a GPT on random tokens."""
    model = gpt_classes(torch)(vocab, block, layers, d, heads)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x = torch.randint(0, vocab, (batch, block))
    y = torch.randint(0, vocab, (batch, block))
    return training_step(opt, lambda: model(x, y),
                         clip=lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))


def gru_step(torch, vocab=27, block=16, emb=64, hidden=128, batch=32):
    """A character-level GRU language model (makemore's RNN task), AdamW."""
    nn, F = torch.nn, torch.nn.functional

    class CharGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, emb)
            self.rnn = nn.GRU(emb, hidden, batch_first=True)
            self.head = nn.Linear(hidden, vocab)

        def forward(self, idx, targets):
            h, _ = self.rnn(self.emb(idx))
            logits = self.head(h)
            return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    model = CharGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, block))
    y = torch.randint(0, vocab, (batch, block))
    return training_step(opt, lambda: model(x, y))


def mnist_step(torch, batch=64):
    """The classic MNIST convnet shape (two 3x3 convs, max-pool, dropout, two linears)."""
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.drop1 = nn.Dropout(0.25)
            self.drop2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(self.drop1(x), 1)
            x = self.drop2(F.relu(self.fc1(x)))
            return F.log_softmax(self.fc2(x), dim=1)

    model = Net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return training_step(opt, lambda: F.nll_loss(model(x), y))


def vae_step(torch, batch=128):
    """A 784-400-20 variational autoencoder: reparameterised sample, BCE + KL loss."""
    nn, F = torch.nn, torch.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(784, 400)
            self.mu = nn.Linear(400, 20)
            self.logvar = nn.Linear(400, 20)
            self.dec1 = nn.Linear(20, 400)
            self.dec2 = nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.enc(x))
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.dec2(F.relu(self.dec1(z)))), mu, logvar

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 784)

    def loss():
        recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld
    return training_step(opt, loss)


MODELS = {
    "nanogpt": lambda torch: gpt_step(torch, vocab=65, block=64, layers=4, d=128, heads=4, batch=8),
    "gpt_nano": lambda torch: gpt_step(torch, vocab=10, block=16, layers=3, d=48, heads=3, batch=32),
    "mm_transf": lambda torch: gpt_step(torch, vocab=27, block=16, layers=4, d=64, heads=4, batch=32),
    "mm_gru": gru_step,
    "mnist_cnn": mnist_step,
    "vae": vae_step,
}


# ---- measuring ------------------------------------------------------------------------------
def _median_step(step, steps, clock):
    """Median seconds (on ``clock``) of one call of ``step`` over ``steps`` calls."""
    return interleaved_medians({"step": step}, steps, warmup=0, clock=CLOCKS[clock])["step"]


class _Worker:
    """A deepseek tree in a worker process (``--serve``): it builds the models with that
    tree and times them on request, one JSON line each way."""

    def __init__(self, root, models, warmup, clock):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", os.path.abspath(root),
               "--clock", clock, "--models", *models]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.warmup = warmup

    def time(self, name, steps):
        """Per-step median seconds of ``steps`` steps of model ``name`` in the worker."""
        self.proc.stdin.write(json.dumps([name, steps, self.warmup]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a deepseek worker died (exit code {self.proc.wait()})")
        return float(line)

    def close(self):
        """Stop the worker (end of input), waiting at most 30 s before killing it."""
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve(root, models, clock):
    """Worker of :class:`_Worker`: deepseek imported from ``root``; each input line
    [model, steps, warmup] is answered with one median step time."""
    sys.path.insert(0, root)
    import deepseek
    assert os.path.dirname(os.path.dirname(os.path.abspath(deepseek.__file__))) == root, \
        deepseek.__file__
    deepseek.set_num_threads(1)
    built = {}
    for line in sys.stdin:
        name, steps, warmup = json.loads(line)
        if name not in built:
            deepseek.manual_seed(0)
            built[name] = MODELS[name](deepseek)
            for _ in range(warmup):
                built[name]()
        print(_median_step(built[name], steps, clock), flush=True)


def run(models, rounds, steps, warmup=3, clock="wall", baseline=None):
    """{model: {"deepseek": [s...], "torch": [s...] (, "baseline": [s...])}}: per-round
    median step times; ``baseline``: the root of another deepseek tree to time too
    (then both deepseek trees run in worker processes)."""
    import torch
    torch.set_num_threads(1)
    libs = {"torch": torch}
    workers = {}
    if baseline:
        workers = {s: _Worker(root, models, warmup, clock) for s, root in
                   (("deepseek", os.path.join(_HERE, "..")), ("baseline", baseline))}
    else:
        import deepseek
        deepseek.set_num_threads(1)
        libs["deepseek"] = deepseek
    built = {}
    for name in models:
        for s, lib in libs.items():
            lib.manual_seed(0)
            built[name, s] = MODELS[name](lib)
            for _ in range(warmup):
                built[name, s]()
    systems = ["deepseek", "torch"] + (["baseline"] if baseline else [])
    out = {name: {s: [] for s in systems} for name in models}
    try:
        for _ in range(rounds):
            for name in models:
                for s in systems:
                    t = workers[s].time(name, steps) if s in workers else \
                        _median_step(built[name, s], steps, clock)
                    out[name][s].append(t)
    finally:
        for w in workers.values():
            w.close()
    return out


def baseline_table(results):
    """The markdown table of deepseek, its baseline tree and PyTorch (medians over rounds)."""
    import statistics
    lines = ["| model | deepseek (ms) | baseline (ms) | PyTorch (ms) | deepseek / PyTorch | "
             "baseline / PyTorch | deepseek / baseline |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        d, b, t = (statistics.median(r[s]) for s in ("deepseek", "baseline", "torch"))
        lines.append(f"| {name} | {1e3 * d:.2f} | {1e3 * b:.2f} | {1e3 * t:.2f} | {d / t:.2f}x "
                     f"| {b / t:.2f}x | {d / b:.2f}x |")
    return "\n".join(lines)


def profile(name, steps):
    """cProfile of deepseek running ``steps`` steps of model ``name``."""
    import deepseek
    from bench_overhead import cprofile
    deepseek.set_num_threads(1)
    deepseek.manual_seed(0)
    cprofile(MODELS[name](deepseek), steps, warmup=3, rows=30)


def main(argv=None):
    """Measure (or profile) and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--profile", metavar="MODEL", choices=list(MODELS),
                   help="cProfile deepseek's MODEL instead")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time, or process CPU time")
    p.add_argument("--baseline", metavar="DIR",
                   help="also time the deepseek tree at DIR (worker process, same rounds)")
    p.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # the baseline worker
    a = p.parse_args(argv)
    if a.serve:
        serve(a.serve, a.models, a.clock)
        return
    if a.profile:
        profile(a.profile, a.steps)
        return
    results = run(a.models, a.rounds, a.steps, clock=a.clock, baseline=a.baseline)
    if a.baseline:
        print(baseline_table(results))
        return
    from bench_overhead import ratio_table
    print(ratio_table(results, "model", "ms", 1e3))


if __name__ == "__main__":
    main()
