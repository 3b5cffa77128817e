"""Bootstrap discovery (pure functions of the environment), the rendezvous helper, and
the MPI path under a real ``mpiexec -n 2``."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from deepseek.collectives.env import (JobInfo, RendezvousTimeout, connect_store, derive_port,
                                      detect, parse_slurm_nodelist, parse_tasks_per_node,
                                      rendezvous)
from deepseek.collectives.store import LocalStore, StoreClient, StoreServer

pytestmark = pytest.mark.timeout(60)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plain_python():
    info = detect({})
    assert info == JobInfo(launcher="single")
    assert not info.is_distributed and info.store_addr is None
    assert isinstance(connect_store(info), LocalStore)


def test_deepseek_run():
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
           "NODE_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "29500",
           "DEEPSEEK_STORE_ADDR": "n0:29500", "DEEPSEEK_TOKEN": "t",
           "DEEPSEEK_LAUNCHER": "deepseek-run", "DEEPSEEK_RUN_ID": "abc",
           "DEEPSEEK_NNODES": "2", "DEEPSEEK_RDZV_TIMEOUT": "12"}
    i = detect(env)
    assert (i.launcher, i.rank, i.world_size, i.local_rank, i.local_world_size, i.node_rank,
            i.num_nodes) == ("deepseek-run", 5, 8, 1, 4, 1, 2)
    assert (i.store_addr, i.token, i.job_id, i.rdzv_timeout, i.host_store) == \
        ("n0:29500", "t", "abc", 12.0, False)


def test_torchrun_and_explicit_env():
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    i = detect(env)
    assert i.launcher == "env" and i.host_store and i.store_addr == "127.0.0.1:29500"
    assert i.token_derived and i.token == detect(dict(env, RANK="1")).token
    t = detect(dict(env, TORCHELASTIC_RUN_ID="xyz"))
    # torchrun's own store is on MASTER_PORT: ours takes the next port.
    assert t.launcher == "torchrun" and t.store_addr == "127.0.0.1:29501"
    assert detect(dict(env, DEEPSEEK_TOKEN="secret")).token == "secret"
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        detect({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})


def test_open_mpi():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
           "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
           "OMPI_MCA_ess_base_jobid": "12345"}
    i = detect(env)
    assert (i.launcher, i.rank, i.world_size, i.local_rank, i.local_world_size, i.node_rank,
            i.num_nodes) == ("openmpi", 3, 4, 1, 2, 1, 2)
    assert i.master_addr is None and i.store_addr is None   # two hosts: MPI bcast decides
    assert i.master_port == derive_port(i.job_id)
    i = detect(dict(env, MASTER_ADDR="head", MASTER_PORT="4000"))
    assert i.store_addr == "head:4000" and i.extra["explicit_master"]


def test_mpich_and_intel_mpi():
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
           "PMI_FD": "9"}
    i = detect(env)
    assert (i.launcher, i.rank, i.world_size, i.local_rank, i.local_world_size) == \
        ("mpich", 1, 2, 1, 2)
    assert i.master_addr == "127.0.0.1" and i.master_port is not None  # one host
    i = detect(dict(env, I_MPI_ROOT="/opt/intel"))
    assert i.launcher == "intelmpi"
    i = detect({"PMIX_RANK": "2", "PMIX_SIZE": "4", "PMI_LOCAL_RANK": "0",
                "PMI_LOCAL_SIZE": "2", "PMIX_NAMESPACE": "job.1"})
    assert (i.rank, i.world_size, i.local_rank, i.local_world_size, i.node_rank) == \
        (2, 4, 0, 2, 1)


def test_slurm_srun():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "2", "SLURM_NNODES": "4", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": "777", "SLURM_TASKS_PER_NODE": "2(x4)",
           "SLURM_JOB_NODELIST": "gpu[07-09,12]"}
    i = detect(env)
    assert (i.launcher, i.rank, i.world_size, i.local_rank, i.local_world_size, i.node_rank,
            i.num_nodes) == ("slurm", 5, 8, 1, 2, 2, 4)
    assert i.master_addr == "gpu07" and i.master_port == derive_port("777.0")
    assert i.store_addr == f"gpu07:{i.master_port}" and not i.host_store
    assert detect(dict(env, SLURM_PROCID="0")).host_store
    # The step's own values win over the allocation's.
    i = detect(dict(env, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="gpu[10-11]",
                    SLURM_STEP_TASKS_PER_NODE="2,2", SLURM_NODEID="1", SLURM_PROCID="2"))
    assert (i.world_size, i.master_addr, i.local_world_size) == (4, "gpu10", 2)
    # A batch script (no step id) is one process, not rank 0 of N.
    batch = {k: v for k, v in env.items() if k != "SLURM_STEP_ID"}
    assert detect(dict(batch, SLURM_PROCID="0")).launcher == "single"
    # MASTER_PORT overrides the derived port.
    assert detect(dict(env, MASTER_PORT="4567")).master_port == 4567


def test_precedence():
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}
    ds = {"DEEPSEEK_STORE_ADDR": "h:1", "DEEPSEEK_TOKEN": "t", "RANK": "1",
          "WORLD_SIZE": "2"}
    assert detect({**slurm, **ds}).launcher == "deepseek-run"
    torch_env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1",
                 "TORCHELASTIC_RUN_ID": "r"}
    assert detect({**slurm, **torch_env}).launcher == "torchrun"
    assert detect({**slurm, "PMI_RANK": "0", "PMI_SIZE": "1"}).launcher == "mpich"


def test_nodelist_and_tasks_per_node():
    assert parse_slurm_nodelist("node[01-04,07]") == \
        ["node01", "node02", "node03", "node04", "node07"]
    assert parse_slurm_nodelist("a1,b[2-3],c") == ["a1", "b2", "b3", "c"]
    assert parse_slurm_nodelist("r[1-2]n[8-9]") == ["r1n8", "r1n9", "r2n8", "r2n9"]
    assert parse_slurm_nodelist("host.example.com") == ["host.example.com"]
    assert parse_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert 15000 <= derive_port("x") < 30000 and derive_port("x") == derive_port("x")


def test_rendezvous_all_arrive_and_rounds():
    server = StoreServer(token="t").start()
    results = {}

    def rank(r):
        with StoreClient("127.0.0.1", server.port, "t", timeout=20) as c:
            results[r] = [rendezvous(c, r, 3, timeout=20, payload=f"p{r}") for _ in range(2)]

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    server.close()
    assert all(results[r] == [[b"p0", b"p1", b"p2"]] * 2 for r in range(3))


def test_rendezvous_timeout_names_missing_ranks():
    with StoreServer(token="t") as server, \
            StoreClient("127.0.0.1", server.port, "t") as c:
        c.set("deepseek/rdzv/t/0/1", b"")          # rank 1 arrived in round 0
        with pytest.raises(RendezvousTimeout) as e:
            rendezvous(c, 0, 5, timeout=0.3, tag="t")
    msg = str(e.value)
    assert "2 of 5 ranks arrived" in msg and "missing ranks: 2-4" in msg
    assert e.value.missing_ranks == [2, 3, 4] and e.value.arrived == 2


def test_connect_store_rank0_hosts_under_env():
    port = StoreServer(token="x").start()
    free = port.port
    port.close()
    base = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free)}
    out = {}

    def rank(r):
        info = detect(dict(base, RANK=str(r)))
        store = connect_store(info, timeout=20)
        try:
            out[r] = rendezvous(store, r, 2, timeout=20, payload=str(r))
            # Rank 0 hosts the store, so it closes it only after every rank has left.
            store.add("left", 1)
            while r == 0 and store.add("left", 0) < 2:
                time.sleep(0.01)
        except Exception as e:      # reported below
            errors.append(e)
        store.close()

    errors = []
    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert out == {0: [b"0", b"1"], 1: [b"0", b"1"]}


MPI_SCRIPT = """
import json
import sys
import time
from deepseek.collectives.env import connect_store, detect, rendezvous
info = detect()
store = connect_store(info, timeout=30)
peers = rendezvous(store, info.rank, info.world_size, timeout=30, payload=str(info.rank))
# Rank 0 hosts the store: it closes it only after every rank has left.
store.add("left", 1)
if info.rank == 0:
    while store.add("left", 0) < info.world_size:
        time.sleep(0.01)
# One file per rank: mpiexec may merge the ranks' stdout chunks.
with open(sys.argv[1] + f"/rank{info.rank}.json", "w") as f:
    json.dump([info.launcher, info.rank, info.world_size, info.local_rank,
               info.local_world_size, [p.decode() for p in peers]], f)
store.close()
"""


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")
def test_under_real_mpiexec(tmp_path):
    script = tmp_path / "mpi_env.py"
    script.write_text(MPI_SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, str(script),
                             str(tmp_path)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec -n 2 timed out\n{out}\n{err}\n{os.listdir(tmp_path)}")
    assert proc.returncode == 0, err
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r[:5] for r in rows] == [["mpich", 0, 2, 0, 2], ["mpich", 1, 2, 1, 2]]
    assert all(r[5] == ["0", "1"] for r in rows)


DS_RUN = {"RANK": "0", "WORLD_SIZE": "2", "DEEPSEEK_STORE_ADDR": "h:1",
          "DEEPSEEK_TOKEN": "t"}


@pytest.mark.parametrize("extra,message", [
    ({"DEEPSEEK_RDZV_TIMEOUT": "abc"},
     "DEEPSEEK_RDZV_TIMEOUT='abc': expected a positive number of seconds"),
    ({"DEEPSEEK_RDZV_TIMEOUT": "nan"},
     "DEEPSEEK_RDZV_TIMEOUT='nan': expected a positive number of seconds"),
    ({"DEEPSEEK_RDZV_TIMEOUT": "0"},
     "DEEPSEEK_RDZV_TIMEOUT='0': expected a positive number of seconds"),
    ({"DEEPSEEK_NNODES": "0"}, "DEEPSEEK_NNODES='0': expected an integer >= 1"),
    ({"DEEPSEEK_STORE_ADDR": "nohostport"},
     "DEEPSEEK_STORE_ADDR='nohostport': expected host:port"),
    ({"RANK": "first"}, "RANK='first': expected an integer"),
])
def test_bad_values_name_the_variable(extra, message):
    with pytest.raises(ValueError) as e:
        detect(dict(DS_RUN, **extra))
    assert str(e.value) == message


def test_bad_store_port_names_the_variable():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "5",
           "DEEPSEEK_STORE_PORT": "http"}
    with pytest.raises(ValueError, match=r"^DEEPSEEK_STORE_PORT='http': expected an "
                                         r"integer in 1\.\.65535$"):
        detect(env)
    assert detect(dict(env, DEEPSEEK_STORE_PORT="4000")).store_addr == "a:4000"
    mpi = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "DEEPSEEK_STORE_PORT": "4001"}
    assert detect(mpi).master_port == 4001
    assert detect(dict(mpi, MASTER_PORT="4002")).master_port == 4002   # MASTER_PORT wins
