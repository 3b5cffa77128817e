"""deepseek.nn: Module, Parameter, layers, losses, functional, init, utils."""
from .parameter import Parameter, Buffer
from .module import Module, register_module_forward_hook, register_module_forward_pre_hook
from .modules import *  # noqa: F401,F403
from .modules import __dict__ as _mods
from . import functional, init, utils, parallel  # noqa: F401

__all__ = ["Parameter", "Buffer", "Module", "functional", "init", "utils", "parallel",
           "register_module_forward_hook", "register_module_forward_pre_hook"] + \
    [k for k, v in list(_mods.items()) if isinstance(v, type) and k[0].isupper()]
del _mods
