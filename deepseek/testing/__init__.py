"""deepseek.testing: the public helpers deepseek tests itself with.

- op checks: ``check_gradients`` (float64 finite differences via
  ``deepseek.autograd.gradcheck``), ``assert_close`` (with a report of the worst
  element), ``compare_with_torch`` / ``compare_with_numpy`` (parity of outputs and
  gradients against a reference on the same data);
- declarative op checks (``deepseek.testing.op_checks``): describe an op with an
  ``OpInfo`` (sample inputs, numpy/PyTorch references, dtypes, in-place variants)
  and ``run_op_checks(info)`` runs what deepseek's own op table suite runs:
  forward parity, float64 gradcheck (no PyTorch needed), dtypes, in-place checks;
- multi-process tests: ``spawn_ranks(fn, world_size, timeout)`` (from
  ``deepseek.testing.multiprocess``).
"""
import importlib as _importlib

# Everything is loaded on first use: a rank started by spawn_ranks imports
# deepseek.testing.multiprocess, and must not pay for the engine and the op table
# before its test function even runs (seconds on a loaded machine).
_LAZY = {}
for _mod, _names in (
        ("deepseek.testing.ops", ("make_tensor", "check_gradients", "assert_close",
                                  "compare_with_torch", "compare_with_numpy",
                                  "torch_available", "default_tolerances")),
        ("deepseek.ops.opinfo", ("OpInfo", "SampleInput", "Shape", "samples",
                                 "unary_samples", "binary_samples", "reduction_samples")),
        ("deepseek.testing.op_checks", ("CHECKS", "applicable_checks", "op_check_cases",
                                        "op_check_id", "run_op_checks",
                                        "check_forward_numpy", "check_forward_torch",
                                        "check_op_gradients", "check_dtypes",
                                        "check_inplace", "check_methods")),
        ("deepseek.testing.multiprocess", ("spawn_ranks", "SpawnError", "RankFailure"))):
    _LAZY.update(dict.fromkeys(_names, _mod))
del _mod, _names

__all__ = list(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'deepseek.testing' has no attribute {name!r}")
    try:
        value = getattr(_importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise AttributeError(f"deepseek.testing.{name} is unavailable: importing "
                             f"{mod} failed ({e.__class__.__name__}: {e})") from e
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
