"""The common head of the torch_style_*.py programs: ``--lib`` names the library that
the program imports as ``torch`` (real PyTorch, or deepseek as a drop-in), ``--steps``
how many training steps it runs."""
import argparse


def torch_and_args(steps):
    """(the module chosen by ``--lib``, the parsed args); ``steps`` is --steps' default."""
    p = argparse.ArgumentParser()
    p.add_argument("--lib", default="torch")
    p.add_argument("--steps", type=int, default=steps)
    args = p.parse_args()
    if args.lib == "deepseek":
        import deepseek as torch
    else:
        import torch
    return torch, args
