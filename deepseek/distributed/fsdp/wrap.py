"""Auto-wrap policies: which submodules become FSDP units of their own.

A policy is PyTorch's ``policy(module, recurse, nonwrapped_numel) -> bool``: asked with
``recurse=True`` whether to look inside ``module``, with ``recurse=False`` whether to
wrap it (``nonwrapped_numel``: its parameters not already in an inner unit). A set of
module classes is the short form of :class:`ModuleWrapPolicy`.

Tied weights: a parameter that a wrapped submodule shares with a module outside it
(an embedding tied to the output layer) is left to the enclosing unit, so that it is
gathered whenever any of its users runs.
"""

__all__ = ["ModuleWrapPolicy", "size_based_auto_wrap_policy", "auto_wrap"]


class ModuleWrapPolicy:
    """Wrap every submodule whose class is in ``module_classes``."""

    def __init__(self, module_classes):
        self.module_classes = tuple(module_classes)

    def __call__(self, module, recurse, nonwrapped_numel=0):
        return True if recurse else isinstance(module, self.module_classes)


def size_based_auto_wrap_policy(module, recurse, nonwrapped_numel, min_num_params=int(1e8)):
    """Wrap a submodule once it holds at least ``min_num_params`` unwrapped parameters
    (use ``functools.partial`` to set the threshold)."""
    return True if recurse else nonwrapped_numel >= min_num_params


def _as_policy(policy):
    if isinstance(policy, (set, frozenset, list, tuple)):
        return ModuleWrapPolicy(policy)
    return policy


def auto_wrap(root, policy, make):
    """Replace, bottom-up, each submodule of ``root`` the policy selects by
    ``make(submodule, exclude)`` (``exclude``: its parameters shared with modules
    outside it). ``root`` itself is not wrapped here."""
    from .fully_sharded import FullyShardedDataParallel
    policy = _as_policy(policy)
    owners = {}
    for name, mod in root.named_modules():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(name)

    def numel(mod):
        return sum(p.numel() for p in mod.parameters())

    def visit(mod, prefix):
        for cname, child in list(mod._modules.items()):
            if child is None or isinstance(child, FullyShardedDataParallel):
                continue
            path = prefix + cname
            if policy(child, True, numel(child)):
                visit(child, path + ".")
            if policy(child, False, numel(child)):
                inside = {n for n, _ in child.named_modules(prefix=path)}
                exclude = [p for p in child.parameters() if owners[id(p)] - inside]
                mod._modules[cname] = make(child, exclude)
    visit(root, "")
