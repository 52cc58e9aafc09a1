"""The one table mapping logical axis names to mesh axes, and the mesh/sharding helpers built on it.

Modules name their parameter and activation axes logically (`embed`, `mlp`, `heads`, `vocab`, `batch`...);
only this file knows the mesh axes `('data', 'fsdp', 'tensor')`. A config may replace the table
(`use_rules`), modules never do. A dimension that the mesh axes do not divide is replicated instead of
failing, so odd sizes (a 51865-token vocab, 3 heads on tensor=2) still run.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
    ("kv", None),
    ("positions", None),
    ("mel", None),
    ("conv_in", None),
    ("conv_width", None),
    ("norm", None),
)

_ACTIVE_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("audiocap_rules", default=LOGICAL_RULES)


@contextlib.contextmanager
def use_rules(rules: Sequence[Sequence[Any]]) -> Iterator[None]:
    """Run with another logical->mesh table (e.g. from a config)."""
    token = _ACTIVE_RULES.set(tuple((name, _as_axes(axes)) for name, axes in rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def active_rules() -> Rules:
    return _ACTIVE_RULES.get()


def _as_axes(axes: Any) -> str | tuple[str, ...] | None:
    if axes is None or isinstance(axes, str):
        return axes
    return tuple(axes)


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `('data', 'fsdp', 'tensor')` from e.g. `{'data': -1, 'fsdp': 1, 'tensor': 1}`.

    One axis may be -1 (takes the remaining devices). Axis types are Auto (GSPMD propagation), which
    `jax.sharding.Mesh` uses by default; jax 0.10's `jax.make_mesh` would default to Explicit.
    """
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh_shape has unknown axes {sorted(unknown)}; use {MESH_AXES}.")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh_shape {dict(mesh_shape)}: at most one axis may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh_shape {dict(mesh_shape)} does not divide {len(devices)} devices.")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh_shape {dict(zip(MESH_AXES, sizes, strict=True))} needs {math.prod(sizes)} devices but "
            f"{len(devices)} are visible; make the axis sizes multiply to {len(devices)} (or use -1 for one axis)."
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical axis names; with `shape` and `mesh`, undividable dims are replicated."""
    table = dict(active_rules() if rules is None else rules)
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
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
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


def logical_axes_of(state: Any) -> Any:
    """Tree of the logical axis names stored on each variable of an NNX state."""
    return jax.tree.map(
        lambda v: v.get_metadata()["logical_axes"], state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedSharding for every variable of an (abstract) NNX state, from its logical axes."""

    def one(v: nnx.Variable) -> nnx.Variable:
        spec = logical_to_spec(v.get_metadata()["logical_axes"], v.shape, mesh)
        return v.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def log_sharding_overview(state: Any, mesh: Mesh) -> None:
    """One log line per parameter kind: shape and mesh spec; plus the total parameter count."""
    shardings = state_shardings(state, mesh)
    leaves = jax.tree_util.tree_leaves_with_path(state)
    total = sum(math.prod(x.shape) for _, x in leaves)
    logging.info("Parameters: %s (%.1f M) on mesh %s", f"{total:,}", total / 1e6, dict(mesh.shape))
    for (path, x), sharding in zip(leaves, jax.tree.leaves(shardings), strict=True):
        logging.info(
            "  %-60s %-22s %s", jax.tree_util.keystr(path, simple=True, separator="."), x.shape, sharding.spec
        )
