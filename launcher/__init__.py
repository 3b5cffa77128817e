"""deepseek.launcher: ``deepseek-run``, which starts, watches and cleans up workers.

``deepseek-run --nproc 8 train.py --lr 3e-4`` (or ``python -m deepseek.launcher ...``)
hosts the job's rendezvous store (:mod:`deepseek.collectives.store`), spawns one worker
per device with the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, ...) plus
``DEEPSEEK_STORE_ADDR``/``DEEPSEEK_TOKEN``, prefixes their output with ``[rankN]:``,
forwards signals, and when one worker fails stops the rest and exits with its code.
However the job ends, no worker, process a worker started, or shared-memory segment
of the job outlives it (:mod:`deepseek.launcher.agent`). ``--timeout`` bounds how long
``init_process_group`` in the workers waits for the other ranks. With
``--max-restarts``, ``--nnodes MIN:MAX``, ``--rdzv-endpoint`` or ``--standalone`` the job
is elastic (torchrun's contract): a failure restarts every worker of the job in a new
rendezvous round (:mod:`deepseek.elastic.rendezvous`, driven by
:mod:`deepseek.launcher.elastic_agent`), nodes may join late or disappear. The pieces:
:mod:`~deepseek.launcher.group` (one attempt's workers), :mod:`~deepseek.launcher.agent`
(the watch loop, process hygiene, the static job). See
``deepseek-run --help``, :mod:`deepseek.launcher.cli`, and ``python -m deepseek.env``
for every ``DEEPSEEK_*`` variable.

This package must stay cheap to import: it never imports the tensor engine.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    """Run deepseek-run with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .cli import main as _main
    return _main(argv)
