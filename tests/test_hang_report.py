"""The hang report covers every rank that is still alive, also those that leave on a
peer's abort before their watchdog could answer (issue 11, item 6)."""
import re

from test_launcher import launch

ABORT_SCRIPT = """\
import time
import numpy as np
from deepseek import collectives as C

pg = C.init_process_group()
if pg.rank == 0:
    pg.allreduce(np.ones(4, np.float32), timeout=1.0)    # times out first: rank 2 is away
elif pg.rank == 1:
    pg.allreduce(np.ones(4, np.float32), timeout=60.0)   # gets rank 0's abort and leaves
else:
    def stuck_in_compute():
        time.sleep(60)
    stuck_in_compute()
"""


def test_a_rank_that_leaves_on_an_abort_still_reports_where_it_was(tmp_path):
    script = tmp_path / "abort.py"
    script.write_text(ABORT_SCRIPT)
    # a slow watchdog poll: rank 1 is gone long before it would answer a request
    rc, out, err = launch(tmp_path, "--nproc", "3", "--grace", "2", str(script), timeout=90,
                          DEEPSEEK_HANG_POLL="30")
    assert rc == 1, err
    assert err.count("deepseek hang report (3 ranks)") == 1, err
    report = err[err.index("deepseek hang report"):]
    assert re.search(r"rank 0 \(pid \d+\): allreduce seq 1 in group 'default'", report), report
    assert re.search(r"rank 1 \(pid \d+\): allreduce seq 1 in group 'default'", report), report
    assert "rank 1: no report" not in report, report
    assert "aborted the group" in report or "PeerFailureError" in report, report
