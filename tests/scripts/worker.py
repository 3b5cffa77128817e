"""A configurable worker for launcher tests: ``worker.py MODE [FAILING_RANK]``.

Every rank writes its pid to $PID_DIR/rank<N>.pid (and grandchildren's pids to
rank<N>.child) so tests can check with psutil that nothing outlives the launcher.
Modes: ok, raise, sigkill, exit3, sleep, grandchild, rdzv_missing, lines.
"""
import os
import signal
import subprocess
import sys
import time

rank = int(os.environ["RANK"])
mode = sys.argv[1]
bad = int(sys.argv[2]) if len(sys.argv) > 2 else 1
pid_dir = os.environ.get("PID_DIR")
if pid_dir:
    with open(os.path.join(pid_dir, f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))


def spawn_grandchild(detach):
    # A grandchild that would sleep for a long time; with detach it even leaves the
    # worker's session (so only the launcher's subreaper sweep can find it).
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=detach)
    if pid_dir:
        with open(os.path.join(pid_dir, f"rank{rank}.child"), "a") as f:
            f.write(f"{p.pid}\n")


print(f"hello from rank {rank}", flush=True)
if mode == "ok":
    sys.exit(0)
if mode == "lines":
    # Many partial writes per line, from every rank at once: lines must arrive whole.
    for i in range(200):
        for part in (f"rank{rank}-line{i}-", "x" * 50, "-end\n"):
            sys.stdout.write(part)
            sys.stdout.flush()
    sys.exit(0)
if mode == "rdzv_missing":
    from deepseek.collectives.env import connect_store, detect, rendezvous
    info = detect()
    if rank == bad:
        time.sleep(300)
    store = connect_store(info)
    rendezvous(store, info.rank, info.world_size)
    sys.exit(0)
if mode == "grandchild":
    spawn_grandchild(detach=False)
    spawn_grandchild(detach=True)
    mode = "raise" if rank == bad else "sleep"
if rank == bad:
    time.sleep(0.3)
    if mode == "raise":
        print("about to fail", file=sys.stderr, flush=True)
        raise ValueError(f"rank {rank} failed on purpose")
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exit3":
        sys.exit(3)
time.sleep(300)
