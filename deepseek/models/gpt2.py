"""GPT-2 (Radford et al.), with Hugging Face ``transformers``' parameter names.

``GPT2LMHeadModel(config)`` holds ``transformer.wte`` / ``wpe`` / ``h.N.{ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`` / ``ln_f`` and ``lm_head`` (tied to ``wte``),
as HF does; the ``c_*`` layers are HF's ``Conv1D`` (weight stored (in, out)), so an HF
checkpoint loads as is.

``forward(input_ids, past_key_values=None, attention_mask=None, use_cache=False)`` returns
``{"logits", "past_key_values"}``. The cache is a :class:`KVCache`: per layer, key and value
buffers preallocated to the length needed and filled in place, so a step costs one token's
work and no re-copy of the past.

``generate(input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
eos_token_id=None, use_cache=True, seed=None)``: greedy when ``do_sample`` is false, else
sampling from softmax(logits / temperature) restricted to the top-k tokens and to the
smallest set whose probability reaches top-p. Returns the (B, T + new) ids as a numpy array.
"""
import numpy as np

from .. import nn
from ..nn import functional as F
from .._tensor import Tensor
from ..backend import get_array_module
from ..autograd.grad_mode import no_grad
from ..ops.linalg import matmul
from ..random import _rng
from ._config import Config
from .bert import BertOutput, _as_ids

__all__ = ["GPT2Config", "GPT2Model", "GPT2LMHeadModel", "KVCache", "Conv1D"]


class GPT2Config(Config):
    model_type = "gpt2"
    defaults = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                    n_inner=None, activation_function="gelu_new", resid_pdrop=0.1,
                    embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5,
                    bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True,
                    scale_attn_weights=True, architectures=["GPT2LMHeadModel"])


class Conv1D(nn.Module):
    """HF's GPT-2 linear layer: ``x @ weight + bias`` with ``weight`` of shape (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        # drawn from deepseek's default generator, so deepseek.manual_seed fixes it
        self.weight = nn.Parameter(Tensor._make(
            (_rng(None).standard_normal((nx, nf)) * 0.02).astype(np.float32)))
        self.bias = nn.Parameter(Tensor._make(np.zeros(nf, dtype=np.float32)))

    def forward(self, x):
        return matmul(x, self.weight) + self.bias


class KVCache:
    """Per-layer key/value buffers of shape (B, heads, capacity, head_dim); ``length``
    positions are filled. Grows (doubling) when a step would overflow."""

    def __init__(self, n_layer, capacity=0):
        self.n_layer, self.capacity, self.length = n_layer, capacity, 0
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self._pending = 0

    def update(self, i, k, v):
        """Append (B, nh, T, hd) ``k``/``v`` for layer ``i``; the full keys/values so far."""
        kd, vd = k._data, v._data
        T = kd.shape[2]
        start = self.length
        need = start + T
        buf = self.k[i]
        if buf is None or buf.shape[2] < need:
            cap = max(need, self.capacity, 2 * (buf.shape[2] if buf is not None else 0))
            xp = get_array_module(kd)
            nk = xp.empty(kd.shape[:2] + (cap,) + kd.shape[3:], dtype=kd.dtype)
            nv = xp.empty_like(nk)
            if buf is not None:
                nk[:, :, :start] = buf[:, :, :start]
                nv[:, :, :start] = self.v[i][:, :, :start]
            self.k[i], self.v[i] = nk, nv
        self.k[i][:, :, start:need] = kd
        self.v[i][:, :, start:need] = vd
        if i == self.n_layer - 1:
            self._pending = T
        return Tensor._make(self.k[i][:, :, :need]), Tensor._make(self.v[i][:, :, :need])

    def advance(self):
        self.length += self._pending
        self._pending = 0


class GPT2Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head, self.n_embd = c.n_head, c.n_embd
        self.head_dim = c.n_embd // c.n_head
        self.c_attn = Conv1D(3 * c.n_embd, c.n_embd)
        self.c_proj = Conv1D(c.n_embd, c.n_embd)
        self.attn_dropout = c.attn_pdrop
        self.resid_dropout = nn.Dropout(c.resid_pdrop)

    def forward(self, x, layer_idx, cache, mask):
        B, T, C = x.shape
        nh, hd = self.n_head, self.head_dim
        qkv = self.c_attn(x).reshape(B, T, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        S = k.shape[2]
        p = self.attn_dropout if self.training else 0.0
        out = self._sdpa(q, k, v, mask, T, S, p)   # the op sets its own BLAS threading
        out = out.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(out))

    @staticmethod
    def _sdpa(q, k, v, mask, T, S, p):
        if mask is None and T == S:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif mask is None and T == 1:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return out


class GPT2MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        inner = c.n_inner or 4 * c.n_embd
        self.c_fc = Conv1D(inner, c.n_embd)
        self.c_proj = Conv1D(c.n_embd, inner)
        self.approx = "tanh" if c.activation_function in ("gelu_new", "gelu_pytorch_tanh",
                                                           "gelu_fast") else "none"
        self.dropout = nn.Dropout(c.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approx)))


class GPT2Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon)
        self.mlp = GPT2MLP(c)

    def forward(self, x, i, cache, mask):
        x = x + self.attn(self.ln_1(x), i, cache, mask)
        return x + self.mlp(self.ln_2(x))


def _mask(attention_mask, T, S, dtype):
    """(B, S) 1/0 padding mask + causality -> additive (B, 1, T, S) float mask.

    The padding part is built from tensor ops, so the JIT and ONNX export trace it as a
    function of the mask input instead of freezing the example mask; the causal part
    depends on the shapes only. One ``where`` (not a sum of two minima, which would
    overflow to -inf and turn fully padded rows into NaN)."""
    from .. import ops
    past = S - T
    # key j is visible from query i (at position past + i) when j <= past + i; built
    # from two aranges (not a frozen tril) so an ONNX export with a dynamic sequence
    # axis computes it from the input's length
    keys = Tensor._make(np.arange(S, dtype=np.int64).reshape(1, 1, 1, S))
    queries = Tensor._make(np.arange(past, S, dtype=np.int64).reshape(1, 1, T, 1))
    causal = keys <= queries
    if attention_mask is None:
        allowed = causal
    else:
        m = _as_ids(attention_mask)[:, :S] != 0
        # the method form: the JIT tracer records table ops without a Function as
        # Tensor-method nodes
        allowed = causal.logical_and(m.reshape(m.shape[0], 1, 1, S))
    return ops.where(allowed, 0.0, float(np.finfo(dtype).min)).to(dtype)


def _position_ids(attention_mask, past, S):
    """Positions counted over the attended tokens only (left padding), as tensor ops."""
    from .. import ops
    m = _as_ids(attention_mask)
    return ops.clamp(ops.cumsum(m, 1) - 1, min=0)[:, past:S]


class GPT2Model(nn.Module):
    config_class = GPT2Config

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, past_key_values=None, attention_mask=None, use_cache=False,
                position_ids=None):
        input_ids = _as_ids(input_ids)
        B, T = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(len(self.h))
        past = cache.length if cache is not None else 0
        S = past + T
        if S > self.config.n_positions:
            raise ValueError(f"GPT-2: {S} positions exceed n_positions={self.config.n_positions}")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = _position_ids(attention_mask, past, S)
            else:
                position_ids = Tensor._make(np.arange(past, S, dtype=np.int64)[None])
        x = self.wte(input_ids) + self.wpe(_as_ids(position_ids))
        x = self.drop(x)
        mask = None if attention_mask is None else _mask(attention_mask, T, S, x.dtype)
        for i, block in enumerate(self.h):
            x = block(x, i, cache, mask)
        if cache is not None:
            cache.advance()
        return BertOutput(last_hidden_state=self.ln_f(x), past_key_values=cache)

    _ignored_suffixes = (".attn.bias", ".attn.masked_bias")


class GPT2LMHeadModel(nn.Module):
    config_class = GPT2Config

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", True):
            self.lm_head.weight = self.transformer.wte.weight

    _ignored_suffixes = (".attn.bias", ".attn.masked_bias")
    _tied = {"lm_head.weight": "transformer.wte.weight"}

    def forward(self, input_ids, past_key_values=None, attention_mask=None, use_cache=False,
                labels=None, position_ids=None, last_only=False):
        out = self.transformer(input_ids, past_key_values, attention_mask, use_cache,
                               position_ids)
        h = out.last_hidden_state
        if last_only:
            h = h[:, -1:]
        logits = self.lm_head(h)
        res = BertOutput(logits=logits, past_key_values=out.past_key_values)
        if labels is not None:
            labels = _as_ids(labels)
            V = logits.shape[-1]
            res["loss"] = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
        return res

    def generate(self, input_ids, max_new_tokens=20, do_sample=False, temperature=1.0, top_k=0,
                 top_p=1.0, eos_token_id=None, use_cache=True, seed=None, attention_mask=None):
        """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens (see the module
        docstring). Rows that produced ``eos_token_id`` keep producing it."""
        ids = np.asarray(input_ids._data if isinstance(input_ids, Tensor) else input_ids,
                         dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if do_sample and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        rng = np.random.default_rng(seed)
        B = ids.shape[0]
        done = np.zeros(B, dtype=bool)
        mask = None if attention_mask is None else np.asarray(
            attention_mask._data if isinstance(attention_mask, Tensor) else attention_mask,
            dtype=np.int64)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                cache = KVCache(len(self.transformer.h), ids.shape[1] + max_new_tokens) \
                    if use_cache else None
                step_in = ids
                for _ in range(max_new_tokens):
                    if use_cache:
                        out = self(step_in, past_key_values=cache, attention_mask=mask,
                                   use_cache=True, last_only=True)
                    else:
                        out = self(ids, attention_mask=mask, last_only=True)
                    logits = out.logits._data[:, -1].astype(np.float64)
                    if hasattr(logits, "get"):
                        logits = logits.get()
                    nxt = _choose(logits, do_sample, temperature, top_k, top_p, rng)
                    if eos_token_id is not None:
                        nxt = np.where(done, eos_token_id, nxt)
                        done |= nxt == eos_token_id
                    ids = np.concatenate([ids, nxt[:, None]], axis=1)
                    if mask is not None:
                        mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
                    step_in = nxt[:, None]
                    if eos_token_id is not None and done.all():
                        break
        finally:
            self.train(was_training)
        return ids


def _choose(logits, do_sample, temperature, top_k, top_p, rng):
    """The next token of each row of (B, V) float64 ``logits``."""
    if not do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    logits = logits / temperature
    V = logits.shape[-1]
    if top_k and top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sp = np.take_along_axis(p, order, axis=-1)
        cum = np.cumsum(sp, axis=-1)
        drop_sorted = (cum - sp) >= top_p          # keep the smallest prefix reaching top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), V - 1).astype(np.int64)
