"""A worker for the elastic tests: ``elastic_worker.py MODE [ARG]``.

Every start appends one JSON record (rank, world size, restart count, run id, store,
pid ...) to $PID_DIR/records.jsonl and writes its pid to $PID_DIR/<run id>_rank<N>.pid,
so tests can check what each attempt saw and that nothing outlives the launcher.
Modes:
  fail_once         a real process group (init + allreduce) every attempt; rank 1
                    exits 3 on the first attempt only
  fail_always CODE  rank 1 prints a traceback and exits CODE on every attempt; the
                    others sleep
  until_world N     sleeps while WORLD_SIZE < N; at N: init + allreduce, exit 0
  stubborn          attempt 0: rank 1 fails, rank 0 ignores SIGTERM (so stopping the
                    attempt takes --grace); later attempts sleep
"""
import json
import os
import signal
import sys
import time
import traceback

mode = sys.argv[1]
arg = sys.argv[2] if len(sys.argv) > 2 else None
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
restart = int(os.environ["DEEPSEEK_RESTART_COUNT"])
run_id = os.environ["DEEPSEEK_RUN_ID"]
pid_dir = os.environ["PID_DIR"]

with open(os.path.join(pid_dir, f"{run_id}_rank{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
record = {"rank": rank, "world": world, "restart": restart, "run_id": run_id,
          "torch_restart": os.environ.get("TORCHELASTIC_RESTART_COUNT"),
          "store": os.environ["DEEPSEEK_STORE_ADDR"], "token": os.environ["DEEPSEEK_TOKEN"],
          "node_rank": int(os.environ["NODE_RANK"]), "pid": os.getpid(),
          "agent": os.getppid(),
          "t": time.time()}
with open(os.path.join(pid_dir, "records.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


def allreduce():
    import numpy as np
    from deepseek import collectives as C
    pg = C.init_process_group()
    x = np.ones(1024, np.float32)
    pg.allreduce(x)
    assert x[0] == world, (x[0], world)
    print(f"step 1 done on rank {rank} of {world}", flush=True)
    C.destroy_process_group()


def nested_failure(depth):
    if depth == 0:
        raise ValueError(f"rank {rank} fails on attempt {restart}")
    nested_failure(depth - 1)


if mode == "fail_once":
    if restart == 0 and rank == 1:
        time.sleep(0.2)
        sys.exit(3)
    allreduce()
elif mode == "fail_always":
    if rank == 1:
        try:
            nested_failure(3)
        except ValueError:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(int(arg))
    time.sleep(300)
elif mode == "until_world":
    if world < int(arg):
        time.sleep(300)
    allreduce()
elif mode == "stubborn":
    if restart == 0 and rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if restart == 0 and rank == 1:
        time.sleep(0.5)
        open(os.path.join(pid_dir, "failed"), "w").close()
        sys.exit(5)
    time.sleep(300)
else:
    raise SystemExit(f"unknown mode {mode!r}")
