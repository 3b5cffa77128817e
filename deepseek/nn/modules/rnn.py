"""Recurrent layers: RNN, LSTM, GRU and their cells (PyTorch's parameter names, layouts,
gate order and initialisation, so a torch state_dict loads as is), with packed
sequences (``nn.utils.rnn``).

The input projection of all steps is one matmul up front. The recurrence of a GRU or
LSTM direction over a padded batch is one fused op (``ops.recurrent``: a forward and a
backward loop over arrays, one graph node) when no dispatch mode is active; under a mode
(the JIT tracer, ONNX export, autocast, the profiler) and for plain RNNs, packed inputs
and LSTM projections it is written with differentiable ops (linear, sigmoid, tanh, ...),
one time step at a time, which the modes see op by op. A packed input runs every
sequence for its own length: at each step only the first ``batch_sizes[t]`` rows
(sequences sorted by decreasing length) advance.
"""
import math

from ... import ops
from ...autograd.dispatch_mode import active_modes
from ...ops import recurrent
from .. import functional as F
from .. import init
from ..module import Module
from ..parameter import Parameter
from ..utils.rnn import PackedSequence


def _gate_mult(mode):
    return {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[mode]


class RNNBase(Module):
    """Shared parameters and the multi-layer, bidirectional loop of RNN/LSTM/GRU."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError("hidden_size must be a positive integer")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than or equal to 1")
        if not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability "
                             "of an element being zeroed")
        if proj_size < 0 or (proj_size and mode != "LSTM"):
            raise ValueError("proj_size should be a positive integer (LSTM only) or zero")
        if proj_size >= hidden_size and proj_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        ndir = 2 if bidirectional else 1
        g = _gate_mult(mode) * hidden_size
        real_h = proj_size or hidden_size
        kw = dict(dtype=dtype, device=device)
        self._flat_weights_names = []
        for layer in range(num_layers):
            for d in range(ndir):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                in_sz = input_size if layer == 0 else real_h * ndir
                names = [("weight_ih" + sfx, (g, in_sz)), ("weight_hh" + sfx, (g, real_h))]
                if bias:
                    names += [("bias_ih" + sfx, (g,)), ("bias_hh" + sfx, (g,))]
                if proj_size:
                    names.append(("weight_hr" + sfx, (proj_size, hidden_size)))
                for n, shape in names:
                    setattr(self, n, Parameter(ops.creation.empty(*shape, **kw)))
                    self._flat_weights_names.append(n)
        self.reset_parameters()

    def reset_parameters(self):
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every weight and bias (PyTorch's)."""
        std = 1.0 / math.sqrt(self.hidden_size)
        for n in self._flat_weights_names:
            init.uniform_(getattr(self, n), -std, std)

    def flatten_parameters(self):
        """No-op (cuDNN's weight packing has no deepseek counterpart)."""

    @property
    def all_weights(self):
        """Per layer and direction, the list of its parameters."""
        per = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        ws = [getattr(self, n) for n in self._flat_weights_names]
        return [ws[i:i + per] for i in range(0, len(ws), per)]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s

    # ---- one direction of one layer ------------------------------------------------------
    def _cell(self, x_proj, h, c, sfx):
        """One step from the precomputed input projection ``x_proj`` (B, G)."""
        w_hh = getattr(self, "weight_hh" + sfx)
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        hp = F.linear(h, w_hh, b_hh)
        H = self.hidden_size
        if self.mode == "LSTM":
            gates = x_proj + hp
            i, f, g, o = ops.chunk(gates, 4, 1)
            c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
            h = ops.sigmoid(o) * ops.tanh(c)
            if self.proj_size:
                h = F.linear(h, getattr(self, "weight_hr" + sfx))
            return h, c
        if self.mode == "GRU":
            xr, xz, xn = ops.chunk(x_proj, 3, 1)
            hr, hz, hn = ops.chunk(hp, 3, 1)
            r = ops.sigmoid(xr + hr)
            z = ops.sigmoid(xz + hz)
            n = ops.tanh(xn + r * hn)
            return (1 - z) * n + z * h, None
        pre = x_proj + hp
        return (ops.tanh(pre) if self.mode == "RNN_TANH" else ops.relu(pre)), None

    def _run_direction(self, x, h, c, sfx, reverse, batch_sizes):
        """x: (T, B, in) padded time-major; returns outputs (T, B, H) and the final states."""
        T = x.shape[0]
        w_ih = getattr(self, "weight_ih" + sfx)
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        xp = F.linear(x, w_ih, b_ih)                      # all steps at once
        if batch_sizes is None and T and self.mode in ("GRU", "LSTM") \
                and not self.proj_size and not active_modes():
            return self._fused_direction(xp, h, c, sfx, reverse)
        # one split instead of T getitems: the backward is one concatenate, where T
        # getitem backwards would each fill a zeros array of the whole (T, B, 3H)
        xp = [ops.reshape(s, s.shape[1:]) for s in ops.split(xp, 1, 0)] if T else []
        outs = [None] * T
        steps = range(T - 1, -1, -1) if reverse else range(T)
        if batch_sizes is None:
            for t in steps:
                h, c = self._cell(xp[t], h, c, sfx)
                outs[t] = h
            return ops.stack(outs, 0), h, c
        # packed: at step t only the first batch_sizes[t] sequences run; the others keep
        # their state (their final one going forward, the initial one going backward)
        B = h.shape[0]
        for t in steps:
            b = batch_sizes[t]
            nh, nc = self._cell(xp[t][:b], h[:b], None if c is None else c[:b], sfx)
            outs[t] = nh
            h = ops.cat([nh, h[b:]], 0) if b < B else nh
            if c is not None:
                c = ops.cat([nc, c[b:]], 0) if b < B else nc
        padded = [o if o.shape[0] == B else ops.cat([o, ops.creation.zeros(B - o.shape[0], o.shape[1],
                                                                         dtype=o.dtype, device=o.device)], 0)
                  for o in outs]
        return ops.stack(padded, 0), h, c

    def _fused_direction(self, xp, h, c, sfx, reverse):
        """One direction through ``ops.recurrent`` (see the module docstring)."""
        w_hh = getattr(self, "weight_hh" + sfx)
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        if reverse:
            xp = ops.flip(xp, (0,))
        if self.mode == "GRU":
            out, c = recurrent.gru_sequence(xp, h, w_hh, b_hh), None
        else:
            out, c = recurrent.lstm_sequence(xp, h, c, w_hh, b_hh)
        h = out[-1]
        return (ops.flip(out, (0,)) if reverse else out), h, c

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        batch_sizes = None
        if packed:
            x, lengths = _unpack_time_major(input)
            batch_sizes = [int(b) for b in input.batch_sizes.tolist()]
        else:
            x = input
            if x.ndim not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {x.ndim}D instead")
            if x.shape[-1] != self.input_size:
                raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                                   f"got {x.shape[-1]}")
        unbatched = not packed and x.ndim == 2
        if unbatched:
            x = ops.unsqueeze(x, 1)
        elif self.batch_first and not packed:
            x = ops.transpose(x, 0, 1)
        T, B = x.shape[0], x.shape[1]
        ndir = 2 if self.bidirectional else 1
        real_h = self.proj_size or self.hidden_size
        h0, c0 = self._initial_states(hx, B, ndir, real_h, x, unbatched)
        if packed and input.sorted_indices is not None:
            h0 = ops.index_select(h0, 1, input.sorted_indices)
            if c0 is not None:
                c0 = ops.index_select(c0, 1, input.sorted_indices)
        hs, cs = [], []
        layer_in = x
        for layer in range(self.num_layers):
            dir_outs = []
            for d in range(ndir):
                k = layer * ndir + d
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                out, h, c = self._run_direction(layer_in, h0[k], None if c0 is None else c0[k], sfx, bool(d),
                                                batch_sizes)
                dir_outs.append(out)
                hs.append(h)
                cs.append(c)
            layer_in = dir_outs[0] if ndir == 1 else ops.cat(dir_outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        h_n = ops.stack(hs, 0)
        c_n = ops.stack(cs, 0) if self.mode == "LSTM" else None
        if packed:
            if input.unsorted_indices is not None:
                h_n = ops.index_select(h_n, 1, input.unsorted_indices)
                if c_n is not None:
                    c_n = ops.index_select(c_n, 1, input.unsorted_indices)
            output = _repack(layer_in, input)
        else:
            output = layer_in
            if unbatched:
                output = ops.squeeze(output, 1)
                h_n = ops.squeeze(h_n, 1)
                c_n = ops.squeeze(c_n, 1) if c_n is not None else None
            elif self.batch_first:
                output = ops.transpose(output, 0, 1)
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _initial_states(self, hx, B, ndir, real_h, x, unbatched):
        L = self.num_layers * ndir

        def zeros(size):
            return ops.creation.zeros(L, B, size, dtype=x.dtype, device=x.device)
        if hx is None:
            return zeros(real_h), (zeros(self.hidden_size) if self.mode == "LSTM" else None)
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RuntimeError("LSTM expects hx to be a tuple (h_0, c_0)")
            h0, c0 = hx
            if unbatched:
                h0, c0 = ops.unsqueeze(h0, 1), ops.unsqueeze(c0, 1)
            _check_hidden(h0, (L, B, real_h), "h_0")
            _check_hidden(c0, (L, B, self.hidden_size), "c_0")
            return h0, c0
        h0 = ops.unsqueeze(hx, 1) if unbatched else hx
        _check_hidden(h0, (L, B, real_h), "hx")
        return h0, None


def _check_hidden(h, shape, name):
    if tuple(h.shape) != shape:
        raise RuntimeError(f"Expected hidden size {shape}, got {list(h.shape)} for {name}")


def _unpack_time_major(packed):
    from ..utils.rnn import pad_packed_sequence
    x, lengths = pad_packed_sequence(PackedSequence(packed.data, packed.batch_sizes, None, None),
                                     batch_first=False)
    return x, lengths


def _repack(out, packed):
    """Time-major padded output -> the packed data layout of ``packed`` (same batch_sizes)."""
    rows = [out[t, :int(b)] for t, b in enumerate(packed.batch_sizes.tolist())]
    return PackedSequence(ops.cat(rows, 0), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


class RNN(RNNBase):
    """Elman RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (``nonlinearity='relu'``: relu)."""

    def __init__(self, *args, nonlinearity="tanh", **kwargs):
        if len(args) > 3:  # RNN(input, hidden, layers, nonlinearity, ...) positional form
            args = list(args)
            nonlinearity = args.pop(3)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)


class LSTM(RNNBase):
    """Long short-term memory (gates i, f, g, o in PyTorch's order); optional ``proj_size``."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(RNNBase):
    """Gated recurrent unit (gates r, z, n in PyTorch's order)."""

    def __init__(self, *args, **kwargs):
        super().__init__("GRU", *args, **kwargs)


class RNNCellBase(Module):
    """Parameters of a single cell: weight_ih, weight_hh, bias_ih, bias_hh."""

    def __init__(self, input_size, hidden_size, bias, num_chunks, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        kw = dict(dtype=dtype, device=device)
        self.weight_ih = Parameter(ops.creation.empty(num_chunks * hidden_size, input_size, **kw))
        self.weight_hh = Parameter(ops.creation.empty(num_chunks * hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = Parameter(ops.creation.empty(num_chunks * hidden_size, **kw))
            self.bias_hh = Parameter(ops.creation.empty(num_chunks * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter."""
        std = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -std, std)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def _prep(self, input, hx, n_states):
        if input.ndim not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {input.ndim}D instead")
        unbatched = input.ndim == 1
        if unbatched:
            input = ops.unsqueeze(input, 0)
        B = input.shape[0]
        if hx is None:
            z = ops.creation.zeros(B, self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (z, z) if n_states == 2 else z
        elif unbatched:
            hx = tuple(ops.unsqueeze(h, 0) for h in hx) if n_states == 2 else ops.unsqueeze(hx, 0)
        return input, hx, unbatched


class RNNCell(RNNCellBase):
    """One Elman RNN step."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        x, h, unb = self._prep(input, hx, 1)
        pre = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        out = ops.tanh(pre) if self.nonlinearity == "tanh" else ops.relu(pre)
        return ops.squeeze(out, 0) if unb else out


class LSTMCell(RNNCellBase):
    """One LSTM step: returns (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        x, (h, c), unb = self._prep(input, hx, 2)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = ops.chunk(gates, 4, 1)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        h = ops.sigmoid(o) * ops.tanh(c)
        return (ops.squeeze(h, 0), ops.squeeze(c, 0)) if unb else (h, c)


class GRUCell(RNNCellBase):
    """One GRU step."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input, hx=None):
        x, h, unb = self._prep(input, hx, 1)
        xr, xz, xn = ops.chunk(F.linear(x, self.weight_ih, self.bias_ih), 3, 1)
        hr, hz, hn = ops.chunk(F.linear(h, self.weight_hh, self.bias_hh), 3, 1)
        r = ops.sigmoid(xr + hr)
        z = ops.sigmoid(xz + hz)
        n = ops.tanh(xn + r * hn)
        out = (1 - z) * n + z * h
        return ops.squeeze(out, 0) if unb else out
