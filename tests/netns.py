"""Multi-host test helpers: "hosts" made of Linux network namespaces joined by veths.

A :class:`Cluster` of ``n`` hosts is ``n`` network namespaces, each with its own network
stack (loopback up, one ``eth0``-like veth with address ``10.213.0.<i+1>/24``). Two
hosts are joined by one veth pair; three or more by a bridge in an extra "switch"
namespace. ``shape(rate)`` puts a ``tbf`` qdisc on every host's link (each direction
shaped on its sender's egress, like a real NIC). Namespaces share the file system,
/dev/shm, the host name and the boot id, so :meth:`Cluster.env` gives each host its own
``DEEPSEEK_HOST_ID``: ranks of different namespaces are then different hosts to the
``cpu`` backend (ZeroMQ between them, shared memory inside one).

Names carry a random id, so concurrent test runs never collide; the addresses are only
visible inside our namespaces, so every run can use the same 10.213.0.0/24. ``close()``
kills what still runs inside the namespaces (every such process is ours: the
namespaces are) and deletes them, which deletes their veths and the bridge; it is
idempotent and the pytest fixture calls it on every path.

Start processes inside a host with :meth:`Cluster.popen` (``ip netns exec``); each gets
its own session so a timeout can kill the whole tree.
"""
import os
import shutil
import signal
import subprocess
import time
import uuid

SUBNET = "10.213.0"
IFNAME = "eth0"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True,
                          timeout=30)


def unavailable_reason():
    """Why namespaces cannot be built here (None when they can): not root, no ``ip``,
    or the kernel refuses a namespace."""
    if os.geteuid() != 0:
        return "multi-host tests need root (ip netns)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"dsprobe{uuid.uuid4().hex[:8]}"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return f"ip netns add failed: {r.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


class Cluster:
    """``n`` namespaces ("hosts") on one link; see the module docstring."""

    def __init__(self, n, tag=None):
        if n < 2:
            raise ValueError("a cluster needs at least 2 hosts")
        self.n = n
        self.id = tag or uuid.uuid4().hex[:8]
        self.hosts = [f"ds{self.id}h{i}" for i in range(n)]
        self.switch = f"ds{self.id}sw" if n > 2 else None
        self.addrs = [f"{SUBNET}.{i + 1}" for i in range(n)]
        self._procs = []
        self._made = []
        self.run_ids = set()  # job ids seen in output (see note_output)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ topology
    def _add_ns(self, name):
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self):
        for h in self.hosts:
            self._add_ns(h)
        if self.switch is None:
            # created straight inside the namespaces: the root namespace never sees
            # the names, so concurrent runs cannot clash there
            _ip("link", "add", "name", IFNAME, "netns", self.hosts[0], "type", "veth",
                "peer", "name", IFNAME, "netns", self.hosts[1])
        else:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, h in enumerate(self.hosts):
                port = f"p{i}"
                _ip("link", "add", "name", IFNAME, "netns", h, "type", "veth",
                    "peer", "name", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
        for h, a in zip(self.hosts, self.addrs):
            _ip("-n", h, "addr", "add", f"{a}/24", "dev", IFNAME)
            _ip("-n", h, "link", "set", IFNAME, "up")

    def shape(self, rate, burst="1mb", latency="50ms"):
        """Limit every host's egress on the link to ``rate`` (tc syntax: ``1gbit``)."""
        for h in self.hosts:
            subprocess.run(["ip", "netns", "exec", h, "tc", "qdisc", "replace", "dev",
                            IFNAME, "root", "tbf", "rate", rate, "burst", burst,
                            "latency", latency], check=True, capture_output=True,
                           timeout=30)

    def link(self, host, up):
        """Take ``host``'s link down (a network partition) or up again."""
        _ip("-n", self.hosts[host], "link", "set", IFNAME, "up" if up else "down")

    # ------------------------------------------------------------------ processes
    def env(self, host, base=None, **extra):
        """An environment for a process on ``host``: its own DEEPSEEK_HOST_ID."""
        env = dict(os.environ if base is None else base)
        env["DEEPSEEK_HOST_ID"] = f"netns-{self.id}-{host}"
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def popen(self, host, argv, env=None, **kw):
        """Start ``argv`` inside ``host``'s namespace, in a new session."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p = subprocess.Popen(["ip", "netns", "exec", self.hosts[host], *argv],
                             env=env if env is not None else self.env(host),
                             start_new_session=True, **kw)
        self._procs.append(p)
        return p

    def pids(self, host):
        """Every process running inside ``host``'s namespace."""
        r = _ip("netns", "pids", self.hosts[host], check=False)
        return [int(p) for p in r.stdout.split()]

    def kill_host(self, host):
        """SIGKILL everything on ``host`` at once (a node that dies)."""
        for pid in self.pids(host):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def note_output(self, text):
        """Remember the job ids in ``RUNID <id>`` lines of ``text``; returns it."""
        for line in text.splitlines():
            if "RUNID " in line:
                self.run_ids.add(line.split("RUNID ", 1)[1].strip())
        return text

    # ------------------------------------------------------------------ teardown
    def close(self):
        """Kill what we started and what runs in our namespaces; delete them."""
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for name in list(self._made):
            for _ in range(50):
                r = _ip("netns", "pids", name, check=False)
                pids = [int(p) for p in r.stdout.split()]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        self._made.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_for_output(proc, text, timeout):
    """Read ``proc``'s stdout (raw, before any other reader) until ``text`` shows up;
    everything read so far. Stops early when the process exits."""
    import select

    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def communicate_all(procs, timeout, cluster=None):
    """Wait for every process (output of each as (rc, out, err)); on the deadline kill
    every one's session and return what they wrote, rc None for those killed. With
    ``cluster``, the job ids in the output are noted there."""
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        left = max(0.1, deadline - time.monotonic())
        try:
            out, err = p.communicate(timeout=left)
            results.append((p.returncode, out, err))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    try:
                        os.killpg(q.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            out, err = p.communicate()
            results.append((None, out, err))
    if cluster is not None:
        for _, out, _ in results:
            cluster.note_output(out or "")
    return results
