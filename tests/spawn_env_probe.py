"""Imported by spawned ranks (tests/test_collectives.py): records the environment
the interpreter had when this module was first imported, before the rank function
ran -- which is when numpy/OpenBLAS read their thread counts."""
import os

SEEN_AT_IMPORT = os.environ.get("DEEPSEEK_TEST_ENV_PROBE")


def seen_at_import(rank, world_size):
    return SEEN_AT_IMPORT, os.environ.get("DEEPSEEK_TEST_ENV_PROBE")
