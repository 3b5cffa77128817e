"""The Trainer's precision (Lightning's values): '32-true', 'bf16-mixed', '16-mixed'.

'bf16-mixed' runs training and validation steps under ``deepseek.amp.autocast`` with
bfloat16; '16-mixed' uses float16 and a ``GradScaler`` (the loss is scaled before
backward, the gradients unscaled before clipping and the step, an inf/NaN step is
skipped). Parameters and optimizer state stay float32 (master weights) in both.
The scaler's state goes into the checkpoint (``precision_state``).
"""
import contextlib


class Precision:
    """Wires autocast and the GradScaler into the loop for one ``precision`` value."""

    def __init__(self, precision, accelerator="cpu"):
        self.precision = precision
        self.device_type = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
        self.scaler = None
        if precision == "16-mixed":
            from ..amp import GradScaler
            self.scaler = GradScaler(device=self.device_type)
        self._unscaled = set()

    def forward_context(self):
        """The context the forward of a step runs in."""
        if self.precision == "32":
            return contextlib.nullcontext()
        from .. import dtypes
        from ..amp import autocast
        dtype = dtypes.bfloat16 if self.precision == "bf16-mixed" else dtypes.float16
        return autocast(self.device_type, dtype=dtype)

    def scale_loss(self, loss):
        """The loss backward runs on (scaled under '16-mixed')."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizers):
        """Unscale the gradients before clipping (once per step and optimizer)."""
        if self.scaler is None:
            return
        for opt in optimizers:
            if id(opt) not in self._unscaled:
                self.scaler.unscale_(opt)
                self._unscaled.add(id(opt))

    def optimizer_step(self, optimizer, strategy):
        """The strategy's step of ``optimizer``, skipped on inf/NaN gradients."""
        if self.scaler is None:
            return strategy.optimizer_step(optimizer)
        return self.scaler._step_with(optimizer, lambda: strategy.optimizer_step(optimizer))

    def after_steps(self):
        """Adapt the scale once all optimizers stepped."""
        self._unscaled.clear()
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self):
        """What the checkpoint keeps (the scaler's state)."""
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`."""
        if self.scaler is not None and state and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
