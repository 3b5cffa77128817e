"""Running a snippet in a fresh interpreter, for tests of what an import pulls in or
of a process's whole start-up (tests/ is on sys.path)."""
import subprocess
import sys


def run_code(code, timeout=60, **kwargs):
    """The stdout of ``python -c code`` (``kwargs`` go to subprocess.run: cwd, env);
    fails the calling test, showing the snippet's stderr, when the snippet fails."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, **kwargs)
    assert out.returncode == 0, out.stderr
    return out.stdout
