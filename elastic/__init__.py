"""deepseek.elastic: membership changes and restarts of a job.

:mod:`deepseek.elastic.rendezvous` is the state machine of rendezvous rounds on the
job's store: which nodes make up each attempt's world (joins, last call, heartbeats,
scale up and down), when the world restarts, and when the job is over (the restart
budget). ``deepseek-run --max-restarts N`` (:mod:`deepseek.launcher.elastic_agent`)
drives it; it sits on :mod:`deepseek.collectives.store` only (stdlib, no numpy), so
the launcher stays cheap to import.
"""

__all__ = ["rendezvous"]
