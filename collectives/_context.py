"""Per-call context a backend needs to wait and to explain a failure."""
import time

from .errors import CollectiveTimeoutError


class OpContext:
    """What is running: op name, sequence number in the group, the deadline.

    Backends receive one with every call and use it for their waits; the error it
    builds names the op, the sequence number, the group, the rank and the peers that
    did not arrive (as group ranks and as global ranks).
    """

    __slots__ = ("op", "seq", "timeout", "deadline", "group", "rank", "ranks")

    def __init__(self, op, seq, timeout, group, rank, ranks):
        self.op, self.seq, self.timeout = op, seq, timeout
        self.deadline = time.perf_counter() + timeout
        self.group, self.rank, self.ranks = group, rank, ranks

    def describe(self):
        return (f"{self.op} (seq {self.seq}) in group {self.group!r} on rank {self.rank} "
                f"(global rank {self.ranks[self.rank]})")

    def timeout_error(self, missing, what="peers"):
        missing = sorted(set(missing))
        glob = [self.ranks[m] for m in missing]
        return CollectiveTimeoutError(
            f"timed out after {self.timeout:g}s in {self.describe()}: waited for "
            f"{what} {missing} (global ranks {glob}) that did not arrive",
            op=self.op, seq=self.seq, group=self.group, rank=self.rank, missing=missing)
