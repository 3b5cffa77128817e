"""A model configuration: ``config.json``'s keys as attributes, over per-model defaults."""
import json

__all__ = ["Config"]


class Config:
    """Attributes from ``defaults`` overridden by keyword arguments (any extra key of a
    ``config.json`` is kept, so ``to_dict()`` writes back what was read)."""

    model_type = None
    defaults = {}

    def __init__(self, **kw):
        for k, v in self.defaults.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)
        for k, v in kw.items():
            setattr(self, k, v)
        if self.model_type is not None:
            self.model_type = type(self).model_type

    @classmethod
    def from_dict(cls, d):
        return cls(**d)

    @classmethod
    def from_json_file(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"
