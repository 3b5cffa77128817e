"""Self-launching: a plain ``python script.py`` with ``Trainer(devices=N > 1)``.

``fit`` starts ``deepseek-run --nproc N`` on the same command line: every worker
re-runs the whole script (Lightning's "subprocess" launcher). The parent does not
train; when the workers succeed it loads rank 0's final weights (and the callbacks'
states) into its own model and callbacks, and it raises when they fail. The script
runs once in the workers: later ``fit`` calls in the parent take the workers' result
of the same call (matched by the count of fit calls in each process).
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys

# Set by a Trainer that launches workers itself: where rank 0 leaves each fit's result.
RESULT_ENV = "DEEPSEEK_TRAINER_RESULT_DIR"
_fit_calls = [0]  # fit() calls in this process (matches a parent's fits to its workers')


class _LaunchState:
    """What a parent that launched workers knows (one launch per process)."""
    result_dir = None
    rc = None


def next_fit_call():
    """The number of this fit() call in this process (0, 1, ...)."""
    call = _fit_calls[0]
    _fit_calls[0] += 1
    return call


def needs_launch(trainer):
    """True in a plain single process asked for several devices (and not a worker)."""
    job = trainer._job
    return job.world_size == 1 and trainer.devices > 1 and RESULT_ENV not in os.environ \
        and not job.launched


def fit_through_launcher(trainer, model, call):
    """Run the script under ``deepseek-run --nproc devices``, then take rank 0's result."""
    from .module import attach
    from .state import LoopState
    result_dir = _LaunchState.result_dir
    if result_dir is None:
        rerun = rerun_command()
        import tempfile
        result_dir = tempfile.mkdtemp(prefix="deepseek-trainer-")
        _LaunchState.result_dir = result_dir
        atexit.register(shutil.rmtree, result_dir, ignore_errors=True)
        env = dict(os.environ)
        env[RESULT_ENV] = result_dir
        # the folder that holds the deepseek package (this file is deepseek/trainer/launch.py)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        if trainer.enable_progress_bar:
            sys.stderr.write(f"deepseek.Trainer: starting {trainer.devices} workers: "
                             f"deepseek-run --nproc {trainer.devices} {' '.join(rerun)}\n")
            sys.stderr.flush()
        _LaunchState.rc = run_launcher(trainer.devices, rerun, env)
    if _LaunchState.rc != 0:
        raise RuntimeError(f"Trainer.fit: the {trainer.devices} workers failed (deepseek-run "
                           f"exited with code {_LaunchState.rc}); their output is above")
    path = os.path.join(result_dir, f"fit{call}.ckpt")
    if not os.path.exists(path):
        raise RuntimeError(f"Trainer.fit: the workers finished but rank 0 left no result for "
                           f"fit call #{call} ({path}); did the script call fit() a different "
                           f"number of times in the workers?")
    from ..serialization import load
    result = load(path)
    model.load_state_dict(result["state_dict"])
    trainer._loop = LoopState()
    trainer._loop.global_step = int(result["global_step"])
    trainer._loop.epoch = int(result["epoch"])
    trainer.callback_metrics = dict(result["callback_metrics"])
    states = result.get("callbacks", {})
    for cb in trainer.callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])
    trainer.model = model
    attach(model, trainer)
    return None


def publish_result(trainer, model, call):
    """In a worker started by a Trainer: rank 0 leaves the fit's result for the parent."""
    result_dir = os.environ.get(RESULT_ENV)
    if not result_dir or not trainer.is_global_zero:
        return
    from ..serialization import save
    callbacks = {}
    for cb in trainer.callbacks:
        state = cb.state_dict()
        if state:
            callbacks[cb.state_key] = state
    save({"state_dict": model.state_dict(), "global_step": trainer.global_step,
          "epoch": trainer.current_epoch, "callback_metrics": dict(trainer.callback_metrics),
          "callbacks": callbacks},
         os.path.join(result_dir, f"fit{call}.ckpt"))


def run_launcher(nproc, command, env):
    """``deepseek-run --nproc N command`` as a child process; its exit code.

    A subprocess, not deepseek.launcher.main() in this process: the agent makes itself
    a child subreaper and kills every child of its process when it is done, which must
    not hit processes the user's script started. It dies with us (SIGTERM on our death,
    which it forwards to the workers), and after a Ctrl-C, which reached it too (same
    process group), it is given time to stop its workers before we go on.
    """
    preexec = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1

            def preexec():
                libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        except OSError:
            preexec = None
    proc = subprocess.Popen([sys.executable, "-m", "deepseek.launcher", "--nproc", str(nproc),
                             *command], env=env, preexec_fn=preexec)
    try:
        return proc.wait()
    except BaseException:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


def rerun_command():
    """How this program was started, to start it again in every worker."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = sys.argv[0] if sys.argv else ""
    name = getattr(spec, "name", None) or ""
    if name.split(".")[0] in ("pytest", "_pytest") or os.path.basename(script).startswith("pytest"):
        raise RuntimeError(
            "Trainer(devices>1) under pytest would re-run the whole test session in every "
            "worker; start the training script in a subprocess (python script.py or "
            "deepseek-run --nproc N script.py) instead")
    if name and name != "__main__":
        name = name[:-len(".__main__")] if name.endswith(".__main__") else name
        return ["-m", name, *sys.argv[1:]]
    if not script or script == "-c" or not os.path.isfile(script):
        raise RuntimeError(
            "Trainer(devices>1) started from an interactive session or `python -c` cannot "
            "re-run the program in its workers; put the code in a script and run it as "
            "`python script.py` or `deepseek-run --nproc N script.py`")
    return [script, *sys.argv[1:]]
