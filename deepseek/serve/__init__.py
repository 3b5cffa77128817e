"""deepseek.serve: ``deepseek-serve MODEL`` -- an HTTP inference server with dynamic batching
and autoscaling worker processes (docs/serve.md), and :class:`Client` for its users.

Modules, one job each: ``cli`` (flags), ``app`` (the Starlette routes), ``codec`` (bodies
to arrays and back, with the checks), ``batcher`` (the queue), ``pool`` (worker processes,
crash handling, autoscaling), ``worker`` (the worker process), ``models`` (loading MODEL),
``shm`` (the shared-memory arenas), ``protocol`` (control frames), ``metrics``.
"""
from .client import Client, ServeError

__all__ = ["Client", "ServeError", "serve"]


def serve(argv):
    """Run the server with command-line arguments ``argv`` (what ``deepseek-serve`` does)."""
    from .cli import main
    return main(argv)
