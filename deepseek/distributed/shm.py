"""Shared-memory segments for the engine's own use (the DataLoader's worker slots).

The engine reaches the collectives only through deepseek.distributed (the import
contract in pyproject.toml); this re-exports :mod:`deepseek.collectives.shm`, where
segments and their job-prefixed names (``dsk_<job>_...``, what the launcher sweeps
with ``cleanup_job``) are defined once.
"""
from deepseek.collectives.shm import (PREFIX, SHM_DIR, Segment, available,  # noqa: F401
                                      cleanup_job, job_prefix, make_name)

__all__ = ["PREFIX", "SHM_DIR", "Segment", "available", "cleanup_job", "job_prefix",
           "make_name"]
