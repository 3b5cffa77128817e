"""PipelineStage: one piece of a model on one rank of a pipeline group, and the
point-to-point moves of its activations and their gradients.

A stage runs its submodule on one microbatch at a time and keeps what backward needs
(the input it got and the output it made) until that microbatch's backward; the
schedules (schedules.py) decide the order. Activations go forward with asynchronous
sends (compute continues while they travel) and the gradients of the stage's input go
back the same way. A send whose slot is free goes out in one C call
(``ProcessGroup.try_send``): an async send's bookkeeping (its context, description and
Work) cost 0.22 ms per 128 KiB activation right after a hold on the loaded 2-core VM,
the C call 0.08 ms; only a send that would wait for its slot is handed to the group.

Receives: a message of up to one transport slot (``DEEPSEEK_SHM_P2P_BYTES``, 1 MiB)
lies complete in the slot once sent, whether or not a receive is posted, so the stage
takes it with a blocking receive when the schedule needs it: one call that waits in C
(GIL released) and wakes the moment the data lands (the input tensor is made around
the buffer before that call, so nothing but its return is left after the wait). A
receive posted ahead would run on the group's receive thread and hand over through
two thread wake-ups: 128 KiB from the producer's end to the data in the consumer's
hands measured 0.47-0.55 ms that way on the loaded 2-core VM, 0.17-0.21 ms blocking
(docs/parallelism.md); posting ahead only the messages that the schedule expects
well before they are needed lost as well (more time between actions). Larger messages
stream through the slots only while the receiver drains them, so their receives are
posted ahead by the schedule (``post_recv_*``) and overlap the compute before them.

Shapes are exchanged once: the first activation a stage sends is preceded by a small
header (ndim, dtype, shape); the receiver allocates its buffers from it and checks it
against ``input_args`` when those were given. Later microbatches must keep that shape
(a change is an error naming the stage). Gradients need no header: a stage's output
gradient has its output's shape.

Placement: stage ``i`` of ``num_stages`` lives on group rank ``i % group.size`` (a
rank holds ``num_stages / group.size`` stages: the interleaved "loop" layout).
Activations travel on the group's forward twin and gradients on its backward twin
(``device_mesh.p2p_groups``), so a send held up in one direction never delays the
other.
"""
import numpy as np

from ... import env as envvars
from ..._tensor import Tensor
from ...autograd import backward as _autograd_backward
from ...collectives import CollectiveError, get_default_group
from ..device_mesh import p2p_groups

__all__ = ["PipelineStage", "PipelineError", "PipelineShapeError", "PipelineCommError"]

_DTYPES = ["float32", "float64", "float16", "int64", "int32", "bool", "uint8", "int8",
           "int16"]
_META_LEN = 2 + 8          # ndim, dtype code, up to 8 dims
_META_TAG = 1 << 30        # + the receiving stage's index
_MB_BITS = 20              # tag = stage << 20 | microbatch


class PipelineError(RuntimeError):
    """A pipeline could not run (bad layout, bad schedule arguments)."""


class PipelineShapeError(PipelineError):
    """What a stage sends does not fit what the next stage expects."""


class PipelineCommError(PipelineError):
    """A send or receive between stages failed (a peer died, aborted or timed out);
    ``__cause__`` is the collectives error."""


def _meta(arr):
    if arr.ndim > _META_LEN - 2:
        raise PipelineShapeError(f"activations of more than {_META_LEN - 2} dims")
    m = np.zeros(_META_LEN, np.int64)
    m[0], m[1] = arr.ndim, _DTYPES.index(str(arr.dtype))
    m[2:2 + arr.ndim] = arr.shape
    return m


def _unmeta(m):
    n = int(m[0])
    return tuple(int(v) for v in m[2:2 + n]), np.dtype(_DTYPES[int(m[1])])


def _beyond_slot(shape, dtype):
    """Whether a message of this shape is larger than one transport slot (then its
    receive is posted ahead: module doc)."""
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= d
    return n > envvars.get("DEEPSEEK_SHM_P2P_BYTES")


def _fmt(shape, dtype):
    return f"{tuple(shape)} {np.dtype(dtype).name}"


class PipelineStage:
    """Stage ``stage_index`` of ``num_stages``, running ``submodule``.

    Args:
        submodule: what this stage computes (one tensor in, one tensor out).
        stage_index, num_stages: its place in the pipeline.
        group: the pipeline ProcessGroup (``mesh["pp"]``; default: the default group).
        input_args: optional example input (a tensor or array, per microbatch) for
            stages after the first: the received header is checked against it.
    """

    def __init__(self, submodule, stage_index, num_stages, group=None, input_args=None):
        self.submod = submodule
        self.stage_index, self.num_stages = int(stage_index), int(num_stages)
        self.group = group if group is not None else get_default_group()
        pp = self.group.size
        if not 0 <= self.stage_index < self.num_stages:
            raise PipelineError(f"stage_index {stage_index} is not in 0..{num_stages - 1}")
        if self.num_stages % pp:
            raise PipelineError(f"{num_stages} stages do not divide evenly over the "
                                f"{pp} ranks of the pipeline group")
        if self.stage_index % pp != self.group.rank:
            raise PipelineError(
                f"stage {stage_index} belongs to pipeline group rank {stage_index % pp}, "
                f"not to this rank (group rank {self.group.rank})")
        self.fwd_group, self.bwd_group = p2p_groups(self.group)
        self.is_first = self.stage_index == 0
        self.is_last = self.stage_index == self.num_stages - 1
        self.prev_rank = (self.stage_index - 1) % pp  # group ranks of the neighbours
        self.next_rank = (self.stage_index + 1) % pp
        self._expect = None
        if input_args is not None:
            a = input_args.array if isinstance(input_args, Tensor) else np.asarray(input_args)
            self._expect = (tuple(a.shape), a.dtype)
        self._in_meta = None     # (shape, dtype) of what the previous stage sends
        self._out_meta = None    # what this stage announced to the next one
        # whether activations / output gradients are larger than a slot: only those
        # are received ahead (module doc); known once the first one is
        self._in_ahead = self._out_ahead = False
        self._stash = {}         # microbatch -> (input tensor, output tensor or loss)
        self._recvs = {}         # ("f"|"b", microbatch) -> (Work, buffer) posted ahead
        self._grads = {}         # microbatch -> its output's gradient, received
        self._sends = []         # (Work, buffer) in flight
        self.live = 0            # microbatches whose activations are held now
        self.peak_live = 0
        self.received_ahead = 0  # messages taken from receives posted ahead (stats)

    def __repr__(self):
        return (f"<PipelineStage {self.stage_index}/{self.num_stages} on group rank "
                f"{self.group.rank} of {self.group.name!r}>")

    # ------------------------------------------------------------------ p2p
    def _tag(self, stage, mb):
        return (stage << _MB_BITS) | mb

    def _comm_error(self, e, what):
        return PipelineCommError(
            f"stage {self.stage_index} (global rank {self.group.ranks[self.group.rank]}) "
            f"{what}: {type(e).__name__}: {e}")

    def _recv(self, group, buf, src, tag, what):
        """Blocking receive into ``buf`` (module doc: one C call that waits with the
        GIL released); a failure becomes PipelineCommError naming ``what()``."""
        try:
            group.recv(buf, src, tag=tag)
        except CollectiveError as e:
            raise self._comm_error(e, what()) from e
        return buf

    def _recv_meta(self):
        """The previous stage's activation header (received once, when the first
        activation is needed), checked against ``input_args``."""
        if self._in_meta is not None:
            return self._in_meta
        src = self.group.ranks[self.prev_rank]
        buf = self._recv(self.fwd_group, np.zeros(_META_LEN, np.int64), self.prev_rank,
                         _META_TAG + self.stage_index,
                         lambda: f"waiting for the activation header of stage "
                                 f"{self.stage_index - 1} (global rank {src})")
        shape, dtype = _unmeta(buf)
        if self._expect is not None and (shape, dtype) != self._expect:
            raise PipelineShapeError(
                f"stage {self.stage_index - 1} sends activations of shape "
                f"{_fmt(shape, dtype)} but stage {self.stage_index} expects "
                f"{_fmt(*self._expect)} (its input_args)")
        self._in_meta = (shape, dtype)
        self._in_ahead = _beyond_slot(shape, dtype)
        return self._in_meta

    def may_receive_ahead(self):
        """Whether ``post_recv_*`` may post anything: a message larger than a slot,
        or a neighbour's shape not known yet (then the first step finds out)."""
        return (self._in_ahead or self._out_ahead
                or (not self.is_first and self._in_meta is None)
                or (not self.is_last and self._out_meta is None))

    def post_recv_forward(self, mb):
        """Start receiving microbatch ``mb``'s activation ahead of its forward (only
        activations larger than a slot, once the header has come)."""
        if self._in_ahead:
            self._post(("f", mb), self.fwd_group, self._in_meta, self.prev_rank)

    def post_recv_backward(self, mb):
        """Start receiving the gradient of microbatch ``mb``'s output ahead of its
        backward (only gradients larger than a slot, once its forward ran)."""
        if self._out_ahead and mb in self._stash:
            self._post(("b", mb), self.bwd_group, self._out_meta, self.next_rank)

    def _post(self, key, group, meta, src):
        if key not in self._recvs:
            buf = np.empty(*meta)
            tag = self._tag(self.stage_index, key[1])
            self._recvs[key] = (group.recv(buf, src, tag=tag, async_op=True), buf)

    def _take(self, key, group, meta, src, tag, what):
        """The message of ``key``: from its receive posted ahead, else received now."""
        posted = self._recvs.pop(key, None)
        if posted is None:
            return self._recv(group, np.empty(*meta), src, tag, what)
        w, buf = posted
        try:
            w.wait()
        except CollectiveError as e:
            raise self._comm_error(e, what()) from e
        self.received_ahead += 1
        return buf

    def _send(self, group, arr, dst, tag):
        arr = np.ascontiguousarray(arr)
        if group.try_send(arr, dst, tag):  # its slot was free: sent, nothing to wait on
            return
        self._sends.append((group.send(arr, dst, tag=tag, async_op=True), arr))
        if len(self._sends) > 8:  # forget the finished ones
            self._sends = [(w, a) for w, a in self._sends if not w.is_completed()]

    def wait_sends(self):
        """Wait for every send issued so far (a step ends with this)."""
        sends, self._sends = self._sends, []
        for w, _ in sends:
            try:
                w.wait()
            except CollectiveError as e:
                raise self._comm_error(e, "sending to a neighbouring stage") from e

    # ------------------------------------------------------------------ compute
    def get_input(self, mb):
        """Microbatch ``mb``'s input as a leaf tensor that records its gradient
        (waits for it to arrive)."""
        what = (lambda: f"waiting for the activation of microbatch {mb} from stage "
                        f"{self.stage_index - 1}")
        tag = self._tag(self.stage_index, mb)
        if self._in_ahead and ("f", mb) in self._recvs:
            return self._leaf(self._take(("f", mb), self.fwd_group, self._in_meta,
                                         self.prev_rank, tag, what))
        # the tensor is made before the wait: once the data lands, only the return of
        # the receive is left before the forward starts
        buf = np.empty(*self._recv_meta())
        x = self._leaf(buf)
        self._recv(self.fwd_group, buf, self.prev_rank, tag, what)
        return x

    @staticmethod
    def _leaf(buf):
        # the tensor constructor itself: from_numpy's type check and requires_grad_'s
        # dtype check took 50 us between two actions right after a hold (cold caches)
        return Tensor._make(buf, buf.dtype.kind == "f")

    def get_grad(self, mb):
        """Wait for the gradient of microbatch ``mb``'s output (not on the last stage);
        ``backward_one`` uses it. The schedules call this before timing the backward,
        so that the wait counts as idle time."""
        if self.is_last or mb in self._grads:
            return
        self._grads[mb] = self._take(
            ("b", mb), self.bwd_group, self._out_meta, self.next_rank,
            self._tag(self.stage_index, mb),
            lambda: f"waiting for the gradient of microbatch {mb} from stage "
                    f"{self.stage_index + 1}")

    def forward_one(self, mb, x):
        """Run the submodule on microbatch ``mb``'s input ``x``; keeps both for
        backward; sends the output on unless this is the last stage."""
        try:
            out = self.submod(x)
        except Exception as e:
            if not self.is_first and mb == 0 and self._in_meta is not None:
                raise PipelineShapeError(
                    f"stage {self.stage_index} failed on the output of stage "
                    f"{self.stage_index - 1} (shape {_fmt(*self._in_meta)}): "
                    f"{type(e).__name__}: {e}") from e
            raise
        if not isinstance(out, Tensor):
            raise PipelineError(f"stage {self.stage_index} returned {type(out).__name__}; "
                                f"a stage's output must be one tensor")
        self._stash[mb] = (x, out)
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)
        if not self.is_last:
            arr = out.array
            meta = (tuple(arr.shape), arr.dtype)
            if self._out_meta is None:
                self._out_meta = meta
                self._out_ahead = _beyond_slot(*meta)
                self._send(self.fwd_group, _meta(arr), self.next_rank,
                           _META_TAG + self.stage_index + 1)
            elif meta != self._out_meta:
                raise PipelineShapeError(
                    f"stage {self.stage_index}'s output for microbatch {mb} has shape "
                    f"{_fmt(*meta)}, not {_fmt(*self._out_meta)} as announced to stage "
                    f"{self.stage_index + 1} (shapes are exchanged once: keep every "
                    f"microbatch the same shape)")
            self._send(self.fwd_group, arr, self.next_rank,
                       self._tag(self.stage_index + 1, mb))
        return out

    def set_loss(self, mb, loss):
        """The last stage: what backward starts from for microbatch ``mb``."""
        x, _ = self._stash[mb]
        self._stash[mb] = (x, loss)

    def backward_one(self, mb, loss_scale=1.0):
        """Backward of microbatch ``mb``: from its (scaled) loss on the last stage,
        else from the received output gradient; sends the input gradient back."""
        x, out = self._stash[mb]
        if self.is_last:
            (out * loss_scale).backward() if loss_scale != 1.0 else out.backward()
        else:
            self.get_grad(mb)
            _autograd_backward([out], [Tensor._make(self._grads.pop(mb))])
        del self._stash[mb]
        self.live -= 1
        if not self.is_first:
            grad = x.grad.array if x.grad is not None else np.zeros(x.shape, x.array.dtype)
            self._send(self.bwd_group, grad, self.prev_rank,
                       self._tag(self.stage_index - 1, mb))

    def clear(self):
        """Drop whatever an interrupted step left behind."""
        self._stash.clear()
        self._recvs.clear()
        self._grads.clear()
        self.live = 0
