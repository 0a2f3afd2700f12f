"""Device mesh, parameter partitioning by name rules, and global batches.

The mesh has two axes, ('data', 'fsdp'). The batch is split over both; parameters are replicated,
or split over 'fsdp' (ZeRO-3 style: XLA all-gathers them for the matmuls). With all devices on
'data' (the default) this is plain data parallelism.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every mesh axis
# A partition rule: (regex searched in the dotted parameter path, spec or None to replicate).
Rule = tuple[str, tuple[Any, ...] | None]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (all by default); one size may be −1: the rest."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data}, fsdp={fsdp}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into a mesh with data={data}, "
                       f"fsdp={fsdp}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} needs {int(np.prod(sizes))} "
                     f"devices, but {len(devices)} are available")
  # Auto axes: XLA's partitioner propagates shardings through the towers (jax.make_mesh's default
  # is Explicit, which would make every op state its sharding).
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all mesh axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def constrain_to_batch(x: jax.Array) -> jax.Array:
  """x split over the batch axes on its leading dimension, inside a trace under a mesh.

  Reads the mesh of the enclosing `jax.sharding.use_abstract_mesh` (the train step sets it); with
  none, a mesh without the batch axes, or a leading dimension they do not divide, x is returned
  unchanged, so model code can call this unconditionally.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return x
  ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  if ways == 1 or x.ndim == 0 or x.shape[0] % ways:
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path: Sequence[Any]) -> str:
  """A pytree or nnx path as dotted names: ('text', 'proj', 'kernel') -> 'text.proj.kernel'.

  Accepts jax key entries (DictKey, GetAttrKey, SequenceKey) and plain nnx path items; the
  `.value` attribute inside nnx Variables is dropped, so rules see parameter names only.
  """
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
      continue
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return ".".join(parts)


def partition_spec(path: str, shape: tuple[int, ...], fsdp_size: int,
                   rules: Sequence[Rule] = (), min_fsdp_size: int = 2**14) -> P:
  """The spec of one parameter: the first rule whose regex matches `path`, else FSDP by default.

  Default: with fsdp_size > 1, split the largest dimension divisible by it over 'fsdp' for arrays
  of at least `min_fsdp_size` elements; small arrays (biases, norms, scalars) stay replicated.
  """
  for pattern, spec in rules:
    if re.search(pattern, path):
      return P() if spec is None else P(*spec)
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule] = ()) -> Any:
  """NamedShardings for every array leaf of `tree` (params, optimizer state, a whole train state)."""
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, partition_spec(path_str(path), shape, fsdp_size, rules))

  return jax.tree.map_with_path(one, tree)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split over the mesh (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
