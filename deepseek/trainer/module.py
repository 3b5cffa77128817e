"""The model side: what the Trainer requires of a model, what it gives it (``trainer``,
``self.log``), and what it accepts back from training_step."""


def check_model(model, need_training):
    from .. import nn
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be a deepseek.nn.Module, got {type(model).__name__}")
    if need_training:
        name = type(model).__name__
        if not callable(getattr(model, "training_step", None)):
            raise TypeError(f"{name} has no training_step(batch, batch_idx): define it to return "
                            "the loss (a scalar tensor) for one batch")
        if not callable(getattr(model, "configure_optimizers", None)):
            raise TypeError(f"{name} has no configure_optimizers(): define it to return an "
                            "optimizer, ([optimizers], [schedulers]) or {'optimizer': ..., "
                            "'lr_scheduler': ...}")


def training_loss(out):
    """The scalar loss tensor in what training_step returned (checked)."""
    from .._tensor import Tensor
    loss = out
    if isinstance(out, dict):
        if "loss" not in out:
            raise ValueError(f"training_step returned a dict without a 'loss' key "
                             f"(keys: {sorted(out)})")
        loss = out["loss"]
    if not isinstance(loss, Tensor):
        raise TypeError(f"training_step must return the loss as a scalar deepseek.Tensor (or "
                        f"a dict with 'loss'), got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"training_step must return a scalar loss, got a tensor of shape "
                         f"{tuple(loss.shape)}: reduce it (e.g. loss.mean())")
    if not loss.requires_grad:
        raise RuntimeError("the loss returned by training_step does not require grad: it was "
                           "computed under no_grad, detached, or from no trainable parameter")
    return loss.reshape(()) if loss.ndim else loss


class Logs:
    """Where ``self.log(name, value)`` lands while a training/validation step runs."""

    def __init__(self):
        self.current = None     # name -> value while a step runs; None outside steps

    def log(self, name, value, *args, **kwargs):
        """``self.log(name, value)`` inside training_step/validation_step."""
        if not isinstance(name, str):
            raise TypeError(f"log: the name must be a string, got {name!r}")
        if hasattr(value, "detach"):
            if value.numel() != 1:
                raise ValueError(f"log({name!r}): expected a scalar, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            value = value.detach().item()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log({name!r}): expected a number or a scalar tensor, got "
                            f"{type(value).__name__}") from None
        if self.current is None:
            raise RuntimeError("log() can only be called inside training_step or validation_step "
                               "while the Trainer runs them")
        self.current[name] = value

    def log_dict(self, metrics, *args, **kwargs):
        for name, value in metrics.items():
            self.log(name, value, *args, **kwargs)

    def start(self):
        self.current = {}

    def take(self):
        """What was logged since ``start`` (logging is closed again)."""
        out, self.current = self.current or {}, None
        return out


def attach(model, trainer):
    """Give the model ``trainer`` and (unless it has its own) ``log``/``log_dict``."""
    object.__setattr__(model, "trainer", trainer)
    for name, fn in (("log", trainer._logs.log), ("log_dict", trainer._logs.log_dict)):
        own = getattr(type(model), name, None)
        if own is None:
            object.__setattr__(model, name, fn)
