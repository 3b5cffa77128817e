"""Rank functions for tests/test_elastic_sharded.py (module-level: spawned ranks import
them): in-process recovery of sharded optimizer state (ZeRO-1, ZeRO-2) without a
launcher. A job of ``world`` ranks trains and commits; the ranks in ``dead`` stop
taking part (as if killed: they never call anything again); the others form a
subgroup, :meth:`State.sync` it, build a *fresh* model and optimizer on it (another
seed: the loaded state must overwrite it) and bind them -- the commit resharded to
the smaller world -- and train on.
"""
import zero_cases as zc


def _steps(state, runner, optimizer, pg, n, commit):
    per = zc.GLOBAL_BATCH // pg.size
    for _ in range(n):
        x, y = zc._data("mlp", state.step)
        xs, ys = x[pg.rank * per:(pg.rank + 1) * per], y[pg.rank * per:(pg.rank + 1) * per]
        optimizer.zero_grad()
        zc._loss(runner, "mlp", xs, ys).backward()
        optimizer.step()
        state.step += 1
        if commit:
            state.commit()


def recover(rank, world, stage, dead, before=3, after=3, opt="adamw"):
    """Final full parameters after ``before`` committed steps at ``world`` ranks, one
    step that is rolled back, and ``after`` steps at the survivors (None on a dead
    rank)."""
    from deepseek import collectives as C
    from deepseek import elastic
    from deepseek.distributed.elastic import Sharded
    zc._init()
    state = elastic.State(step=0)
    pg = C.get_default_group()
    runner, optimizer = zc.wrap(zc.build_model("mlp", seed=0), stage, opt, pg=pg)
    state.bind(train=Sharded(runner, optimizer))
    _steps(state, runner, optimizer, pg, before, True)
    _steps(state, runner, optimizer, pg, 1, False)     # never committed: rolled back
    sub = C.new_group([r for r in range(world) if r not in dead])
    if sub is None:
        return None
    state.sync(sub)
    assert state.step == before and "train" not in state._objects
    runner, optimizer = zc.wrap(zc.build_model("mlp", seed=1), stage, opt, pg=sub)
    state.bind(train=Sharded(runner, optimizer))
    _steps(state, runner, optimizer, sub, after, True)
    state.restore()              # the last commit: where it is now
    return zc.full_params(runner, stage)


def reference(before=3, after=3, opt="adamw"):
    """One process, never interrupted, the same global batches."""
    return zc.train(0, 1, "single", opt=opt, steps=before + after)[0]
