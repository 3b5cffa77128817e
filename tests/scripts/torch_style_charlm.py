"""A char-level language model (GRU + a small transformer decoder head) written
against PyTorch's API; runs unchanged under torch or deepseek (``--lib``). Prints one
JSON line with the per-step losses and a greedy sample."""
import json
import math

import numpy as np

from _torch_style import torch_and_args  # (tests/scripts/ is sys.path[0])

torch, args = torch_and_args(steps=6)
nn = torch.nn  # (``import torch.nn`` would import the real torch package by name)
F = torch.nn.functional

text = "hello world, this is a tiny corpus for a tiny model. " * 4
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
V, E, H, T = len(chars), 16, 32, 12


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.rnn = nn.GRU(E, H, num_layers=1, batch_first=True)
        layer = nn.TransformerEncoderLayer(H, 2, 2 * H, dropout=0.0, batch_first=True)
        self.attn = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(H, V)

    def forward(self, idx):
        x, _ = self.rnn(self.emb(idx))
        mask = torch.triu(torch.full((idx.shape[1], idx.shape[1]), float("-inf")), diagonal=1)
        x = self.attn(x, mask=mask)
        return self.head(x)


rng = np.random.default_rng(0)
model = CharLM()
with torch.no_grad():
    for _, prm in model.named_parameters():
        prm.copy_(torch.tensor(rng.normal(0, 0.2, size=tuple(prm.shape)).astype(np.float32)))
opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
starts = rng.integers(0, len(text) - T - 1, size=(args.steps, 4))
losses = []
for step in range(args.steps):
    ix = torch.tensor(starts[step])
    xb = torch.stack([data[i:i + T] for i in ix.tolist()])
    yb = torch.stack([data[i + 1:i + T + 1] for i in ix.tolist()])
    logits = model(xb)
    loss = F.cross_entropy(logits.view(-1, V), yb.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(round(loss.item(), 6))
with torch.no_grad():
    idx = data[:4].view(1, -1)
    for _ in range(8):
        nxt = model(idx)[:, -1, :].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
print(json.dumps({"losses": losses, "sample": "".join(chars[i] for i in idx[0].tolist()),
                  "ppl": round(math.exp(losses[-1]), 4)}))
