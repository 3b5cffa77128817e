"""Tokenizers for the hub's models, pure Python, reading Hugging Face tokenizer files.

* :class:`WordPieceTokenizer` -- BERT's: ``vocab.txt`` (+ ``tokenizer_config.json`` for
  ``do_lower_case``), or the vocabulary inside ``tokenizer.json``. Normalisation as
  Hugging Face's ``BertNormalizer`` / ``BasicTokenizer``: control characters dropped,
  whitespace unified, CJK characters split out, lower-casing and accent stripping
  (NFD, drop combining marks), punctuation split; then greedy longest-match WordPiece
  with ``##`` continuations (a word over 100 characters, or with no match, is ``[UNK]``).
* :class:`ByteLevelBPETokenizer` -- GPT-2's: ``vocab.json`` + ``merges.txt``; bytes are
  mapped onto printable characters, the GPT-2 pre-tokenisation pattern splits the text,
  and merges are applied by rank.

Both are called like Hugging Face's: ``tok(texts, padding=True, truncation=True,
max_length=...)`` returns ``{"input_ids": [[...]], "attention_mask": [[...]], ...}`` (lists;
``return_tensors="np"`` or ``"ds"`` give numpy arrays / deepseek Tensors), and
``encode`` / ``decode`` work on one text.
"""
import json
import os
import re
import unicodedata

import numpy as np

from ..hub._layout import read_json

__all__ = ["WordPieceTokenizer", "ByteLevelBPETokenizer", "load_tokenizer"]


def _tokenizer_config(directory):
    """``tokenizer_config.json`` of an HF-layout directory ({} when there is none)."""
    return read_json(directory, "tokenizer_config.json")


def _batch_out(ids_list, type_ids_list, padding, pad_id, return_tensors, max_length=None):
    if padding == "max_length" and max_length:
        width = max_length
    elif padding:
        width = max((len(x) for x in ids_list), default=0)
    else:
        width = None
    input_ids, mask, types = [], [], []
    for ids, tt in zip(ids_list, type_ids_list):
        n = len(ids)
        if width is not None:
            input_ids.append(ids + [pad_id] * (width - n))
            mask.append([1] * n + [0] * (width - n))
            types.append(tt + [0] * (width - n))
        else:
            input_ids.append(list(ids))
            mask.append([1] * n)
            types.append(list(tt))
    out = {"input_ids": input_ids, "token_type_ids": types, "attention_mask": mask}
    if return_tensors in ("np", "ds", "pt"):
        if width is None and len({len(x) for x in input_ids}) > 1:
            raise ValueError("return_tensors needs equal lengths: pass padding=True")
        out = {k: np.asarray(v, dtype=np.int64).reshape(len(v), -1) for k, v in out.items()}
        if return_tensors in ("ds", "pt"):
            from .._tensor import Tensor
            out = {k: Tensor._make(v) for k, v in out.items()}
    elif return_tensors is not None:
        raise ValueError(f"return_tensors must be None, 'np' or 'ds', got {return_tensors!r}")
    return out


def _encode_texts(texts, encode, padding, pad_id, return_tensors, max_length, type_ids=True):
    """Both tokenizers' ``__call__``: ``encode`` one text or each of several, then
    ``_batch_out``; one str in and no tensors out gives its row, not a list of one row.
    ``type_ids=False`` leaves out ``token_type_ids`` (GPT-2 has none)."""
    single = isinstance(texts, str)
    ids = [encode(t) for t in ([texts] if single else list(texts))]
    out = _batch_out(ids, [[0] * len(x) for x in ids], padding, pad_id, return_tensors, max_length)
    if not type_ids:
        out.pop("token_type_ids")
    if single and return_tensors is None:
        out = {k: v[0] for k, v in out.items()}
    return out


# ---- WordPiece -------------------------------------------------------------------------

def _is_whitespace(ch):
    if ch in " \t\n\r":
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co", "Cs")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


# ASCII text skips the per-character Unicode tests: control characters (Cc) go, the
# whitespace ones become spaces, and punctuation is exactly these four ranges
_ASCII_CLEAN = {c: None for c in list(range(32)) + [127]}
_ASCII_CLEAN.update({9: " ", 10: " ", 13: " "})
_ASCII_PUNCT = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")


def _token_id(attr):
    """A read-only property: the vocabulary id of the token held in ``self.<attr>``."""
    return property(lambda self: self.vocab[getattr(self, attr)], doc=f"The id of ``{attr}``.")


class WordPieceTokenizer:
    """BERT's tokenizer. ``vocab`` maps token -> id (its order is the file's)."""

    def __init__(self, vocab, do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True,
                 unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                 mask_token="[MASK]", model_max_length=512, max_input_chars_per_word=100):
        self.vocab = dict(vocab)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        self.model_max_length = model_max_length
        self.max_input_chars_per_word = max_input_chars_per_word
        self._cache = {}

    # the special tokens' ids: properties, so that setting ``pad_token`` moves its id too
    pad_token_id = _token_id("pad_token")
    cls_token_id = _token_id("cls_token")
    sep_token_id = _token_id("sep_token")
    unk_token_id = _token_id("unk_token")

    def __len__(self):
        return len(self.vocab)

    @classmethod
    def from_pretrained(cls, directory):
        """Read ``vocab.txt`` (or ``tokenizer.json``) and ``tokenizer_config.json``."""
        cfg = _tokenizer_config(directory)
        vocab = None
        vp = os.path.join(directory, "vocab.txt")
        if os.path.exists(vp):
            vocab = {}
            with open(vp, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    vocab[line.rstrip("\n")] = i
        tj = os.path.join(directory, "tokenizer.json")
        if os.path.exists(tj):
            with open(tj, encoding="utf-8") as f:
                spec = json.load(f)
            model = spec.get("model") or {}
            if vocab is None and model.get("type") == "WordPiece":
                vocab = model["vocab"]
            norm = spec.get("normalizer") or {}
            if norm.get("type") == "BertNormalizer":
                cfg.setdefault("do_lower_case", norm.get("lowercase", True))
                if norm.get("strip_accents") is not None:
                    cfg.setdefault("strip_accents", norm["strip_accents"])
        if vocab is None:
            raise FileNotFoundError(f"{directory}: no vocab.txt or WordPiece tokenizer.json")
        kw = {k: cfg[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                                  "unk_token", "cls_token", "sep_token", "pad_token",
                                  "mask_token") if k in cfg and cfg[k] is not None}
        mml = cfg.get("model_max_length")
        if isinstance(mml, int) and mml < 1_000_000:
            kw["model_max_length"] = mml
        return cls(vocab, **kw)

    # the BasicTokenizer part
    def _clean(self, text):
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        return "".join(out)

    def _split_punct(self, word):
        pieces, cur = [], []
        for ch in word:
            if _is_punctuation(ch):
                if cur:
                    pieces.append("".join(cur))
                    cur = []
                pieces.append(ch)
            else:
                cur.append(ch)
        if cur:
            pieces.append("".join(cur))
        return pieces

    def _wordpiece(self, word):
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if len(word) > self.max_input_chars_per_word:
            out = [self.unk_token]
        else:
            out, start, n = [], 0, len(word)
            while start < n:
                end, cur = n, None
                while start < end:
                    sub = word[start:end]
                    if start > 0:
                        sub = "##" + sub
                    if sub in self.vocab:
                        cur = sub
                        break
                    end -= 1
                if cur is None:
                    out = [self.unk_token]
                    break
                out.append(cur)
                start = end
        if len(self._cache) < 100_000:
            self._cache[word] = out
        return out

    def tokenize(self, text):
        """The WordPiece tokens of ``text`` (no special tokens)."""
        if text.isascii():                      # the same result, without per-char tests
            text = text.translate(_ASCII_CLEAN)
            if self.do_lower_case:
                text = text.lower()
            tokens = []
            for word in text.split():
                for piece in ([word] if word.isalnum() else _ASCII_PUNCT.findall(word)):
                    tokens.extend(self._wordpiece(piece))
            return tokens
        text = self._clean(text)
        if self.do_lower_case:
            text = text.lower()
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        tokens = []
        for word in text.split():
            for piece in self._split_punct(word):
                tokens.extend(self._wordpiece(piece))
        return tokens

    def convert_tokens_to_ids(self, tokens):
        unk = self.vocab.get(self.unk_token)
        return [self.vocab.get(t, unk) for t in tokens]

    def encode(self, text, add_special_tokens=True, truncation=False, max_length=None):
        """Token ids of one text: ``[CLS] ... [SEP]`` (cut to ``max_length`` with truncation)."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        room = None
        if truncation:
            room = (max_length or self.model_max_length) - (2 if add_special_tokens else 0)
            ids = ids[:max(room, 0)]
        if add_special_tokens:
            ids = [self.cls_token_id] + ids + [self.sep_token_id]
        return ids

    def decode(self, ids, skip_special_tokens=True):
        special = {self.cls_token, self.sep_token, self.pad_token}
        toks = [self.ids_to_tokens.get(int(i), self.unk_token) for i in ids]
        if skip_special_tokens:
            toks = [t for t in toks if t not in special]
        return " ".join(toks).replace(" ##", "")

    def __call__(self, texts, padding=False, truncation=False, max_length=None,
                 return_tensors=None, add_special_tokens=True):
        return _encode_texts(texts, lambda t: self.encode(t, add_special_tokens, truncation, max_length),
                             padding, self.pad_token_id, return_tensors, max_length)

    def save_pretrained(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
            for tok, _ in sorted(self.vocab.items(), key=lambda kv: kv[1]):
                f.write(tok + "\n")
        cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
               "strip_accents": None if self.strip_accents == self.do_lower_case else self.strip_accents,
               "tokenize_chinese_chars": self.tokenize_chinese_chars,
               "unk_token": self.unk_token, "cls_token": self.cls_token, "sep_token": self.sep_token,
               "pad_token": self.pad_token, "mask_token": self.mask_token,
               "model_max_length": self.model_max_length}
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)


# ---- byte-level BPE --------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's map of the 256 bytes onto printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# without the `regex` module: letters are [^\W\d_], numbers \d (close, not identical for
# some scripts' digits and letter-like marks)
_GPT2_PATTERN_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|_+| ?_+|\s+(?!\S)|\s+"""


def _pattern():
    try:
        import regex
        return regex.compile(_GPT2_PATTERN)
    except ImportError:
        import re
        return re.compile(_GPT2_PATTERN_RE)


class ByteLevelBPETokenizer:
    """GPT-2's tokenizer: ``encoder`` (token -> id) and ``merges`` (pairs, by rank)."""

    def __init__(self, encoder, merges, eos_token="<|endoftext|>", bos_token=None,
                 pad_token=None, model_max_length=1024):
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.eos_token = eos_token
        self.bos_token = bos_token or eos_token
        self.pad_token = pad_token
        self.model_max_length = model_max_length
        self.pat = _pattern()
        self._cache = {}

    @property
    def eos_token_id(self):
        return self.encoder.get(self.eos_token)

    @property
    def pad_token_id(self):
        if self.pad_token is not None:
            return self.encoder.get(self.pad_token)
        return self.eos_token_id

    def __len__(self):
        return len(self.encoder)

    @classmethod
    def from_pretrained(cls, directory):
        """Read ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``'s BPE model)."""
        cfg = _tokenizer_config(directory)
        vj, mt = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.exists(vj) and os.path.exists(mt):
            with open(vj, encoding="utf-8") as f:
                encoder = json.load(f)
            merges = []
            with open(mt, encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if not line or line.startswith("#version"):
                        continue
                    a, b = line.split(" ")
                    merges.append((a, b))
        else:
            with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
                model = json.load(f)["model"]
            encoder = model["vocab"]
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                      for m in model["merges"]]
        kw = {}
        for k in ("eos_token", "bos_token", "pad_token"):
            v = cfg.get(k)
            if isinstance(v, dict):
                v = v.get("content")
            if v is not None:
                kw[k] = v
        mml = cfg.get("model_max_length")
        if isinstance(mml, int) and mml < 1_000_000:
            kw["model_max_length"] = mml
        return cls(encoder, merges, **kw)

    def _bpe(self, token):
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        word = list(token)
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = self.bpe_ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            a, b = best
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                    new.append(a + b)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        if len(self._cache) < 100_000:
            self._cache[token] = word
        return word

    def tokenize(self, text):
        out = []
        for piece in self.pat.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            out.extend(self._bpe(mapped))
        return out

    def encode(self, text, add_special_tokens=False, truncation=False, max_length=None):
        ids = [self.encoder[t] for t in self.tokenize(text)]
        if truncation:
            ids = ids[:max_length or self.model_max_length]
        return ids

    def decode(self, ids, skip_special_tokens=False):
        toks = [self.decoder[int(i)] for i in ids]
        if skip_special_tokens:
            toks = [t for t in toks if t not in (self.eos_token, self.bos_token, self.pad_token)]
        data = bytearray(self.byte_decoder[c] for c in "".join(toks) if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace")

    def __call__(self, texts, padding=False, truncation=False, max_length=None,
                 return_tensors=None, add_special_tokens=False):
        return _encode_texts(texts, lambda t: self.encode(t, truncation=truncation, max_length=max_length),
                             padding, self.pad_token_id or 0, return_tensors, max_length,
                             type_ids=False)

    def save_pretrained(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for (a, b), _ in sorted(self.bpe_ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{a} {b}\n")
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer", "eos_token": self.eos_token,
                       "bos_token": self.bos_token, "model_max_length": self.model_max_length}, f)


def load_tokenizer(directory, model_type=None):
    """The tokenizer of a Hugging Face directory: WordPiece for BERT, byte-level BPE for
    GPT-2 (from ``config.json``'s ``model_type`` or the files present)."""
    if model_type is None:
        p = os.path.join(directory, "config.json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
    if model_type in ("gpt2",) or (model_type is None and os.path.exists(os.path.join(directory, "merges.txt"))):
        return ByteLevelBPETokenizer.from_pretrained(directory)
    return WordPieceTokenizer.from_pretrained(directory)
