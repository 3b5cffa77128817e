"""Hugging Face directory layout: reading a model out of one, writing one back.

A directory holds ``config.json`` (``architectures`` names the class, the rest is its
configuration), the weights as ``model.safetensors`` or as shards
``model-00001-of-0000N.safetensors`` listed by ``model.safetensors.index.json``
(``{"weight_map": {param name: shard file}}``), and tokenizer files. Pickle checkpoints
(``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are refused: loading them means
running their pickle, and deepseek never does.
"""
import json
import os

import numpy as np

from .. import dtypes as _dt
from ..serialization import load_file, save_file

__all__ = ["PickleCheckpointError", "weight_files", "read_state_dict", "build_model",
           "save_pretrained"]

_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth",
                 "tf_model.h5", "flax_model.msgpack")
_PICKLE_EXT = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class PickleCheckpointError(ValueError):
    """The directory only has pickle (or other non-safetensors) weights."""


_CONVERT = (
    "deepseek loads safetensors only: a pickle checkpoint can run arbitrary code when loaded, "
    "so deepseek never unpickles. Convert it once, where you trust the file, with PyTorch:\n"
    "    import torch, safetensors.torch\n"
    "    sd = torch.load('{f}', map_location='cpu', weights_only=True)\n"
    "    safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items()}}, "
    "'model.safetensors')\n"
    "(tied weights: drop the duplicate, e.g. 'lm_head.weight'); or fetch the repository's "
    "model.safetensors, which most Hugging Face models ship.")


def weight_files(directory):
    """The safetensors files of ``directory`` (one, or the shards of the index)."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            wm = json.load(f)["weight_map"]
        shards = sorted(set(wm.values()))
        missing = [s for s in shards if not os.path.exists(os.path.join(directory, s))]
        if missing:
            raise FileNotFoundError(f"{directory}: shards named in model.safetensors.index.json "
                                    f"are missing: {', '.join(missing)}")
        return [os.path.join(directory, s) for s in shards]
    if os.path.exists(single):
        return [single]
    others = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if others:
        return [os.path.join(directory, f) for f in others]
    pickles = sorted(f for f in os.listdir(directory)
                     if f in _PICKLE_NAMES or f.endswith(_PICKLE_EXT))
    if pickles:
        raise PickleCheckpointError(f"{directory}: only pickle weights ({', '.join(pickles)}); "
                                    + _CONVERT.format(f=pickles[0]))
    raise FileNotFoundError(f"{directory}: no model.safetensors, no sharded "
                            "model-0000x-of-0000y.safetensors with model.safetensors.index.json")


def read_state_dict(directory):
    """``{name: Tensor}`` of all weight files of ``directory``."""
    sd = {}
    for path in weight_files(directory):
        sd.update(load_file(path))
    return sd


def read_json(directory, name):
    """The JSON file ``name`` of ``directory``, parsed ({} when there is none)."""
    p = os.path.join(directory, name)
    if not os.path.exists(p):
        return {}
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def read_config(directory):
    """``config.json`` of an HF-layout directory ({} when there is none)."""
    return read_json(directory, "config.json")


def _fit_prefix(sd, model_keys):
    """Add or strip one leading component so checkpoint names meet the model's
    (HF's GPT-2 checkpoint has no ``transformer.``; a BertForPreTraining one has ``bert.``)."""
    if not sd or not model_keys:
        return sd
    mk = set(model_keys)
    hits = sum(k in mk for k in sd)
    if hits >= len(sd) // 2 + 1:
        return sd
    best, best_hits = sd, hits
    prefixes = {k.split(".", 1)[0] + "." for k in model_keys if "." in k}
    for p in prefixes:
        cand = {p + k: v for k, v in sd.items()}
        h = sum(k in mk for k in cand)
        if h > best_hits:
            best, best_hits = cand, h
    for p in {k.split(".", 1)[0] + "." for k in sd if "." in k}:
        cand = {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
        h = sum(k in mk for k in cand)
        if h > best_hits:
            best, best_hits = cand, h
    return best


def build_model(directory, architecture=None, dtype=None, device=None, trust_remote_code=False,
                strict=True, extra_config=None):
    """The model of ``directory`` with its weights, in eval mode. ``config.json``'s
    ``architectures[0]`` names the class; without a config.json, ``architecture`` and
    ``extra_config`` (the index entry's) do."""
    from ..models import ARCHITECTURES
    cfg = read_config(directory)
    if not cfg and extra_config:
        cfg = dict(extra_config)
    arch = (cfg.get("architectures") or [None])[0] or architecture
    if arch is None and cfg.get("model_type") == "bert":
        arch = "BertModel"
    if arch is None and cfg.get("model_type") == "gpt2":
        arch = "GPT2LMHeadModel"
    if arch not in ARCHITECTURES:
        custom = " It ships custom code (auto_map); deepseek never runs a checkpoint's code, " \
                 "trust_remote_code or not." if cfg.get("auto_map") else ""
        raise ValueError(f"{directory}: architecture {arch!r} is not one deepseek.models "
                         f"implements ({', '.join(sorted(ARCHITECTURES))}); register one with "
                         f"deepseek.models.register_architecture.{custom}")
    model_cls, config_cls = ARCHITECTURES[arch]
    config = config_cls.from_dict(cfg)
    model = model_cls(config)
    sd = read_state_dict(directory)
    model_keys = list(model.state_dict().keys())
    sd = _fit_prefix(sd, model_keys)
    ignored = tuple(getattr(model, "_ignored_keys", ()))
    suffixes = tuple(getattr(model, "_ignored_suffixes", ()))
    sd = {k: v for k, v in sd.items()
          if k not in ignored and not (suffixes and k.endswith(suffixes))}
    tied = getattr(model, "_tied", {})
    for k, src in tied.items():
        if k not in sd and src in sd:
            sd[k] = sd[src]
    for k, v in sd.items():
        if _dt.is_floating(v.dtype) and v.dtype != np.float32 and dtype is None:
            sd[k] = v.float()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise RuntimeError(f"{directory}: checkpoint does not fit {arch}: missing "
                           f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected "
                           f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if tied and getattr(config, "tie_word_embeddings", True):
        for k, src in tied.items():        # re-tie: loading copied values, keep one Parameter
            owner, _, attr = k.rpartition(".")
            src_owner, _, src_attr = src.rpartition(".")
            setattr(model.get_submodule(owner), attr,
                    getattr(model.get_submodule(src_owner), src_attr))
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def _parse_size(s):
    if s is None or isinstance(s, int):
        return s
    from ..env import _parse_bytes
    return _parse_bytes(str(s).replace("B", "") if str(s).upper().endswith(("KB", "MB", "GB"))
                        else str(s))


def save_pretrained(model, directory, tokenizer=None, max_shard_size=None):
    """Write ``model`` (and ``tokenizer``) as a Hugging Face directory: ``config.json`` and
    ``model.safetensors``, or shards of at most ``max_shard_size`` bytes ("2GB", "500MiB",
    an int) with ``model.safetensors.index.json``. Tied weights are written once."""
    os.makedirs(directory, exist_ok=True)
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg["architectures"] = [type(model).__name__]
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    sd = model.state_dict()
    seen, out = {}, {}
    for k, v in sd.items():
        key = id(v._data) if hasattr(v, "_data") else id(v)
        if key in seen and k in getattr(model, "_tied", {}):
            continue
        seen[key] = k
        out[k] = v
    limit = _parse_size(max_shard_size)
    for stale in os.listdir(directory):
        if stale.startswith("model-") and stale.endswith(".safetensors") or stale in (
                "model.safetensors", "model.safetensors.index.json"):
            os.remove(os.path.join(directory, stale))
    meta = {"format": "pt"}
    if not limit:
        save_file(out, os.path.join(directory, "model.safetensors"), metadata=meta)
    else:
        shards, cur, size = [], {}, 0
        for k, v in out.items():
            n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            if cur and size + n > limit:
                shards.append(cur)
                cur, size = {}, 0
            cur[k] = v
            size += n
        if cur:
            shards.append(cur)
        wm, total = {}, 0
        for i, sh in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, os.path.join(directory, name), metadata=meta)
            for k, v in sh.items():
                wm[k] = name
                total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
