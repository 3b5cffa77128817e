"""Error types of the collectives layer.

Every error raised by a collective is a :class:`CollectiveError`; the subclasses say
why, so callers (DDP, the elastic agent) can react: a timeout or a dead peer makes the
group unusable (it is marked broken and every later call re-raises at once), while an
argument error leaves it intact.
"""


class CollectiveError(RuntimeError):
    """Base class of all collectives errors."""


class CollectiveArgumentError(CollectiveError, ValueError):
    """Bad arguments (wrong size, dtype, rank, non-contiguous array ...).

    Raised at once on the calling rank, before any communication, so the group stays
    usable.
    """


class CollectiveTimeoutError(CollectiveError, TimeoutError):
    """A blocking wait ran past its timeout.

    The message names the op, its sequence number, the group, this rank and the
    peers that did not arrive (``missing``).
    """

    def __init__(self, message, *, op=None, seq=None, group=None, rank=None, missing=()):
        super().__init__(message)
        self.op, self.seq, self.group, self.rank = op, seq, group, rank
        self.missing = tuple(missing)


class PeerFailureError(CollectiveError):
    """A peer died or aborted the group while this rank waited for it."""

    def __init__(self, message, *, peers=()):
        super().__init__(message)
        self.peers = tuple(peers)


class CollectiveMismatchError(CollectiveError):
    """Ranks called different collectives.

    Every call compares op, reduce op, root, dtype and byte count across the ranks
    (shared memory: a signature word per rank; ZeroMQ: the authenticated header);
    ``DEEPSEEK_DEBUG_COLLECTIVES=1`` adds the full shape check through the store. All
    ranks raise it with the same message, and the group is broken afterwards.
    """


class GroupBrokenError(CollectiveError):
    """The group failed earlier (timeout, dead peer); it cannot be used any more."""
