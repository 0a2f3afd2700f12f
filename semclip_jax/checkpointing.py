"""Checkpoints: orbax CheckpointManager over the train state and the input iterator's state.

Each checkpoint step holds three items: `state` (the whole `TrainState`: parameters, optimizer
state, step and skip counters), `data` (the input pipeline's JSON state), so a restarted run
sees exactly the batches it would have seen, and `fingerprint` (two checksums of each array's
bits, computed on the devices): a restore that does not give back the bits saved (a flipped bit
in a file, which orbax's compressed chunks decode silently, finite or not) or gives NaN/Inf is a
`CorruptCheckpointError`, which the trainer answers by falling back to the checkpoint before.
Saves are asynchronous; orbax writes each step to a temporary folder and renames it when complete,
so a checkpoint that was being written when the process died is never listed, hence never
restored. The last `keep` checkpoints are kept, plus the `keep_best` best by an evaluation metric.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from semclip_jax import atomic_io, storage
from semclip_jax.sharding import path_str

STATE, DATA, FINGERPRINT = "state", "data", "fingerprint"


class CorruptCheckpointError(ValueError):
  """A checkpoint restored other bits than were saved, or NaN/Inf."""


class Checkpointer:
  """Save/restore of (train state, data iterator state) under `directory`."""

  def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 0,
               best_metric: str | None = None, best_mode: str = "max", async_save: bool = True):
    if keep_best and not best_metric:
      raise ValueError("checkpoint.keep_best needs checkpoint.best_metric (an evaluator metric)")
    if best_mode not in ("max", "min"):
      raise ValueError(f"checkpoint.best_mode must be 'max' or 'min', got {best_mode!r}")
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    metric_of = lambda metrics: metrics[best_metric]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=metric_of, reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
    # best_fn makes orbax write each checkpoint's metrics to disk (<step>/metrics): without it
    # they live in memory only, and a resumed run's BestN would find none to rank by.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=metric_of if best_metric else None, best_mode=best_mode,
        enable_async_checkpointing=async_save, create=True)
    # orbax reads gs:// itself (tensorstore for arrays, etils.epath for its metadata files).
    self.directory = storage.absolute(storage.check(directory, "checkpoint directory"))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, DATA, FINGERPRINT))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step whose saved metrics are best by `best_metric` (the latest without one)."""
    return self._manager.best_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any] | None,
           metrics: dict[str, float] | None = None) -> None:
    """Starts an (asynchronous) save of `state` and the iterator state at `step`."""
    items = {STATE: ocp.args.StandardSave(state),
             DATA: ocp.args.JsonSave(data_state if data_state is not None else {}),
             FINGERPRINT: ocp.args.JsonSave(fingerprint(state))}
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores step `step` into the shapes, dtypes and shardings of `abstract_state` (None: as
    saved, e.g. to inspect a checkpoint). CorruptCheckpointError when its arrays are not those
    saved: checked against the saved fingerprint when restored into `abstract_state` (without
    one, orbax gives back a tree of plain dicts whose paths are not the saved state's) and
    for NaN/Inf always (all that checkpoints from before fingerprints can be checked for)."""
    items = {STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}
    fingerprinted = abstract_state is not None and storage.exists(
        storage.join(self.directory, str(step), FINGERPRINT))
    if fingerprinted:
      items[FINGERPRINT] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    problem = state_problem(restored[STATE], restored[FINGERPRINT] if fingerprinted else None)
    if problem:
      raise CorruptCheckpointError(f"checkpoint {step}: {problem}")
    return restored[STATE], restored[DATA]

  def set_aside(self, step: int, folder: str) -> str:
    """Moves checkpoint `step` (one that does not restore) out of the checkpoints, to
    `folder/<step>`, so the run can save that step again; returns where it went. Kept rather
    than deleted: it may still be worth inspecting."""
    destination = storage.join(folder, str(step))
    if storage.exists(destination):
      storage.rmtree(destination)  # set aside by an earlier attempt at the same step
    storage.move(storage.join(self.directory, str(step)), destination)
    self.reload()
    return destination

  def reload(self) -> None:
    """Lists the steps on disk again (after another process moved one)."""
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words: one per element (two for 8-byte types, a trailing axis)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize >= 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  narrow = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)


def _leaf_summary(x: jax.Array) -> jax.Array:
  """uint32 [3]: the sum of `x`'s words and their sum weighted by position (1, 2, ...), both
  mod 2^32, and whether every value is finite. A flipped bit changes the first (by ±2^k); two
  words swapped, the second. Integer sums: the same under any sharding and reduction order. The
  positions come from iotas in the array's own shape: no reshape, so no resharding."""
  words = _words(x)
  position, stride = jnp.ones(words.shape, jnp.uint32), 1
  for axis in reversed(range(words.ndim)):
    position += jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
    stride *= words.shape[axis]
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
  return jnp.stack([jnp.sum(words, dtype=jnp.uint32),
                    jnp.sum(words * position, dtype=jnp.uint32), jnp.uint32(finite)])


# One program per tree structure: a run's saves, and every checkpoint a fallback tries, reuse it.
_summaries = jax.jit(lambda leaves: jnp.stack([_leaf_summary(x) for x in leaves]))


def _summarize(tree: Any) -> dict[str, tuple[int, int, bool]]:
  """{dotted path: (word sum, weighted word sum, finite)} of every array in `tree`."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not flat:
    return {}
  rows = jax.device_get(_summaries([x for _, x in flat]))
  return {path_str(path): (int(a), int(b), bool(f)) for (path, _), (a, b, f) in zip(flat, rows)}


def fingerprint(state: Any) -> dict[str, list[int]]:
  """{dotted path: [word sum, position-weighted word sum]} of each array of `state`: what a
  checkpoint saves beside it, for `state_problem` to compare on restore."""
  return {name: [a, b] for name, (a, b, _) in _summarize(state).items()}


def state_problem(state: Any, saved_fingerprint: dict[str, list[int]] | None) -> str | None:
  """Why restored `state` is not what was saved, naming its arrays: NaN/Inf, or (given the
  fingerprint saved with it) bits that differ; None when it is."""
  summary = _summarize(state)

  def named(what: str, names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{what} {', '.join(names[:3])}{more}"

  non_finite = [name for name, (_, _, finite) in summary.items() if not finite]
  if non_finite:
    return named("non-finite values in", non_finite)
  if saved_fingerprint is None:
    return None
  if set(saved_fingerprint) != set(summary):
    return named("its fingerprint lists other arrays:",
                 sorted(set(saved_fingerprint) ^ set(summary)))
  changed = [name for name, (a, b, _) in summary.items() if [a, b] != list(saved_fingerprint[name])]
  return named("values other than those saved (fingerprint) in", changed) if changed else None


def saved_steps(directory: str) -> list[int]:
  """The steps with a folder in `directory` (finished or not), without opening a manager, which
  would create the folder: whether a run is a resume, decided before anything is written."""
  if not storage.isdir(directory):
    return []
  return sorted(int(name) for name in storage.listdir(directory) if name.isdigit())


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def write_config(workdir: str, config_json: str) -> None:
  """Saves the run's config as `workdir/config.json` (atomically), beside the checkpoints."""
  atomic_io.write_text(storage.join(workdir, "config.json"), config_json)
