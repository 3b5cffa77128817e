"""Verified, resumable, locked downloads into the hub cache (stdlib only).

``fetch(url, dest, sha256=None, size=None)`` makes ``dest`` a verified copy of ``url``:

* a file lock (``dest + ".lock"``, ``fcntl.flock``) is held for the whole download, so two
  processes never download the same file: the second waits, then finds it in place;
* bytes go to ``dest + ".part"``; when that exists from an interrupted run, the download
  resumes from its size with an HTTP ``Range`` request (a server answering 200 restarts it);
* a dropped connection is resumed the same way, up to ``DEEPSEEK_HUB_RETRIES`` times;
* the whole file's sha256 (and size) is checked before it is placed: a mismatch deletes the
  partial file and raises :class:`IntegrityError` naming the expected and actual digests;
* placement is ``os.replace`` of the verified part, so ``dest`` is never half-written;
* a progress bar goes to stderr when it is a terminal (``progress=True`` forces it).
"""
import contextlib
import fcntl
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

__all__ = ["IntegrityError", "OfflineError", "fetch", "file_lock", "sha256_of"]

_CHUNK = 1 << 20


class IntegrityError(OSError):
    """A downloaded file is not the one the index describes (sha256 or size)."""


class OfflineError(FileNotFoundError):
    """Offline mode and the cache lacks files; ``.missing`` lists them."""

    def __init__(self, msg, missing=()):
        super().__init__(msg)
        self.missing = list(missing)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                return h.hexdigest()
            h.update(b)


@contextlib.contextmanager
def file_lock(path):
    """An exclusive advisory lock on ``path`` (created when absent), held in the block."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class _Progress:
    def __init__(self, name, total, start, enabled):
        self.name, self.total, self.done, self.enabled = name, total, start, enabled
        self.t0, self.last = time.monotonic(), 0.0

    def update(self, n):
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and (self.total is None or self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-6) / 1e6
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.name}: [{bar:<30}] {100 * frac:5.1f}% "
                             f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s")
        else:
            sys.stderr.write(f"\r{self.name}: {self.done / 1e6:.1f} MB {rate:.1f} MB/s")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _verify(path, sha256, size):
    if size is not None:
        actual = os.path.getsize(path)
        if actual != size:
            return f"size {actual} bytes, expected {size}"
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.lower():
            return f"sha256 {actual}, expected {sha256.lower()}"
    return None


def _open(url, offset, timeout, headers):
    req = urllib.request.Request(url, headers=dict(headers or {}))
    req.add_header("User-Agent", "deepseek-hub")
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    if url.startswith("file://") or "://" not in url:
        path = url[7:] if url.startswith("file://") else url
        f = open(path, "rb")
        f.seek(offset)
        return f, 206 if offset else 200, os.path.getsize(path)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:              # the part already holds the whole file
            return None, 416, None
        raise
    code = resp.status
    length = resp.headers.get("Content-Length")
    total = None
    if code == 206:
        cr = resp.headers.get("Content-Range", "")
        if "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
            total = int(cr.rsplit("/", 1)[1])
    elif length is not None:
        total = int(length)
    return resp, code, total


def fetch(url, dest, sha256=None, size=None, progress=None, timeout=None, retries=None,
          headers=None):
    """Download ``url`` to ``dest`` unless a verified copy is there; returns ``dest``."""
    from .. import env
    timeout = env.get("DEEPSEEK_HUB_TIMEOUT") if timeout is None else timeout
    retries = env.get("DEEPSEEK_HUB_RETRIES") if retries is None else retries
    if progress is None:
        progress = sys.stderr.isatty()
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    with file_lock(dest + ".lock"):
        if os.path.exists(dest):
            # placed after verification; a cheap size check catches a foreign file
            if size is None or os.path.getsize(dest) == size:
                return dest
            os.remove(dest)
        attempt = 0
        while True:
            offset = os.path.getsize(part) if os.path.exists(part) else 0
            if size is not None and offset > size:
                os.remove(part)
                offset = 0
            try:
                if size is not None and offset == size:
                    resp, code = None, 416
                else:
                    resp, code, total = _open(url, offset, timeout, headers)
                if code != 416:
                    if code == 200 and offset:
                        offset = 0                     # no Range support: start over
                    bar = _Progress(os.path.basename(dest), size or total, offset, progress)
                    with resp, open(part, "ab" if offset else "wb") as out:
                        while True:
                            b = resp.read(_CHUNK)
                            if not b:
                                break
                            out.write(b)
                            bar.update(len(b))
                    bar.close()
                    got = os.path.getsize(part)
                    expect = size if size is not None else total
                    if expect is not None and got < expect:
                        raise ConnectionError(f"connection closed at {got} of {expect} bytes")
                break
            except (ConnectionError, TimeoutError, OSError, urllib.error.URLError) as e:
                if isinstance(e, urllib.error.HTTPError) and e.code not in (408, 429, 500, 502, 503, 504):
                    raise OSError(f"downloading {url}: HTTP {e.code} {e.reason}") from None
                attempt += 1
                if attempt > retries:
                    raise OSError(f"downloading {url}: {e} (gave up after {retries} resumed "
                                  f"attempts; {os.path.getsize(part) if os.path.exists(part) else 0}"
                                  f" bytes kept in {part} for the next try)") from e
                time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
        bad = _verify(part, sha256, size)
        if bad:
            os.remove(part)
            raise IntegrityError(f"{url}: downloaded file has {bad}; the partial file was "
                                 f"deleted (the source changed, or the download was corrupted)")
        os.replace(part, dest)
        return dest
