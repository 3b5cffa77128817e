"""``deepseek.serve.Client``: a small synchronous client (stdlib ``http.client``, one
keep-alive connection; not thread-safe: one Client per thread).

::

    c = Client("http://127.0.0.1:8000")
    c.predict(np.ones((2, 16), np.float32))              # {"output": array}
    c.predict({"x": x}, format="safetensors")           # binary body, binary answer
    c.infer("mlp", {"input": x})                        # KServe v2
"""
import base64
import http.client
import json
import urllib.parse

import numpy as np

__all__ = ["Client", "ServeError"]


class ServeError(RuntimeError):
    """The server answered with an error: ``status`` and the server's ``reason``."""

    def __init__(self, status, reason):
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason = status, reason


class Client:
    """A client of one deepseek-serve server at ``url``."""

    def __init__(self, url="http://127.0.0.1:8000", timeout=60.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "") or not u.hostname:
            raise ValueError(f"{url!r}: expected http://host:port")
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self._conn = None

    def close(self):
        """Close the connection (the next call opens another)."""
        # forget it first: a close that raises still leaves the client able to reconnect
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, path, body=None, content_type="application/json"):
        """``(status, headers, body bytes)`` for one request (reconnects once if the kept
        connection was closed by the server)."""
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                r = self._conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, dict(r.getheaders()), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise

    def _json(self, method, path, obj=None):
        status, _, data = self.request(method, path,
                                       None if obj is None else json.dumps(obj).encode())
        out = json.loads(data) if data else {}
        if status >= 400:
            raise ServeError(status, out.get("error", data.decode(errors="replace")))
        return out

    def health(self):
        """True when the server answers /health."""
        return self.request("GET", "/health")[0] == 200

    def ready(self):
        """True when at least one worker has loaded the model."""
        return self.request("GET", "/ready")[0] == 200

    def predict(self, inputs, format="json"):
        """Run the model on ``inputs`` (an array for a one-input model, or ``{name: array}``);
        ``format``: "json" (lists), "base64" (binary tensors in JSON) or "safetensors" (a
        binary body). Returns ``{output name: array}``."""
        named = inputs if isinstance(inputs, dict) else None
        if format == "safetensors":
            from safetensors.numpy import load, save
            if named is None:
                raise ValueError("format='safetensors' needs named inputs ({name: array})")
            body = save({k: np.ascontiguousarray(v) for k, v in named.items()})
            status, _, data = self.request("POST", "/v1/predict", body,
                                           "application/octet-stream")
            if status >= 400:
                raise ServeError(status, json.loads(data).get("error"))
            return load(data)
        if format == "base64":
            def enc(a):
                a = np.ascontiguousarray(a)
                return {"b64": base64.b64encode(a.astype(a.dtype.newbyteorder("<"))
                                                .tobytes()).decode(),
                        "dtype": a.dtype.name, "shape": list(a.shape)}
            payload = {k: enc(v) for k, v in named.items()} if named is not None \
                else enc(inputs)
            if named is None:
                raise ValueError("format='base64' needs named inputs ({name: array})")
        elif format == "json":
            payload = ({k: np.asarray(v).tolist() for k, v in named.items()} if named is not None
                       else np.asarray(inputs).tolist())
        else:
            raise ValueError(f"format={format!r}: expected 'json', 'base64' or 'safetensors'")
        out = self._json("POST", "/v1/predict", {"inputs": payload})["outputs"]
        res = {}
        for k, v in out.items():
            if isinstance(v, dict):
                res[k] = np.frombuffer(base64.b64decode(v["b64"]),
                                       dtype=np.dtype(v["dtype"]).newbyteorder("<")
                                       ).reshape(v["shape"]).astype(v["dtype"])
            else:
                res[k] = np.asarray(v)
        return res

    def infer(self, model, inputs, outputs=None):
        """KServe v2 ``/v2/models/{model}/infer`` with ``{name: array}``; ``{name: array}``."""
        from .codec import _TO_V2, V2_DTYPES
        req = {"inputs": [{"name": k, "shape": list(np.shape(v)),
                           "datatype": _TO_V2[np.asarray(v).dtype.name],
                           "data": np.asarray(v).reshape(-1).tolist()}
                          for k, v in inputs.items()]}
        if outputs:
            req["outputs"] = [{"name": n} for n in outputs]
        out = self._json("POST", f"/v2/models/{model}/infer", req)
        return {o["name"]: np.asarray(o["data"], dtype=V2_DTYPES[o["datatype"]])
                .reshape(o["shape"]) for o in out["outputs"]}

    def metadata(self, model):
        """KServe v2 model metadata (name, platform, inputs, outputs)."""
        return self._json("GET", f"/v2/models/{model}")

    def metrics(self):
        """The Prometheus text of /metrics."""
        return self.request("GET", "/metrics")[2].decode()
