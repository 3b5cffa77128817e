"""Prints the launcher environment as one JSON line; optionally runs the rendezvous."""
import json
import os
import sys

NAMES = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
         "MASTER_PORT", "DEEPSEEK_STORE_ADDR", "DEEPSEEK_TOKEN", "DEEPSEEK_LAUNCHER",
         "DEEPSEEK_RUN_ID", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]
report = {n: os.environ.get(n) for n in NAMES}
report["argv"] = sys.argv[1:]
report["pid"] = os.getpid()
if "--rendezvous" in sys.argv:
    from deepseek.collectives.env import connect_store, detect, rendezvous
    info = detect()
    store = connect_store(info)
    peers = rendezvous(store, info.rank, info.world_size, payload=str(os.getpid()))
    report["peers"] = [int(p) for p in peers]
    report["detected"] = [info.launcher, info.rank, info.world_size, info.local_rank,
                          info.local_world_size, info.node_rank]
    store.close()
print("REPORT " + json.dumps(report))
print(f"stderr line from {report['RANK']}", file=sys.stderr)
