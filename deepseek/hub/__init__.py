"""deepseek.hub: pretrained models by name or from a local Hugging Face directory.

::

    model = deepseek.hub.load("all-MiniLM-L6-v2")          # a name in the index
    model = deepseek.hub.load("/models/minilm", dtype="float32", device="cpu")  # a dir
    tok = deepseek.hub.load_tokenizer("all-MiniLM-L6-v2")

``load`` returns the model alone, in eval mode, on ``device`` with floating parameters in
``dtype``; the tokenizer comes from :func:`load_tokenizer` (two calls, one return type
each). ``name_or_path`` is an existing directory (used as is, nothing is downloaded) or a
name the registry resolves.

**The registry** is a JSON index (schema in docs/hub.md): name -> architecture, files
(sha256 and size each), base URL, licence, source. The one shipped with the package
(``deepseek/hub/index.json``) is used unless ``DEEPSEEK_HUB_INDEX`` (a URL or a path)
or the ``index=`` argument names another; installed distributions add entries through
``deepseek.hub`` entry points, and :func:`register` adds entries for this process.
:func:`list` names the models, :func:`help` describes one. An entry's files can also come
from an installed package (``"package"``: used when it verifies) or be generated locally
from a seed (``"generate"``: deterministic random init); see ``_sources``.

**Downloads** go to the cache, ``$DEEPSEEK_HOME/hub`` (default ``~/.cache/deepseek/hub``),
as ``<cache>/<name>/<revision>/<file>``: verified against the index's sha256 (a mismatch
deletes the file and raises :class:`IntegrityError` with expected and actual digests),
resumed with HTTP Range after an interruption, under a per-file lock (two processes never
download the same file; in a distributed job local ranks other than 0 wait for rank 0's
copy), placed atomically. ``DEEPSEEK_HUB_OFFLINE=1`` uses the cache only and raises
:class:`OfflineError` listing what is missing.

Weights must be safetensors: ``pytorch_model.bin`` / ``.pt`` pickles are refused
(:class:`PickleCheckpointError`) with the one-liner that converts them. ``trust_remote_code``
is accepted for signature compatibility; deepseek never runs a checkpoint's code either way.
:func:`save_pretrained` writes the Hugging Face layout back.
"""
import builtins
import copy
import json
import os
import time
import urllib.request

from ._download import IntegrityError, OfflineError, fetch, file_lock, sha256_of
from ._layout import PickleCheckpointError, build_model, save_pretrained, weight_files
from ._sources import entry_point_indexes, generate, package_dir

__all__ = ["load", "load_tokenizer", "resolve", "list", "help", "register", "save_pretrained",
           "cache_dir", "get_index", "IntegrityError", "OfflineError", "PickleCheckpointError",
           "fetch", "HubError"]

_DEFAULT_INDEX = os.path.join(os.path.dirname(__file__), "index.json")
_registered = {}          # name -> entry, from register()
_index_cache = {}         # source -> (entries)
_plugin_entries = None    # from the "deepseek.hub" entry points, read once


class HubError(LookupError):
    """A name the index does not have, or an index that is not valid."""


def cache_dir():
    """``$DEEPSEEK_HOME/hub``, else ``~/.cache/deepseek/hub``."""
    from .. import env
    home = env.get("DEEPSEEK_HOME")
    if home:
        return os.path.join(os.path.expanduser(home), "hub")
    return os.path.join(os.path.expanduser("~"), ".cache", "deepseek", "hub")


def _read_index(source):
    if source in _index_cache:
        return _index_cache[source]
    if "://" in source and not source.startswith("file://"):
        from .. import env
        with urllib.request.urlopen(source, timeout=env.get("DEEPSEEK_HUB_TIMEOUT")) as r:
            data = json.loads(r.read().decode("utf-8"))
        base = source.rsplit("/", 1)[0] + "/"
    else:
        path = source[7:] if source.startswith("file://") else source
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        base = "file://" + os.path.dirname(os.path.abspath(path)) + "/"
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise HubError(f"{source}: not a deepseek hub index (needs a 'models' object; see "
                       "docs/hub.md)")
    entries = {}
    for name, e in data["models"].items():
        if "architecture" not in e or not isinstance(e.get("files"), dict):
            raise HubError(f"{source}: model {name!r} needs 'architecture' and 'files'")
        e = dict(e)
        e.setdefault("_index_base", base)
        entries[name] = e
    _index_cache[source] = entries
    return entries


def get_index(index=None):
    """The index in use as ``{name: entry}``: ``index`` (a path, URL or dict), else
    ``DEEPSEEK_HUB_INDEX``, else the shipped one; entries from :func:`register` on top."""
    from .. import env
    if isinstance(index, dict):
        entries = {k: dict(v) for k, v in (index.get("models", index)).items()}
    else:
        entries = dict(_read_index(index or env.get("DEEPSEEK_HUB_INDEX") or _DEFAULT_INDEX))
    global _plugin_entries
    if _plugin_entries is None:
        _plugin_entries = entry_point_indexes()
    for k, v in _plugin_entries.items():
        entries.setdefault(k, v)
    entries.update(_registered)
    return entries


def list(index=None):
    """The names of the models the index has, sorted."""
    return sorted(get_index(index))


def help(name, index=None):
    """A description of ``name``: architecture, licence, source, files and sizes."""
    e = _entry(name, index)
    total = sum(int(f.get("size") or 0) for f in e["files"].values())
    lines = [f"{name}: {e.get('description', '')}".rstrip(": "),
             f"  architecture: {e['architecture']}",
             f"  licence:      {e.get('licence', e.get('license', 'unknown'))}",
             f"  source:       {e.get('source', e.get('base_url', ''))}",
             f"  revision:     {e.get('revision', 'main')}",
             f"  files:        {len(e['files'])} ({total / 1e6:.1f} MB)"]
    pkg = e.get("package")
    if isinstance(pkg, dict):
        lines.append(f"  package:      the copy installed with {pkg.get('pip', pkg['module'])} "
                     "is used when present (verified)")
    if e.get("generate"):
        lines.append(f"  generated:    locally, random init with seed "
                     f"{e['generate'].get('seed', 0)} (no download)")
    return "\n".join(lines)


def register(name, architecture, files=None, base_url=None, path=None, licence=None,
             source=None, description="", revision="main", config=None):
    """Add ``name`` to the index for this process: either ``path`` (a local HF directory) or
    ``files`` (``{filename: {"sha256": ..., "size": ..., "url": optional}}``) under
    ``base_url``. ``config``: the model configuration when the files have no config.json
    (torchvision checkpoints: ``{"depth": 50}``)."""
    if path is None and not files:
        raise ValueError("register: give path= (a local directory) or files= with base_url=")
    e = {"architecture": architecture, "files": dict(files or {}), "revision": revision,
         "description": description}
    for k, v in (("base_url", base_url), ("path", path), ("licence", licence), ("source", source),
                 ("config", config)):
        if v is not None:
            e[k] = os.fspath(v) if k == "path" else v
    _registered[name] = e
    return e


def _entry(name, index=None):
    entries = get_index(index)
    if name not in entries:
        raise HubError(f"{name!r} is neither a directory nor a model in the index "
                       f"(known: {', '.join(sorted(entries)) or 'none'}); see deepseek.hub.list()")
    return entries[name]


def _url(e, fname, meta, revision):
    if meta.get("url"):
        u = meta["url"]
    else:
        base = e.get("base_url") or e.get("_index_base", "")
        u = base.rstrip("/") + "/" + fname if base else fname
    u = u.replace("{revision}", revision)
    if "://" not in u:
        u = e.get("_index_base", "file://" + os.getcwd() + "/") + u
    return u


def _local_rank():
    try:
        lr = int(os.environ.get("LOCAL_RANK", "0"))
        ws = int(os.environ.get("WORLD_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 0
    return lr if ws > 1 else 0


def resolve(name_or_path, revision=None, index=None, progress=None, rank_wait=600.0):
    """The local directory of ``name_or_path``, downloading what the cache lacks."""
    from .. import env
    p = os.fspath(name_or_path)
    if os.path.isdir(p):
        return p
    e = _entry(p, index)
    if e.get("path"):
        return e["path"]
    rev = revision or e.get("revision", "main")
    files = e["files"]
    if rev != e.get("revision", "main"):
        alt = (e.get("revisions") or {}).get(rev)
        if alt is None:
            raise HubError(f"{p}: the index has revision {e.get('revision', 'main')!r}, not "
                           f"{rev!r} (its sha256s are per revision)")
        files = alt["files"] if "files" in alt else alt
    safe = p.replace("/", "--")
    root = os.path.join(cache_dir(), safe, rev)
    if e.get("package") and rev == e.get("revision", "main"):
        d = package_dir(p, e, files, root)      # an installed distribution's verified copy
        if d is not None:
            return d
    if e.get("generate"):                       # deterministic random init: no network
        return generate(p, e, files, root)
    targets = {f: os.path.join(root, *f.split("/")) for f in files}
    if env.get("DEEPSEEK_HUB_OFFLINE"):
        missing = [f for f, t in targets.items() if not os.path.exists(t)]
        if missing:
            raise OfflineError(f"DEEPSEEK_HUB_OFFLINE=1 and the cache ({root}) lacks "
                               f"{len(missing)} file(s) of {p!r}: {', '.join(missing)}; unset "
                               "DEEPSEEK_HUB_OFFLINE to download them", missing)
        return root
    if _local_rank() > 0:      # local rank 0 downloads; the others wait for its copy
        deadline = time.monotonic() + rank_wait
        while time.monotonic() < deadline and not all(os.path.exists(t) for t in targets.values()):
            time.sleep(0.2)
    for f, meta in files.items():
        fetch(_url(e, f, meta, rev), targets[f], sha256=meta.get("sha256"),
              size=meta.get("size"), progress=progress)
    return root


def load(name_or_path, *, revision=None, device=None, dtype=None, trust_remote_code=False,
         index=None, progress=None):
    """The model of ``name_or_path`` (a directory or an index name), in eval mode, on
    ``device`` with floating parameters in ``dtype`` (default: float32, on the CPU)."""
    from .. import dtypes as _dt
    d = resolve(name_or_path, revision=revision, index=index, progress=progress)
    arch, extra = None, None
    if not os.path.isdir(os.fspath(name_or_path)):
        e = _entry(os.fspath(name_or_path), index)
        arch, extra = e.get("architecture"), e.get("config")
    if isinstance(dtype, str):
        dtype = _dt.as_dtype(dtype)
    return build_model(d, architecture=arch, dtype=dtype, device=device,
                       trust_remote_code=trust_remote_code, extra_config=extra)


def load_tokenizer(name_or_path, *, revision=None, index=None, progress=None):
    """The tokenizer of ``name_or_path``: a WordPiece (BERT) or byte-level BPE (GPT-2) one."""
    from ..models.tokenizers import load_tokenizer as _lt
    return _lt(resolve(name_or_path, revision=revision, index=index, progress=progress))
