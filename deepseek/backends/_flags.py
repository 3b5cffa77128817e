"""A module-like namespace of flags: attributes that programs set and read back."""


class Flags:
    """Attribute bag with defaults; ``repr`` lists the flags."""

    def __init__(self, name, **defaults):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(defaults))

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"{self._name} has no attribute {key!r}") from None

    def __setattr__(self, key, value):
        if key not in self._values:
            raise AttributeError(f"{self._name} has no flag {key!r}")
        self._values[key] = value

    def __repr__(self):
        return f"<{self._name} " + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ">"
