"""BERT (Devlin et al.), with Hugging Face ``transformers``' parameter names.

``BertModel(config)`` has the submodules ``embeddings`` / ``encoder.layer.N`` / ``pooler``
named exactly as in ``transformers.BertModel``, so an HF checkpoint's ``state_dict`` loads
as is (``BertForSequenceClassification`` adds the ``bert.`` prefix and ``classifier``, as
HF does). ``forward(input_ids, attention_mask=None, token_type_ids=None)`` returns a
:class:`BertOutput` with ``last_hidden_state`` (B, T, H) and ``pooler_output`` (B, H).

:func:`mean_pooling` is sentence-transformers' mean over the non-padding tokens, and
:class:`SentenceEncoder` is the whole sentence-transformers pipeline for a directory of
theirs (tokenizer -> BERT -> pooling -> optional L2 normalisation).
"""
import json
import os

import numpy as np

from .. import nn
from ..nn import functional as F
from .._tensor import Tensor
from ..autograd.grad_mode import no_grad
from ._config import Config

__all__ = ["BertConfig", "BertModel", "BertForSequenceClassification", "BertOutput",
           "mean_pooling", "SentenceEncoder"]


class BertConfig(Config):
    model_type = "bert"
    defaults = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                    pad_token_id=0, position_embedding_type="absolute", num_labels=2,
                    classifier_dropout=None, architectures=["BertModel"])


def _act(name):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"hidden_act {name!r} is not supported (gelu, gelu_new, relu, silu)")


class BertEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        B, T = input_ids.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"BERT: sequence of {T} tokens is longer than max_position_embeddings="
                             f"{self.position_embeddings.num_embeddings}; truncate the input")
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings.weight[:T]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        if c.hidden_size % c.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.num_heads = c.num_attention_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob

    def forward(self, x, mask):
        B, T, H = x.shape
        nh, hd = self.num_heads, self.head_dim

        def heads(t):
            return t.reshape(B, T, nh, hd).transpose(1, 2)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        # the op parallelises its many small per-head products itself (deepseek.ops.attention)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, T, H)


class BertSelfOutput(nn.Module):
    def __init__(self, c, inner):
        super().__init__()
        self.dense = nn.Linear(inner, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, h, residual):
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertSelfOutput(c, c.hidden_size)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = _act(c.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertSelfOutput(c, c.intermediate_size)

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(c) for _ in range(c.num_hidden_layers)])

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, h):
        return F.tanh(self.dense(h[:, 0]))


class BertOutput(dict):
    """``last_hidden_state`` and ``pooler_output`` (also as keys, and ``[0]`` / ``[1]``)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __getitem__(self, k):
        if isinstance(k, int):
            return list(self.values())[k]
        return dict.__getitem__(self, k)


def _as_ids(x):
    if isinstance(x, Tensor):
        return x
    return Tensor._make(np.asarray(x, dtype=np.int64))


def _additive_mask(attention_mask, dtype):
    """(B, T) 1/0 -> (B, 1, 1, T) float: 0 where attended, the dtype's minimum where not
    (Hugging Face's form). Built from tensor ops, so the JIT traces it as a function of
    the mask input rather than freezing the example mask into the graph."""
    m = _as_ids(attention_mask)
    B, T = m.shape
    add = (1.0 - m.to(dtype)) * float(np.finfo(dtype).min)
    return add.reshape(B, 1, 1, T)


class BertModel(nn.Module):
    """The BERT encoder (+ pooler, unless ``add_pooling_layer=False``)."""

    config_class = BertConfig

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        input_ids = _as_ids(input_ids)
        if token_type_ids is not None:
            token_type_ids = _as_ids(token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None if attention_mask is None else _additive_mask(attention_mask, x.dtype)
        h = self.encoder(x, mask)
        pooled = self.pooler(h) if self.pooler is not None else None
        return BertOutput(last_hidden_state=h, pooler_output=pooled)

    # checkpoint keys HF writes that are not weights
    _ignored_keys = ("embeddings.position_ids",)


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + a linear classifier on the pooled output (HF's layout)."""

    config_class = BertConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        out = self.bert(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(out.pooler_output))
        res = BertOutput(logits=logits)
        if labels is not None:
            labels = _as_ids(labels)
            if self.num_labels == 1:
                res["loss"] = F.mse_loss(logits.reshape(-1), labels.float())
            else:
                res["loss"] = F.cross_entropy(logits, labels)
        return res

    _ignored_keys = ("bert.embeddings.position_ids",)


def mean_pooling(last_hidden_state, attention_mask):
    """The mean of the token vectors where ``attention_mask`` is 1 (sentence-transformers':
    sum(h * mask) / clamp(sum(mask), 1e-9))."""
    h = last_hidden_state
    # a Tensor mask stays a Tensor op, so that a JIT trace or an ONNX export reads it as an
    # input rather than freezing this call's mask (and batch size) as a constant
    m = (attention_mask if isinstance(attention_mask, Tensor)
         else Tensor._make(np.asarray(attention_mask))).to(h.dtype)[:, :, None]
    summed = (h * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return summed / counts


class SentenceEncoder:
    """A sentence-transformers model directory as one object: ``encode(sentences)`` returns
    an (N, D) float32 numpy array, equal to ``SentenceTransformer(dir).encode(sentences)``.

    Reads ``modules.json`` (Transformer -> Pooling -> Normalize), ``1_Pooling/config.json``
    (mean / cls / max pooling) and ``sentence_bert_config.json`` (``max_seq_length``).
    Sentences are sorted by length and batched, as sentence-transformers does, so padding
    stays small."""

    def __init__(self, model, tokenizer, pooling="mean", normalize=True, max_seq_length=256):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.pooling, self.normalize, self.max_seq_length = pooling, normalize, max_seq_length

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, **kw):
        from .. import hub
        path = hub.resolve(path, **kw)
        model = hub.load(path, device=device, dtype=dtype)
        tok = hub.load_tokenizer(path)
        pooling, normalize, max_len = "mean", False, tok.model_max_length
        mj = os.path.join(path, "modules.json")
        if os.path.exists(mj):
            with open(mj) as f:
                mods = json.load(f)
            normalize = any(m.get("type", "").endswith("Normalize") for m in mods)
            for m in mods:
                if m.get("type", "").endswith("Pooling"):
                    pc = os.path.join(path, m.get("path", ""), "config.json")
                    if os.path.exists(pc):
                        with open(pc) as f:
                            cfg = json.load(f)
                        if cfg.get("pooling_mode_cls_token"):
                            pooling = "cls"
                        elif cfg.get("pooling_mode_max_tokens"):
                            pooling = "max"
        sb = os.path.join(path, "sentence_bert_config.json")
        if os.path.exists(sb):
            with open(sb) as f:
                max_len = json.load(f).get("max_seq_length", max_len)
        return cls(model, tok, pooling, normalize, max_len)

    def _pool(self, h, mask):
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "max":
            m = Tensor._make(np.asarray(mask, dtype=bool)[:, :, None])
            return h.masked_fill(~m, -1e9).max(dim=1)[0] if hasattr(h, "masked_fill") else None
        return mean_pooling(h, mask)

    def encode(self, sentences, batch_size=32):
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        ids = [self.tokenizer.encode(s, truncation=True, max_length=self.max_seq_length)
               for s in sentences]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        dim = self.model.config.hidden_size
        out = np.empty((len(sentences), dim), dtype=np.float32)
        pad = self.tokenizer.pad_token_id
        with no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                width = max(len(ids[i]) for i in idx)
                arr = np.full((len(idx), width), pad, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for r, i in enumerate(idx):
                    arr[r, :len(ids[i])] = ids[i]
                    mask[r, :len(ids[i])] = 1
                h = self.model(arr, attention_mask=mask).last_hidden_state
                e = self._pool(h, mask)
                if self.normalize:
                    e = F.normalize(e, p=2, dim=1)
                out[idx] = e.float().cpu().numpy() if hasattr(e, "cpu") else np.asarray(e)
        return out[0] if single else out
