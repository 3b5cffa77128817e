"""configure_optimizers() in Lightning's shapes, and the stepping of lr schedulers."""


def parse_optimizers(conf):
    """configure_optimizers() in any of Lightning's shapes -> (optimizers, schedulers),
    schedulers as dicts {'scheduler', 'interval', 'frequency', 'monitor'}."""
    def is_opt(o):
        return callable(getattr(o, "step", None)) and callable(getattr(o, "zero_grad", None)) \
            and hasattr(o, "param_groups")

    def sched(s):
        d = dict(s) if isinstance(s, dict) else {"scheduler": s}
        if "scheduler" not in d:
            raise ValueError("an lr_scheduler dict needs a 'scheduler' key")
        d.setdefault("interval", "epoch")
        d.setdefault("frequency", 1)
        d.setdefault("monitor", None)
        if d["interval"] not in ("epoch", "step"):
            raise ValueError(f"lr_scheduler interval must be 'epoch' or 'step', got "
                             f"{d['interval']!r}")
        if not callable(getattr(d["scheduler"], "step", None)):
            raise TypeError(f"lr_scheduler {d['scheduler']!r} has no step()")
        return d

    def bad():
        return TypeError(
            "configure_optimizers() must return an optimizer, a list of optimizers, "
            "([optimizers], [lr_schedulers]), or a dict {'optimizer': ..., 'lr_scheduler': ...} "
            f"(or a list of such dicts); got {type(conf).__name__}")

    opts, scheds = [], []
    if conf is None:
        raise bad()
    if is_opt(conf):
        opts = [conf]
    elif isinstance(conf, dict):
        if "optimizer" not in conf:
            raise bad()
        opts = [conf["optimizer"]]
        if conf.get("lr_scheduler") is not None:
            scheds = [conf["lr_scheduler"]]
    elif isinstance(conf, (list, tuple)):
        pair = len(conf) == 2 and all(isinstance(c, (list, tuple)) for c in conf)
        if pair:
            opts, scheds = list(conf[0]), list(conf[1])
        elif all(isinstance(c, dict) for c in conf) and conf:
            for c in conf:
                if "optimizer" not in c:
                    raise bad()
                opts.append(c["optimizer"])
                if c.get("lr_scheduler") is not None:
                    scheds.append(c["lr_scheduler"])
        else:
            opts = list(conf)
    else:
        raise bad()
    if not opts or not all(is_opt(o) for o in opts):
        raise bad()
    return opts, [sched(s) for s in scheds]


def step_schedulers(schedulers, interval, count, metrics):
    """Step the schedulers of ``interval`` whose frequency divides ``count`` (steps or
    epochs done: derived from the loop, so a resumed run keeps the same rhythm)."""
    for s in schedulers:
        if s["interval"] != interval or count % s["frequency"]:
            continue
        if s["monitor"] is not None:
            if s["monitor"] not in metrics:
                raise KeyError(f"lr_scheduler monitors {s['monitor']!r}, which nobody logged "
                               f"(logged: {sorted(metrics)})")
            s["scheduler"].step(metrics[s["monitor"]])
        else:
            s["scheduler"].step()
