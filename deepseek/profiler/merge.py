"""``python -m deepseek.profiler.merge PATH [WORLD_SIZE]``: merge the per-rank files
``PATH.rank<N>.json`` of a ``DEEPSEEK_TIMELINE`` run into one Chrome trace at PATH."""
import sys

from ..collectives.trace import merge, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
