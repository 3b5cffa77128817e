"""deepseek.launcher: ``deepseek-run``, which starts, watches and cleans up workers.

``deepseek-run --nproc 8 train.py --lr 3e-4`` (or ``python -m deepseek.launcher ...``)
hosts the job's rendezvous store (:mod:`deepseek.collectives.store`), spawns one worker
per device with the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, ...) plus
``DEEPSEEK_STORE_ADDR``/``DEEPSEEK_TOKEN``, prefixes their output with ``[rankN]:``,
forwards signals, and when one worker fails stops the rest and exits with its code.
See ``deepseek-run --help`` and :mod:`deepseek.launcher.cli`.

This package must stay cheap to import: it never imports the tensor engine.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    """Run deepseek-run with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .cli import main as _main
    return _main(argv)
