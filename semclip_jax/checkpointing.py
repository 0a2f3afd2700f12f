"""Checkpoints: orbax CheckpointManager over the train state and the input iterator's state.

Each checkpoint step holds two items: `state` (the whole `TrainState`: parameters, optimizer
state, step and skip counters) and `data` (the input pipeline's JSON state), so a restarted run
sees exactly the batches it would have seen. Saves are asynchronous; orbax writes each step to a
temporary folder and renames it when complete, so a checkpoint that was being written when the
process died is never listed, hence never restored. The last `keep` checkpoints are kept, plus the
`keep_best` best by an evaluation metric.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from semclip_jax import atomic_io, storage

STATE, DATA = "state", "data"


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
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA))

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
             DATA: ocp.args.JsonSave(data_state if data_state is not None else {})}
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores step `step` into the shapes, dtypes and shardings of `abstract_state` (None: as
    saved, e.g. to inspect a checkpoint)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state), DATA: ocp.args.JsonRestore()}))
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
