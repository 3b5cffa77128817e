"""deepseek.amp: automatic mixed precision (PyTorch's ``torch.amp`` names and semantics).

    from deepseek.amp import GradScaler, autocast
    scaler = GradScaler()
    for inputs, labels in dataloader:
        with autocast():
            loss = criterion(model(inputs), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

``autocast`` (autocast_mode.py) is a dispatch mode that casts each op's inputs by the
op table's policy; ``GradScaler`` (grad_scaler.py) scales the loss, unscales and
checks the gradients in one native pass, and skips steps with inf/NaN gradients.
"""
from .autocast_mode import (autocast, is_autocast_enabled, get_autocast_dtype,  # noqa: F401
                            clear_autocast_cache)
from .grad_scaler import GradScaler  # noqa: F401

__all__ = ["autocast", "GradScaler", "is_autocast_enabled", "get_autocast_dtype",
           "clear_autocast_cache"]
