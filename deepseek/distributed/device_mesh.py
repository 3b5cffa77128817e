"""DeviceMesh: the workers arranged as an n-dimensional grid, one process group per
line of the grid (PyTorch's ``init_device_mesh``).

    mesh = init_device_mesh(mesh_shape=(2, 2, 2), mesh_dim_names=("dp", "pp", "tp"))
    mesh["tp"]                 # this rank's tensor-parallel ProcessGroup
    mesh.get_local_rank("pp")  # this rank's coordinate along "pp" (its pipeline stage)
    mesh.size("dp")            # 2

Placement: global ranks fill the grid with the dimension named ``"tp"`` innermost
(consecutive ranks, so on one host they share memory), then the other dimensions in
the given order with the last one fastest -- Megatron's order for ("dp", "pp", "tp").
``mesh.mesh`` is the grid of global ranks, indexed in ``mesh_dim_names`` order.

Every group of every dimension is created once, here, by every rank in the same
order (``new_group`` is collective over the world). For a dimension named ``"pp"``
a second group over the same ranks is made as well: pipeline stages send
activations on one and gradients on the other, so a send held up in one direction
never queues a send in the other behind it (see ``p2p_groups``).
"""
import weakref

import numpy as np

from deepseek import collectives as _C

__all__ = ["DeviceMesh", "init_device_mesh", "p2p_groups"]

# pp group -> its twin for the opposite direction (see p2p_groups)
_TWINS = weakref.WeakKeyDictionary()
_P2P_DIMS = ("pp", "pipe", "pipeline")


class DeviceMesh:
    """A grid of global ranks with a ProcessGroup for each line of each dimension.

    Built by ``init_device_mesh``. ``mesh[name]`` (or ``get_group(name)``) is this
    rank's group along that dimension; ``get_local_rank(name)`` its coordinate;
    ``size(name)`` the dimension's length; ``get_coordinate()`` all coordinates.
    """

    def __init__(self, mesh, mesh_dim_names, groups, coordinate):
        self.mesh = mesh
        self.mesh_dim_names = tuple(mesh_dim_names)
        self._groups = groups
        self._coord = tuple(coordinate)

    @property
    def shape(self):
        return tuple(self.mesh.shape)

    @property
    def ndim(self):
        return self.mesh.ndim

    def _dim(self, name):
        if isinstance(name, int):
            if not 0 <= name < self.ndim:
                raise IndexError(f"mesh dimension {name} out of range ({self.ndim} dims)")
            return name
        try:
            return self.mesh_dim_names.index(name)
        except ValueError:
            raise KeyError(f"no mesh dimension {name!r}; the mesh has "
                           f"{self.mesh_dim_names}") from None

    def __getitem__(self, name):
        return self.get_group(name)

    def get_group(self, mesh_dim=0):
        """This rank's ProcessGroup along ``mesh_dim`` (a name or an index)."""
        return self._groups[self._dim(mesh_dim)]

    def get_all_groups(self):
        return list(self._groups)

    def get_local_rank(self, mesh_dim=0):
        """This rank's coordinate along ``mesh_dim`` (its rank in that group)."""
        return self._coord[self._dim(mesh_dim)]

    def get_coordinate(self):
        return list(self._coord)

    def size(self, mesh_dim=None):
        if mesh_dim is None:
            return int(self.mesh.size)
        return int(self.mesh.shape[self._dim(mesh_dim)])

    def __repr__(self):
        dims = ", ".join(f"{n}={s}" for n, s in zip(self.mesh_dim_names, self.shape))
        return f"DeviceMesh({dims}, coordinate={self._coord})"


def _grid(shape, names):
    """Global ranks laid out with "tp" innermost, indexed in ``names`` order."""
    order = [i for i, n in enumerate(names) if n != "tp"] + \
        [i for i, n in enumerate(names) if n == "tp"]
    world = int(np.prod(shape))
    placed = np.arange(world).reshape([shape[i] for i in order])
    # axis k of ``placed`` is dimension order[k]: move it back to position order[k]
    return np.moveaxis(placed, list(range(len(order))), order)


def init_device_mesh(device_type="cpu", mesh_shape=None, *, mesh_dim_names=None):
    """Arrange the world as a ``mesh_shape`` grid and create every dimension's groups.

    ``device_type`` is accepted for PyTorch's signature (the backend is the default
    group's). ``mesh_shape``'s product must equal the world size; ``mesh_dim_names``
    (default "dim0", "dim1", ...) must be distinct. Every rank must call it with the
    same arguments. Initialises the default group when it is not yet."""
    if mesh_shape is None and not isinstance(device_type, str):
        device_type, mesh_shape = "cpu", device_type  # init_device_mesh((2, 2), ...)
    if mesh_shape is None:
        raise ValueError("init_device_mesh: mesh_shape is required")
    shape = tuple(int(s) for s in mesh_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"init_device_mesh: mesh_shape {mesh_shape} must be positive ints")
    names = tuple(mesh_dim_names) if mesh_dim_names is not None else \
        tuple(f"dim{i}" for i in range(len(shape)))
    if len(names) != len(shape):
        raise ValueError(f"init_device_mesh: {len(names)} names {names} for a "
                         f"{len(shape)}-d mesh_shape {shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"init_device_mesh: mesh_dim_names {names} are not distinct")
    if not _C.is_initialized():
        _C.init_process_group()
    world, me = _C.get_world_size(), _C.get_rank()
    if int(np.prod(shape)) != world:
        raise ValueError(
            f"init_device_mesh: mesh_shape {shape} ({' x '.join(map(str, shape))} = "
            f"{int(np.prod(shape))}) does not multiply to the world size {world}")
    grid = _grid(shape, names)
    coord = tuple(int(c) for c in np.argwhere(grid == me)[0])
    groups = []
    for d, name in enumerate(names):
        lines = np.moveaxis(grid, d, -1).reshape(-1, shape[d])
        mine = None
        # every rank creates every line's group, in the same order (collective calls)
        for line in lines:
            g = _C.new_group(line.tolist())
            if g is not None:
                mine = g
        if name in _P2P_DIMS:
            twin = None
            for line in lines:
                g = _C.new_group(line.tolist())
                if g is not None:
                    twin = g
            _TWINS[mine] = twin
        groups.append(mine)
    return DeviceMesh(grid, names, groups, coord)


def p2p_groups(group):
    """(forward, backward) groups for a pipeline over ``group``: ``group`` itself and
    the twin over the same ranks that ``init_device_mesh`` made for a "pp" dimension
    (``group`` twice when it has none -- then sends of both directions share one
    queue, which is safe while messages fit the transport's p2p slots)."""
    return group, _TWINS.get(group, group)
