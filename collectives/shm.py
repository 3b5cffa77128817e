"""POSIX shared-memory segments for the ranks of one host.

A segment is created by one rank, attached by the others (names travel through the
rendezvous store) and unlinked as soon as every rank has attached: from then on the
memory lives only as long as some process maps it, so a crash (even SIGKILL) leaves
nothing in /dev/shm. Names carry the job id (``dsk_<job>_...``) so that the parent
of a job (``spawn_ranks``, the launcher) can sweep any segment left over from the
short window between creation and the last attach: :func:`cleanup_job`.

``_posixshmem`` is CPython's own binding of shm_open/shm_unlink (what
multiprocessing.shared_memory uses); we use it directly to stay out of the
multiprocessing resource tracker, which would unlink segments behind our back.
"""
import mmap
import os
import re
import secrets

try:
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

SHM_DIR = "/dev/shm"
PREFIX = "dsk_"


def available():
    return _posixshmem is not None


def safe_job_id(job_id):
    """``job_id`` as it appears in segment names: letters and digits only, at most 16
    (idempotent, so a caller that already cleaned it gets the same prefix)."""
    return (re.sub(r"[^A-Za-z0-9]", "", str(job_id)) or "job")[:16]


def job_prefix(job_id):
    """The name prefix of every segment of job ``job_id`` -- what the launcher sweeps
    with :func:`cleanup_job` once the job's workers have ended."""
    return f"{PREFIX}{safe_job_id(job_id)}_"


def make_name(job_id, tag):
    # short: macOS limits names to 31 characters
    return f"/{job_prefix(job_id)}{tag}_{secrets.token_hex(4)}"


class Segment:
    """One mapped segment. ``buf`` is the mmap (a writable buffer)."""

    def __init__(self, name, size, create):
        self.name = name
        self.size = size
        self._unlinked = False
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open(name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size < size:
                raise RuntimeError(f"shared memory {name} is smaller than expected")
            self.buf = mmap.mmap(fd, size)
        except BaseException:
            if create:
                self.unlink()
            raise
        finally:
            os.close(fd)

    @classmethod
    def create(cls, job_id, tag, size):
        return cls(make_name(job_id, tag), max(int(size), mmap.PAGESIZE), True)

    @classmethod
    def attach(cls, name, size):
        return cls(name, max(int(size), mmap.PAGESIZE), False)

    def unlink(self):
        """Remove the name (idempotent); the mapping stays valid."""
        if not self._unlinked:
            self._unlinked = True
            try:
                _posixshmem.shm_unlink(self.name)
            except FileNotFoundError:
                pass

    def close(self):
        try:
            self.buf.close()
        except BufferError:
            # numpy views still alive somewhere: the mapping goes with the process
            pass


def cleanup_job(job_id, tag=None):
    """Unlink every segment of ``job_id`` still named in /dev/shm (only those made with
    ``tag`` when it is given); returns the names."""
    removed = []
    if not os.path.isdir(SHM_DIR):
        return removed
    prefix = job_prefix(job_id) + (f"{tag}_" if tag else "")
    for fname in os.listdir(SHM_DIR):
        if fname.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, fname))
                removed.append(fname)
            except OSError:
                pass
    return removed
