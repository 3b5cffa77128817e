"""deepseek.elastic: membership changes and restarts of a job.

:mod:`deepseek.elastic.rendezvous` is the state machine of rendezvous rounds on the
job's store: which nodes make up each attempt's world (joins, last call, heartbeats,
scale up and down), when the world restarts, and when the job is over (the restart
budget). ``deepseek-run --max-restarts N`` (:mod:`deepseek.launcher.elastic_agent`)
drives it; it sits on :mod:`deepseek.collectives.store` only (stdlib, no numpy), so
the launcher stays cheap to import.

In-process recovery (Horovod Elastic's shape): :class:`State` (``commit``,
``restore``, ``sync``, ``bind`` for sharded ZeRO state), :func:`run` around the
training function, and :class:`ElasticSampler` (the data position survives a reset),
in :mod:`deepseek.elastic.state` and :mod:`deepseek.elastic.inprocess`; a world that
shrinks when no replacement is wanted (``DEEPSEEK_ELASTIC_MIN_WORKERS``). Resuming a
sharded checkpoint in a new world size is :mod:`deepseek.distributed.elastic`'s (it
needs the engine). Names resolve on first use (PEP 562).
"""
import importlib as _importlib

_LAZY = {"State": "state", "ElasticSampler": "state", "run": "inprocess",
         "RecoveryError": "inprocess", "generation": "inprocess"}

__all__ = ["rendezvous", "State", "ElasticSampler", "run", "RecoveryError", "generation"]


_SUBMODULES = ("rendezvous", "state", "inprocess")


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'deepseek.elastic' has no attribute {name!r}")
    globals()[name] = value = getattr(
        _importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
