"""Calling the hooks: every callback first (in the Trainer's callback order), then the
model's own method of the same name if it defines one (Lightning's order).

``on_train_epoch_end`` is split as Lightning splits it: the plain callbacks, then the
model, then the *monitoring* callbacks (EarlyStopping, ModelCheckpoint), so that what
the model logs in its own hook is there when they decide.
"""

# hooks a model may define too (called with the callback's arguments minus
# ``trainer, model``); setup/teardown are not among them: a plain nn.Module may well
# have methods of those names that mean something else
MODEL_HOOKS = frozenset({
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start",
    "on_validation_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_save_checkpoint",
    "on_load_checkpoint",
})


class Hooks:
    """Dispatches hook ``name`` to the trainer's callbacks and its model."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __call__(self, name, *args):
        self.callbacks(name, *args)
        self.model(name, *args)

    def callbacks(self, name, *args, monitoring=None):
        """Call ``name`` on the callbacks (only the monitoring ones, or only the others,
        when ``monitoring`` is True/False)."""
        t = self.trainer
        for cb in t.callbacks:
            if monitoring is not None and bool(cb._monitoring) != monitoring:
                continue
            getattr(cb, name)(t, t.model, *args)

    def model(self, name, *args):
        fn = getattr(self.trainer.model, name, None) if name in MODEL_HOOKS else None
        if callable(fn):
            fn(*args)

    def train_epoch_end(self):
        self.callbacks("on_train_epoch_end", monitoring=False)
        self.model("on_train_epoch_end")
        self.callbacks("on_train_epoch_end", monitoring=True)
