"""The model and data the Trainer tests share (tests/test_trainer.py and the
tests/scripts/trainer_*.py scripts it runs under deepseek-run)."""
import numpy as np

N_SAMPLES, N_IN, N_HID = 64, 4, 16


def make_data(n=N_SAMPLES, seed=0):
    """A noisy linear regression problem (float32 numpy arrays)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_IN)).astype(np.float32)
    w = rng.standard_normal((N_IN, 1)).astype(np.float32)
    y = (x @ w + 0.05 * rng.standard_normal((n, 1))).astype(np.float32)
    return x, y


def make_loader(batch_size=8, shuffle=True, n=N_SAMPLES, seed=0, drop_last=False):
    import deepseek as ds
    from deepseek.data import DataLoader, TensorDataset
    x, y = make_data(n, seed)
    return DataLoader(TensorDataset(ds.tensor(x), ds.tensor(y)), batch_size=batch_size,
                      shuffle=shuffle, drop_last=drop_last)


def make_model(dropout=0.0, optimizer="adam", lr=0.05, scheduler=None):
    """A two-layer regressor with the Lightning-shaped methods the Trainer calls.

    optimizer: 'adam' or 'sgd'; scheduler: None, 'epoch' or 'step' (a StepLR stepped
    at that interval).
    """
    import deepseek.nn as nn
    import deepseek.nn.functional as F
    from deepseek import optim

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(N_IN, N_HID)
            self.drop = nn.Dropout(dropout)
            self.fc2 = nn.Linear(N_HID, 1)

        def forward(self, x):
            return self.fc2(self.drop(self.fc1(x).tanh()))

        def _mse(self, batch):
            x, y = batch
            return F.mse_loss(self(x), y)

        def training_step(self, batch, batch_idx):
            loss = self._mse(batch)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self._mse(batch))

        def configure_optimizers(self):
            if optimizer == "sgd":
                opt = optim.SGD(self.parameters(), lr=lr)
            else:
                opt = optim.Adam(self.parameters(), lr=lr)
            if scheduler is None:
                return opt
            sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": scheduler}}

    return Regressor()


def params(model):
    """name -> float32 numpy copy of every parameter."""
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def checksum(model):
    """A float that changes with any bit of any parameter (printed by the scripts)."""
    total = 0.0
    for i, (_, p) in enumerate(sorted(params(model).items())):
        a = p.astype(np.float64).ravel()
        total += float(np.sum(a * np.arange(1, a.size + 1))) * (i + 1)
    return repr(total)
