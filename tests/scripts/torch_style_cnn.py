"""An MNIST-like CNN training loop written against PyTorch's API (an nn.Sequential model).

Runs unchanged with ``import torch`` or with deepseek (``--lib deepseek`` imports
deepseek as ``torch``, see _torch_style.py: the one line a user would swap). Prints one
JSON line: the per-step losses and the final eval accuracy. The data are synthetic
(seeded numpy), the initial weights are drawn with numpy and copied in, so both
libraries start from the same numbers."""
import json

import numpy as np

from _torch_style import torch_and_args  # (tests/scripts/ is sys.path[0])

torch, args = torch_and_args(steps=8)
nn = torch.nn  # (``import torch.nn`` would import the real torch package by name)
F = torch.nn.functional

device = "cuda" if torch.cuda.is_available() else "cpu"
device = "cpu"  # the comparison runs on the CPU for both libraries
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True


def Net():
    # the nn.Sequential style (scripts/bench_programs.py's MNIST net is the subclass one)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, 1), nn.BatchNorm2d(16), nn.MaxPool2d(2),
        nn.Dropout(0.0), nn.Flatten(1),
        nn.Linear(16 * 5 * 5, 32), nn.ReLU(),
        nn.Linear(32, 10), nn.LogSoftmax(dim=1))


rng = np.random.default_rng(0)
model = Net().to(device)
with torch.no_grad():
    for name, prm in model.named_parameters():
        prm.copy_(torch.tensor(rng.normal(0, 0.1, size=tuple(prm.shape)).astype(np.float32)))
images = torch.tensor(rng.normal(size=(64, 1, 14, 14)).astype(np.float32))
labels = torch.tensor(rng.integers(0, 10, size=64))
opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
losses = []
model.train()
for step in range(args.steps):
    idx = slice((step * 16) % 64, (step * 16) % 64 + 16)
    opt.zero_grad()
    loss = F.nll_loss(model(images[idx].to(device)), labels[idx].to(device))
    loss.backward()
    opt.step()
    sched.step()
    losses.append(float(f"{loss.item():.6f}"))
model.eval()
with torch.no_grad():
    out = model(images)
    pred = out.argmax(dim=1, keepdim=True)
    correct = pred.eq(labels.view_as(pred)).sum().item()
    top = torch.topk(out, 3, dim=1).indices
print(json.dumps({"losses": losses, "correct": int(correct), "top3_first": top[0].tolist(),
                  "loss_str": f"{loss:.4f}"}))
