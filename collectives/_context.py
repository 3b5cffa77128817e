"""Per-call context a backend needs to wait and to explain a failure."""
import time

from .errors import CollectiveMismatchError, CollectiveTimeoutError


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

    def mismatch_error(self, calls, source="collectives"):
        """The error every rank raises when ranks called different collectives.

        ``calls`` holds one dict per group rank (what that rank called: op, dtype,
        nbytes, shape, root, ... -- whatever the caller could see); ``source`` says
        which check found it (the normal per-call check or the debug mode). All
        transports and the debug mode build the message here, so users see one
        format.
        """
        lines = [f"  group rank {r} (global {self.ranks[r]}): "
                 + (", ".join(f"{k}={c[k]}" for k in sorted(c)) if c else "unknown")
                 for r, c in enumerate(calls)]
        return CollectiveMismatchError(
            f"{source}: ranks disagree on collective seq {self.seq} in group "
            f"{self.group!r} (seen on rank {self.rank}):\n" + "\n".join(lines))
