"""train_and_evaluate(config, workdir): the trainer, read top to bottom in sections.

mesh · data · model and optimizer · restore · step · evaluators · loop · end (save, evaluate,
results table, Hugging Face export). Restarting with the same workdir resumes from the last
checkpoint, input iterator included; SIGTERM/SIGINT save a checkpoint and stop cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from semclip_jax import (atomic_io, checkpointing, hf, image_embedding_cache, model_card,
                         objective, openclip, optim, preemption, run_lock, sharding, storage,
                         train_step)
from semclip_jax import config as config_lib
from semclip_jax.config import ConfigError
from semclip_jax import data as data_lib
from semclip_jax.data import input_pipeline
from semclip_jax.evaluators import (EVALUATORS, Encoder, EvalRound, make_evaluator, missing_data,
                                    reads_own_data)
from semclip_jax.metrics_writer import (MetricsWriter, from_json_number, json_number,
                                        results_table)
from semclip_jax.models import CLIP, create_clip, get_preset
from semclip_jax.models.layers import REMAT_POLICIES, set_remat
from semclip_jax.pretrained import load_pretrained
from semclip_jax.progress import Progress

logger = logging.getLogger(__name__)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
VAL, TEST = "val", "test"  # result key prefixes: validation rounds (selection) and the test round
RESULTS_FILE = "results.json"


@dataclasses.dataclass
class Trained:
  """What `train_and_evaluate` returns: the model as trained, the final evaluation
  ({"val/<eval>/<metric>": v, "test/<eval>/<metric>": v}; empty when a signal stopped the run
  early) and the step both are of."""
  model: CLIP
  metrics: dict[str, float]
  step: int
  workdir: str


# ----------------------------------------------------------------------------------------------
# Config checks that must fail before anything compiles.
# ----------------------------------------------------------------------------------------------
# Counts the trainer divides by or keeps: each must be at least 1.
POSITIVE_FIELDS = ("total_steps", "log_every_steps", "data.batch_size", "data.image_size",
                   "optim.grad_accum_steps", "checkpoint.every_steps", "checkpoint.keep")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Refuses, as one `config.ConfigError` naming the field, what would fail later: after
  compiling, after the first step, or by deleting every checkpoint (`checkpoint.keep=0`)."""
  fields = config_lib.flat_fields(config)
  for field in POSITIVE_FIELDS:
    if not isinstance(fields[field], int) or fields[field] < 1:
      raise ConfigError(f"config.{field}={fields[field]!r} must be a positive integer")
  for field in ("checkpoint.keep_best", "max_consecutive_skips"):
    if fields[field] < 0:
      raise ConfigError(f"config.{field}={fields[field]!r} must be 0 or more")
  if config.loss.name not in objective.LOSS_NAMES:
    raise ConfigError(f"config.loss.name={config.loss.name!r} is not one of "
                      f"{list(objective.LOSS_NAMES)}")
  if config.model.dtype not in DTYPES:
    raise ConfigError(f"config.model.dtype={config.model.dtype!r} is not one of {list(DTYPES)}")
  if config.model.remat not in REMAT_POLICIES:
    raise ConfigError(f"config.model.remat={config.model.remat!r} is not one of "
                      f"{list(REMAT_POLICIES)}")
  if config.data.kind not in data_lib.KINDS:
    raise ConfigError(f"config.data.kind={config.data.kind!r} is not one of {list(data_lib.KINDS)}")
  micro = config.data.batch_size // config.optim.grad_accum_steps
  if config.data.batch_size % config.optim.grad_accum_steps or micro % num_devices:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} must split into "
                      f"config.optim.grad_accum_steps={config.optim.grad_accum_steps} "
                      f"micro-batches divisible by the {num_devices} devices")
  _validate_evals(config)


def _validate_evals(config: ml_collections.ConfigDict) -> None:
  """Model selection sees validation data only: the test split is scored once, at the end."""
  val_split, test_split = config.data.eval_split, config.data.test_split
  if val_split and val_split == test_split:
    raise ConfigError(f"config.data.eval_split={val_split!r} is also config.data.test_split: the "
                      "validation split chooses checkpoints and must not be the test split")
  for name, eval_config in config.evals.items():
    if eval_config.get("type") not in EVALUATORS:
      raise ConfigError(f"config.evals.{name}.type={eval_config.get('type')!r} is not one of "
                        f"{sorted(EVALUATORS)}")
    if eval_config.get("every_steps", 0) < 0:
      raise ConfigError(f"config.evals.{name}.every_steps={eval_config.every_steps} must be 0 "
                        "(at the end only) or more")
    if eval_config.get("ks") and eval_config.type not in ("retrieval", "official",
                                                          "negbench_retrieval"):
      raise ConfigError(f"config.evals.{name}.ks: only the retrieval evaluators (retrieval, "
                        "official, negbench_retrieval) take ks")
    overridden = {"eval_split", "test_split"} & set(eval_config.get("data", {}))
    if overridden:
      raise ConfigError(f"config.evals.{name}.data.{sorted(overridden)[0]}: an evaluator reads the "
                        f"run's splits; give it a fixed split with config.evals.{name}.split")
    if eval_config.get("every_steps") and (reads_own_data(eval_config) or not val_split):
      why = ("reads test data of its own, scored once at the end" if reads_own_data(eval_config)
             else "has no validation split to read (config.data.eval_split is empty)")
      raise ConfigError(f"config.evals.{name}.every_steps={eval_config.every_steps}: {name} {why}")
  metric = config.checkpoint.best_metric
  if metric:
    role, _, rest = metric.partition("/")
    name = rest.partition("/")[0]
    if role != VAL:
      raise ConfigError(f"config.checkpoint.best_metric={metric!r}: the best checkpoint is chosen "
                        "on validation metrics only, 'val/<eval>/<metric>' (e.g. "
                        "'val/ccneg/accuracy'); the test split is scored once, at the end")
    if name not in config.evals or reads_own_data(config.evals[name]) or not val_split:
      raise ConfigError(f"config.checkpoint.best_metric={metric!r} names no evaluator scored on "
                        f"the validation split; config.evals has {sorted(config.evals)}")


def eval_data_config(config: ml_collections.ConfigDict, image_size: int | None = None
                      ) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.update(worker_count=0, max_bad_fraction=1.0)
  if image_size is not None:  # a loaded model decides its input size
    data.image_size = image_size
  return data


def build_model(config: ml_collections.ConfigDict):
  dtype = DTYPES[config.model.dtype]
  if config.model.init_from:
    model = load_pretrained(config.model.init_from, config.model.get("init_arch", ""),
                            dtype=dtype)
  else:
    model = create_clip(get_preset(config.model.preset), seed=config.seed, dtype=dtype)
  return set_remat(model, config.model.remat)


def init_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, train_step.TrainState]:
  """(graphdef, TrainState) of a fresh run of `config`, unplaced (traceable by jax.eval_shape)."""
  model = build_model(config)
  if model.config.vision.image_size != config.data.image_size:
    raise ValueError(f"config.data.image_size={config.data.image_size} but the model takes "
                     f"{model.config.vision.image_size}x{model.config.vision.image_size} images")
  trainee = train_step.Trainee(model, objective.Objective(config.loss, model.config.projection_dim))
  return train_step.create_train_state(trainee, tx, tuple(config.optim.freeze))


def build_train_state(config: ml_collections.ConfigDict, mesh):
  """(graphdef, sharded TrainState, its shardings, optimizer) for a fresh run of `config`."""
  tx = optim.make_optimizer(config.optim, config.total_steps)
  graphdef, state = init_train_state(config, tx)
  state, state_shardings = train_step.shard_train_state(state, mesh, tuple(config.mesh.rules))
  return graphdef, state, state_shardings, tx


def make_checkpointer(config: ml_collections.ConfigDict, workdir: str) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(
      storage.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best, best_metric=config.checkpoint.best_metric or None,
      best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save)


def make_mesh(config: ml_collections.ConfigDict):
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices > 0 else None
  return sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Trained:
  """Trains per `config` in `workdir` (resuming if it holds checkpoints); returns the trained
  model with its final evaluation. Rerunning a finished run evaluates nothing again: it returns
  the model and the results it saved. The main process holds `workdir/.lock` meanwhile
  (`run_lock`: a second trainer on the workdir is refused)."""
  mesh = make_mesh(config)
  validate_config(config, mesh.size)  # before the lock: a bad value creates nothing
  is_main = jax.process_index() == 0
  with run_lock.RunLock(workdir) if is_main else contextlib.nullcontext():
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, mesh) -> Trained:
  # ---- mesh ----------------------------------------------------------------------------------
  is_main = jax.process_index() == 0
  logger.info("devices: %d (%d local) on %d process(es); mesh %s", jax.device_count(),
              jax.local_device_count(), jax.process_count(), dict(mesh.shape))
  if checkpointing.saved_steps(storage.join(workdir, "checkpoints")):
    check_resume_config(config, workdir)  # before anything is built or written

  # ---- data, model and optimizer ----------------------------------------------------------------
  train_source = data_lib.make_source(config.data, split=config.data.train_split)
  val_evaluators, test_evaluators = build_evaluators(config, eval_data_config(config))
  graphdef, state, state_shardings, tx = build_train_state(config, mesh)
  if config.data.cache_image_embeddings:  # the frozen tower's embeddings, computed once
    train_source = image_embedding_cache.prepare(config, workdir, graphdef, state, train_source)
  pipeline = input_pipeline.make_pipeline(train_source, config.data, train=True, mesh=mesh)

  # ---- restore ---------------------------------------------------------------------------------
  checkpointer = make_checkpointer(config, workdir)
  try:  # until the loop's own try: a checkpoint that is refused leaves no worker or thread behind
    if checkpointer.all_steps():
      state, data_state, start = restore_latest(checkpointer, state, config, workdir,
                                                set_aside=True)
      restore_pipeline(pipeline, data_state, start, checkpointer.directory)
      logger.info("resumed from step %d in %s", start, checkpointer.directory)
    # Only now, with the config checked and any checkpoint restored into it: a refused config
    # never replaces the run's own.
    if is_main:
      checkpointing.write_config(workdir, config.to_json_best_effort(indent=2))
  except BaseException:
    pipeline.close()
    checkpointer.close()
    raise
  start = int(state.step)
  finished = start >= config.total_steps
  saved_results = read_results(workdir) if finished else {}
  if saved_results.get("step") == start:
    checkpointer.close()
    pipeline.close()
    logger.info("%s already finished at step %d; its results are in %s", workdir, start,
                storage.join(workdir, RESULTS_FILE))
    model = nnx_merge(graphdef, state).model
    metrics = {k: v for k, v in saved_results.items() if k != "step"}
    if is_main:
      print(results_table(metrics, title=f"{config.loss.name} after {start} steps (saved)"))
      if config.export_hf and not _exported(workdir):
        export_hf(model, config, workdir, saved_results)
    return Trained(model, metrics, start, workdir)

  # ---- step ------------------------------------------------------------------------------------
  step_fn = train_step.make_train_step(graphdef, tx, mesh=mesh, state_shardings=state_shardings,
                                       grad_accum_steps=config.optim.grad_accum_steps,
                                       normalization=config.data.normalization)

  def current_model():
    return nnx_merge(graphdef, state).model

  # Jitted once for the run; each round passes the current (params, rest) straight in.
  encoder = Encoder(graphdef, current_model().config, model_of=lambda trainee: trainee.model)

  def run_evals(step: int, names, test: bool = False) -> dict[str, float]:
    """Validation metrics of `names` (and with `test`, the test round) from one round."""
    round_ = EvalRound(encoder, (state.params, state.rest), mesh)
    results = evaluate_model({n: val_evaluators[n] for n in names}, round_, workdir, VAL)
    if test:
      results.update(evaluate_model(test_evaluators, round_, workdir, TEST))
    if results:
      writer.write(step, results)
    return results

  # ---- loop ------------------------------------------------------------------------------------
  # From step 0 too: lines of an attempt that died before its first checkpoint are dropped.
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start, redo_evaluations=finished)
  # SIGTERM/SIGINT stop the loop at one step on every process (JAX's preemption sync point).
  stop = preemption.StopRequest(start).install()
  # A bar on a terminal; in a log file (SLURM, TPU workers) one line per log step.
  progress = Progress(config.total_steps, "train", unit="steps", initial=start,
                      bar=None if config.progress_bar else False, enabled=is_main)
  schedule = optim.learning_rate_schedule(config.optim, config.total_steps)
  step, eval_results = start, {}
  last_log = (start, time.perf_counter())
  try:
    while step < config.total_steps and not stop.reached(step):
      # While step k runs, the host prepares and transfers batch k+1 (grain workers prefetch
      # further ahead); a device->host read in the step's dispatch would serialise the two.
      batch = next(pipeline)
      with jax.transfer_guard_device_to_host("disallow"):
        state, metrics = step_fn(state, input_pipeline.device_arrays(batch))
      step += 1
      progress.update(1)
      if step % config.log_every_steps == 0 or step == config.total_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        steps_per_s = (step - last_log[0]) / max(now - last_log[1], 1e-9)
        last_log = (step, now)
        metrics.update(steps_per_s=steps_per_s,
                       samples_per_s=steps_per_s * config.data.batch_size,
                       learning_rate=float(schedule(step)), input_skipped=float(pipeline.skipped))
        writer.write(step, metrics)
        train_step.check_skips(metrics, config.max_consecutive_skips)
        progress.log(loss=metrics["loss"], samples_per_s=metrics["samples_per_s"], now=True)
      due = [n for n in val_evaluators if config.evals[n].get("every_steps")
             and step % config.evals[n].every_steps == 0 and step < config.total_steps]
      eval_results = run_evals(step, due) if due else {}
      if step % config.checkpoint.every_steps == 0 and step < config.total_steps:
        writer.sync()  # a gs:// metrics.jsonl: every line up to the checkpoint is in the bucket
        checkpointer.save(step, state, pipeline.get_state(), _best_metrics(config, eval_results))
    if step < config.total_steps:
      logger.warning("%s: saving a checkpoint at step %d and stopping",
                     signal.Signals(stop.signal).name, step)
      saving = time.perf_counter()
      writer.sync()
      if checkpointer.latest_step() != step:  # not already saved as a checkpoint step
        checkpointer.save(step, state, pipeline.get_state())
      checkpointer.wait()
      # What a preemption notice must leave room for (a spot VM's is 30 s on Google Cloud).
      logger.warning("checkpoint %d is on disk after %.1f s", step, time.perf_counter() - saving)
      return Trained(current_model(), {}, step, workdir)

    # ---- end ---------------------------------------------------------------------------------
    eval_results = run_evals(step, list(val_evaluators), test=True)
    if checkpointer.latest_step() != step:
      checkpointer.save(step, state, pipeline.get_state(), _best_metrics(config, eval_results))
    checkpointer.wait()
    progress.close()
    if is_main:
      if eval_results:
        write_results(workdir, step, eval_results, f"{config.loss.name} after {step} steps")
      if config.export_hf:
        export_hf(current_model(), config, workdir, {"step": step, **eval_results})
    return Trained(current_model(), eval_results, step, workdir)
  finally:
    stop.restore()
    progress.close()
    pipeline.close()
    writer.close()
    checkpointer.close()


def build_evaluators(config: ml_collections.ConfigDict, data: ml_collections.ConfigDict, *,
                     validation: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
  """({name: evaluator of the validation split}, {name: evaluator of the test split, or of data
  of its own}). Built before training, so a missing file fails before the first step; an
  evaluator whose own data the config leaves empty is skipped with one line naming the field.
  `validation=False` (the test round alone, `evaluate`) builds no validation evaluator: each
  would read its data and cut its split for nothing."""
  val, test = {}, {}
  for name, eval_config in config.evals.items():
    if reads_own_data(eval_config):
      field = missing_data(name, eval_config, data)
      if field:
        logger.warning("evals.%s (%s) skipped: %s is not set", name, eval_config.type, field)
      else:
        test[name] = make_evaluator(eval_config, data, name=name)
      continue
    if validation and config.data.eval_split:
      val[name] = make_evaluator(eval_config, data, config.data.eval_split, name=name)
    if config.data.test_split:
      test[name] = make_evaluator(eval_config, data, config.data.test_split, name=name)
  return val, test


def evaluate_model(evaluators: dict[str, Any], round_: EvalRound, workdir: str, prefix: str
                   ) -> dict[str, float]:
  """Runs evaluators in one round (parameters bound to the run's encoder):
  {"<prefix>/<name>/<metric>": value}; evaluators reading the same data share the round's one
  pass over it. Per-item similarities an evaluator keeps (ccneg) in a test round are saved as
  workdir/similarities_<name>.npz for the report's histograms."""
  results = {}
  for name, evaluator in evaluators.items():
    for key, value in evaluator.evaluate(round_):
      results[f"{prefix}/{name}/{key}"] = float(value)
    similarities = getattr(evaluator, "similarities", None)
    if similarities and prefix == TEST and jax.process_index() == 0:
      with atomic_io.open_replacing(storage.join(workdir, f"similarities_{name}.npz"), "wb") as f:
        np.savez(f, **similarities)
  return results


def write_results(workdir: str, step: int, results: dict[str, float], title: str) -> None:
  """workdir/results.json (what the report reads; written atomically) and the table on stdout."""
  atomic_io.write_json(storage.join(workdir, RESULTS_FILE),
                       {"step": step, **{k: json_number(v) for k, v in results.items()}},
                       indent=2, sort_keys=True)
  print(results_table(results, title=title))


def read_results(workdir: str) -> dict[str, float]:
  """workdir/results.json, or {} when there is none (yet)."""
  try:
    saved = json.loads(storage.read_text(storage.join(workdir, RESULTS_FILE)))
  except (FileNotFoundError, json.JSONDecodeError):
    return {}
  return {k: from_json_number(v) for k, v in saved.items()}


def push_to_hub(config: ml_collections.ConfigDict, workdir: str, repo_id: str) -> str:
  """Uploads workdir/hf to the Hub repo `repo_id` (created private unless config.hub.private is
  off), its card's usage snippets naming the repo; returns the commit URL."""
  folder = storage.join(workdir, "hf")
  results = read_results(workdir)
  model_card.write_model_card(folder, config.to_dict(), results or None,
                              license=config.hub.license, repo_id=repo_id)
  return model_card.push_to_hub(folder, repo_id, private=config.hub.private)


def _exported(workdir: str) -> bool:
  folder = storage.join(workdir, "hf")
  return any(storage.isfile(storage.join(folder, name))
             for name in (hf.WEIGHTS_FILE, hf.WEIGHTS_INDEX_FILE))


def export_hf(model: CLIP, config: ml_collections.ConfigDict, workdir: str,
              results: dict[str, float]) -> str:
  """workdir/hf: the Hugging Face CLIP folder with its model card (README.md)."""
  folder = hf.save_hf_clip(model, storage.join(workdir, "hf"))
  model_card.write_model_card(folder, config.to_dict(), results, license=config.hub.license)
  return folder


def nnx_merge(graphdef, state: train_step.TrainState) -> train_step.Trainee:
  return nnx.merge(graphdef, state.params, state.rest)


def _best_metrics(config: ml_collections.ConfigDict, eval_results: dict[str, float]):
  metric = config.checkpoint.best_metric
  return {metric: eval_results[metric]} if metric and metric in eval_results else None


# ----------------------------------------------------------------------------------------------
# --mode=eval and --mode=export.
# ----------------------------------------------------------------------------------------------
def restore_model(config: ml_collections.ConfigDict, workdir: str, mesh):
  """The model of the latest checkpoint in `workdir`, else `config.model.init_from`'s."""
  checkpointer = make_checkpointer(config, workdir)
  try:
    step = checkpointer.latest_step()
    if step is None:
      if not config.model.init_from:
        raise FileNotFoundError(f"{workdir} holds no checkpoint and config.model.init_from is empty")
      return build_model(config), 0
    graphdef, state, _, _ = build_train_state(config, mesh)
    state, _, step = restore_latest(checkpointer, state, config, workdir, set_aside=False)
    return nnx_merge(graphdef, state).model, step
  finally:
    checkpointer.close()


# The config sections that decide the train state's tree; a checkpoint restores only into the
# tree it was saved from.
STATE_SECTIONS = ("model", "loss", "optim")


# Where checkpoints that fail to restore go (workdir/<this>/<step>), out of orbax's sight.
UNRESTORABLE_FOLDER = "unrestorable_checkpoints"


class RestoreError(RuntimeError):
  """No checkpoint of a run restores: the message names each one tried and why it failed."""


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume `workdir` with a config that changes the run (the model, the loss, the
  optimizer or the batches; see `config.resume_changes`), as one ConfigError naming the fields.
  Checkpoints without a config.json beside them (copied without it) resume as they are."""
  try:
    saved = config_lib.run_config(workdir)
  except FileNotFoundError:
    return
  except ValueError as e:
    raise ConfigError(str(e)) from None
  changes = config_lib.resume_changes(saved, config)
  if changes:
    raise ConfigError(
        f"{workdir} holds a run whose config.json differs in {'; '.join(changes[:8])}"
        f"{f' (and {len(changes) - 8} more)' if len(changes) > 8 else ''}: resuming would change "
        "the run. Leave out --config and the changed flags to resume it as it was, use a new "
        "--workdir, or name the fields in --config.resume_changes=<field>,... to change them "
        "deliberately.")


def restore_latest(checkpointer: checkpointing.Checkpointer, state: train_step.TrainState,
                   config: ml_collections.ConfigDict, workdir: str, *, set_aside: bool
                   ) -> tuple[train_step.TrainState, dict[str, Any], int]:
  """(train state, input iterator state, step) of the newest checkpoint that restores into
  `state`'s shapes and shardings with the values saved. Each newer one that does not (a file
  missing or corrupt, a stray empty folder, bits flipped: other values than its fingerprint's,
  or NaN/Inf) is reported in one line and, with `set_aside` (a run that will save those steps
  again), moved to workdir/unrestorable_checkpoints/. None restoring is one RestoreError; a
  checkpoint of another train state names the config fields that differ (orbax's own error is a
  dump of both trees)."""
  failures = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      # Checked against the fingerprint saved with it, and for NaN/Inf (CorruptCheckpointError).
      restored, data_state = checkpointer.restore(step, checkpointing.abstract_like(state))
    except Exception as e:  # pylint: disable=broad-exception-caught
      # orbax and tensorstore raise many types for a bad checkpoint; each is reported and the
      # previous checkpoint tried, and none restoring raises below with every reason.
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      failures.append((step, reason))
      logger.warning("checkpoint %d in %s does not restore (%s); trying the one before", step,
                     checkpointer.directory, reason)
      continue
    if set_aside and jax.process_index() == 0:
      for failed, _ in failures:
        where = checkpointer.set_aside(failed, storage.join(workdir, UNRESTORABLE_FOLDER))
        logger.warning("checkpoint %d moved to %s", failed, where)
    if set_aside and failures:
      _sync_processes("set_aside")
      if jax.process_index() != 0:
        checkpointer.reload()
    return restored, data_state, step
  raise RestoreError(_restore_failure(config, workdir, checkpointer.directory, failures))


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def restore_pipeline(pipeline, data_state: dict[str, Any], step: int, directory: str) -> None:
  """Puts the input pipeline where checkpoint `step` left it; a state of another pipeline (other
  `data.worker_count`, say, accepted by `resume_changes`) is one ConfigError, not a KeyError."""
  try:
    pipeline.set_state(data_state)
  except (KeyError, ValueError, TypeError, IndexError) as e:
    raise ConfigError(
        f"{directory}: the input pipeline's position saved at step {step} does not fit this "
        f"config's pipeline ({type(e).__name__}: {e}); config.data.worker_count and the data "
        "fields must be the run's to resume it") from None


def _restore_failure(config: ml_collections.ConfigDict, workdir: str, directory: str,
                     failures: list[tuple[int, str]]) -> str:
  """One message for a run none of whose checkpoints restores: the config fields that differ from
  the run's own config.json when some do (the usual cause), and each checkpoint's reason."""
  tried = "; ".join(f"step {step}: {reason}" for step, reason in failures[:4])
  where = f"{directory}: no checkpoint restores into this config's train state ({tried})"
  try:
    saved = config_lib.run_config(workdir)
  except (OSError, ValueError):
    return where
  differences = [change for field, change in config_lib.changed_fields(saved, config).items()
                 if field.split(".")[0] in STATE_SECTIONS]
  if not differences:
    return where
  return (f"{where}; the config differs from the run's config.json in " + "; ".join(differences[:8])
          + ". Leave out --config to use the run's own config (flags still override it).")


def evaluate(config: ml_collections.ConfigDict, workdir: str, results_dir: str | None = None
             ) -> dict[str, float]:
  """The test round of the config's evaluators (config.data.test_split, and evaluators reading
  data of their own) on the latest checkpoint in `workdir` (or init_from); writes results.json
  (and the report's per-item cosines) to `results_dir`, by default `workdir`."""
  mesh = make_mesh(config)
  validate_config(config, mesh.size)
  if not config.data.test_split:
    raise ValueError("config.data.test_split is empty: --mode=eval scores the test split")
  results_dir = results_dir or workdir
  model, step = restore_model(config, workdir, mesh)
  _, evaluators = build_evaluators(config, eval_data_config(config, model.config.vision.image_size),
                                   validation=False)
  results = evaluate_model(evaluators, EvalRound.of_model(model, mesh), results_dir, TEST)
  if jax.process_index() == 0:
    write_results(results_dir, step, results, f"evaluation of step {step}")
  return results


def export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Writes the latest checkpoint's model as a Hugging Face CLIP folder with its model card
  (workdir/hf; the card's results are workdir/results.json's when they are of that step) and an
  open_clip folder (workdir/open_clip); returns {format: folder}."""
  model, step = restore_model(config, workdir, make_mesh(config))
  results = read_results(workdir)
  if results.get("step") != step:
    results = {"step": step}
  return {"hf": export_hf(model, config, workdir, results),
          "open_clip": openclip.save_openclip(model, storage.join(workdir, "open_clip"),
                                              normalization=config.data.normalization,
                                              resize=config.data.resize)}
