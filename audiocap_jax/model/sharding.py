"""The one table mapping logical axis names to mesh axes, and the mesh/sharding helpers built on it.

Modules name their parameter and activation axes logically (`embed`, `mlp`, `heads`, `vocab`, `batch`...);
only this file knows the mesh axes `('data', 'fsdp', 'tensor')`. A dimension that the mesh axes do not divide
is replicated instead of failing, so odd sizes (a 51865-token vocab, 3 heads on tensor=2) still run.

Batches follow the same table: `batch_sharding(mesh)` is the `"batch"` rule, `host_to_global` turns each
process's rows `[B, ...]` into one global array `[G, ...]` (G = B x process count), and `global_to_host` gives
a process its own rows back. Training, validation, `predict` and `evaluate` all place batches this way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Batch is split over data and fsdp (FSDP = data parallel with sharded weights); weights are split over
# fsdp along their model width and over tensor along heads/mlp/vocab (Megatron-style).
LOGICAL_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("length", None),
    ("positions", None),
    ("mel", None),
    ("conv_in", None),
    ("conv_width", None),
    ("norm", None),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int | None) -> dict[str, int]:
    """The size of every mesh axis from e.g. `{'data': -1, 'fsdp': 1, 'tensor': 1}` (a missing axis is 1, one
    axis may be -1: the remaining devices), for `num_devices` devices; with None only the form is checked and a
    -1 stays. The one rule for a config's mesh: `make_mesh` builds it and preflight asks it before any device
    starts.

    Raises:
      ValueError: an unknown axis, a size below 1 other than -1, two -1, or sizes that do not fit the devices.
    """
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise ValueError(
            f"mesh {dict(mesh_config)} has unknown axes {unknown}; use only {', '.join(MESH_AXES)}."
        )
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    if not all(size == -1 or size >= 1 for size in sizes.values()):
        raise ValueError(f"mesh {sizes}: sizes must be >= 1 or -1.")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh {sizes}: more than one axis is -1; at most one takes the remaining devices.")
    if num_devices is None:
        return sizes
    known = math.prod(size for size in sizes.values() if size != -1)
    rest = -1 in sizes.values()
    fits = num_devices % known == 0 if rest else known == num_devices
    if not fits:
        raise ValueError(
            f"mesh {sizes} does not fit the {num_devices} visible devices: it needs "
            f"{f'a multiple of {known}' if rest else known} devices but {num_devices} are visible; make the axis "
            f"sizes multiply to {num_devices} (or use -1 for one axis)."
        )
    return {axis: num_devices // known if size == -1 else size for axis, size in sizes.items()}


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `('data', 'fsdp', 'tensor')` from e.g. `{'data': -1, 'fsdp': 1, 'tensor': 1}` (`mesh_shape`).

    Axis types are Auto (GSPMD propagation), which `jax.sharding.Mesh` uses by default; jax 0.10's
    `jax.make_mesh` would default to Explicit.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical axis names; with `shape` and `mesh`, undividable dims are replicated."""
    table = dict(LOGICAL_RULES if rules is None else rules)
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(logical_axes):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise ValueError(
                f"Logical axis {name!r} has no rule; add it to the rules table ({[n for n, _ in table.items()]})."
            )
        mesh_axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)  # a mesh axis can shard one dim only
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape.get(a, 1) > 1)
            if shape is not None and mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside a mesh context (`jax.set_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(size == 1 for size in mesh.shape.values()):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedSharding for every variable of an (abstract) NNX state, from its logical axes."""

    def one(v: nnx.Variable) -> nnx.Variable:
        spec = logical_to_spec(v.get_metadata()["logical_axes"], v.shape, mesh)
        return v.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def sharding_table(state: Any, mesh: Mesh) -> str:
    """One line per parameter: dotted name, shape and mesh spec (what `log_sharding_overview` writes)."""
    shardings = jax.tree.leaves(state_shardings(state, mesh))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return "\n".join(
        f"{jax.tree_util.keystr(path, simple=True, separator='.'):<60} {str(x.shape):<22} {s.spec}"
        for (path, x), s in zip(leaves, shardings, strict=True)
    )


def log_sharding_overview(state: Any, mesh: Mesh, table_file: Path | None = None) -> None:
    """The parameter count and how many parameters the mesh splits, in one line.

    The per-parameter table goes to `table_file` (when given) and to the log at verbosity 1: a whisper-large
    table is hundreds of lines nobody reads on every start.
    """
    leaves = jax.tree.leaves(state)
    shardings = jax.tree.leaves(state_shardings(state, mesh))
    total = sum(math.prod(x.shape) for x in leaves)
    split = sum(math.prod(x.shape) for x, s in zip(leaves, shardings, strict=True) if any(s.spec))
    where = f"; per-parameter table in {table_file}" if table_file is not None else ""
    logging.info(
        "Parameters: %s (%.1f M) on mesh %s, %.0f%% of them split over devices%s",
        f"{total:,}",
        total / 1e6,
        dict(mesh.shape),
        100.0 * split / max(total, 1),
        where,
    )
    table = sharding_table(state, mesh)
    if table_file is not None:
        table_file.write_text(table + "\n")
    logging.vlog(1, "Sharding of every parameter:\n%s", table)


# ---------------------------------------------------------------------------------------------------------------
# Batches: the "batch" rule, and the host <-> global conversions every caller uses.
# ---------------------------------------------------------------------------------------------------------------
def batch_sharding(mesh: Mesh | AbstractMesh) -> NamedSharding:
    """Dimension 0 split as the `"batch"` rule says (the mesh's data-parallel axes), the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",), mesh=mesh))


def data_parallel_size(mesh: Mesh | AbstractMesh) -> int:
    """How many ways `batch_sharding` splits the batch: a global batch must be a multiple of this. An
    `AbstractMesh` (sizes, no devices) answers it before any device starts."""
    return math.prod(mesh.shape[a] for a in jax.tree.leaves(tuple(batch_sharding(mesh).spec)))


def mesh_processes(mesh: Mesh) -> int:
    """How many processes own devices of `mesh`: every process for training and `evaluate`'s global mesh, one
    for `predict`, where each process decodes its own shards on its own devices."""
    return len({device.process_index for device in mesh.devices.flat})


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array | np.ndarray]:
    """Each process's rows `[B, ...]` -> global jax.Arrays `[G, ...]` placed by `batch_sharding(mesh)`
    (G = B x the processes of the mesh).

    String leaves (file names, references) stay host-side numpy: they are for metrics, not for devices. Other
    leaves keep their dtype (the float16 log-mels travel as float16; the model casts on device).
    """
    sharding = batch_sharding(mesh)
    devices = data_parallel_size(mesh)
    processes = mesh_processes(mesh)
    out: dict[str, jax.Array | np.ndarray] = {}
    for key, value in batch.items():
        if value.dtype == object:
            out[key] = value
            continue
        global_rows = value.shape[0] * processes
        if global_rows % devices:
            raise ValueError(
                f"batch leaf {key!r} has {global_rows} global rows, not a multiple of the {devices} "
                f"data-parallel devices of mesh {dict(mesh.shape)}; set the global batch size to a multiple "
                f"of {devices}."
            )
        out[key] = jax.make_array_from_process_local_data(
            sharding, np.ascontiguousarray(value), (global_rows, *value.shape[1:])
        )
    return out


def global_to_host(x: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a global `[G, ...]` array placed by `batch_sharding`, in the order it gave them."""
    if mesh_processes(mesh) == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, batch_sharding(mesh).spec))
