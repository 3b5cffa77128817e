"""Random number generation: per-generator state, manual_seed, the default generator.

Numbers are drawn on the CPU with numpy's PCG64 and moved to the target device, so
a seed gives the same values on CPU and GPU.
"""
import numpy as np


class Generator:
    """A random stream with its own state (``deepseek.Generator().manual_seed(0)``)."""

    def __init__(self, device="cpu"):
        self.device = device
        self._seed = int(np.random.SeedSequence().entropy % (2 ** 63))
        self._rng = np.random.Generator(np.random.PCG64(self._seed))

    def manual_seed(self, seed):
        """Reset the stream to a fixed seed; returns self."""
        if not isinstance(seed, (int, np.integer)):
            raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
        self._seed = int(seed) % (2 ** 64)
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def seed(self):
        """Reseed from OS entropy; returns the new seed."""
        self.manual_seed(int(np.random.SeedSequence().entropy % (2 ** 63)))
        return self._seed

    def initial_seed(self):
        return self._seed

    def get_state(self):
        """The generator state as a JSON-serialisable dict (checkpointable)."""
        st = self._rng.bit_generator.state
        return {"bit_generator": st["bit_generator"], "state": {k: int(v) for k, v in st["state"].items()},
                "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"]), "seed": self._seed}

    def set_state(self, state):
        bg = np.random.PCG64()
        bg.state = {"bit_generator": state["bit_generator"], "state": dict(state["state"]),
                    "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}
        self._rng = np.random.Generator(bg)
        self._seed = state.get("seed", self._seed)

    @property
    def numpy(self):
        """The underlying numpy Generator."""
        return self._rng


default_generator = Generator()


def manual_seed(seed):
    """Seed the default generator; returns it."""
    default_generator.manual_seed(seed)
    return default_generator


def seed():
    return default_generator.seed()


def initial_seed():
    return default_generator.initial_seed()


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state):
    default_generator.set_state(state)


def _rng(generator):
    return (generator or default_generator)._rng
