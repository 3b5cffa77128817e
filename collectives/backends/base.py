"""The interface every backend implements.

All arrays handed to a backend are 1-D, C-contiguous, of one dtype, with sizes
already checked by ProcessGroup; ranks are group ranks. ``ctx`` is an OpContext
(deadline, names for errors). Methods return when the local part of the op is done
(the output is valid and the input may be reused).
"""


class Backend:
    name = "base"
    #: True when the backend handles this array type (numpy / cupy)
    array_kind = "numpy"

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    # collectives -------------------------------------------------------------
    def allreduce(self, ctx, x, op):
        raise NotImplementedError

    def broadcast(self, ctx, x, root):
        raise NotImplementedError

    def reduce(self, ctx, x, root, op):
        raise NotImplementedError

    def allgather(self, ctx, out, x):
        raise NotImplementedError

    def gather(self, ctx, out, x, root):
        raise NotImplementedError

    def scatter(self, ctx, out, x, root):
        raise NotImplementedError

    def reduce_scatter(self, ctx, out, x, op):
        raise NotImplementedError

    def all_to_all(self, ctx, out, x):
        raise NotImplementedError

    def barrier(self, ctx):
        raise NotImplementedError

    # point to point ----------------------------------------------------------
    def send(self, ctx, x, dst, tag):
        raise NotImplementedError

    def recv(self, ctx, x, src, tag):
        raise NotImplementedError

    # lifetime ----------------------------------------------------------------
    def abort(self, reason):
        """Tell the peers this rank gave up (they fail fast instead of timing out)."""

    def close(self):
        pass
