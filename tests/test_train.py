"""The trainer end to end: shapes run, signals and exact resume (the soak test), refused resumes,
checkpoint fallback, meshes, config errors."""

import json
import os
import pathlib
import random
import re
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers

from semclip_jax import checkpointing, hf, openclip, report_runs, storage, train
from semclip_jax import config as config_lib
from semclip_jax.data import input_pipeline
from semclip_jax.evaluators.embed import count_compilations
from semclip_jax.metrics_writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES = REPO / "configs" / "shapes.py"


def _shapes_config(**overrides):
  sys.path.insert(0, str(REPO / "configs"))
  try:
    import shapes  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = shapes.get_config("runlocal")
  config.update(progress_bar=False, **overrides)
  return config


def _losses(workdir):
  """step -> loss, the last logged value of each step."""
  return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


@pytest.mark.slow
def test_shapes_run_end_to_end(tmp_path):
  config = _shapes_config(total_steps=40, log_every_steps=5)
  config.mesh.num_devices = 1
  config.optim.warmup_steps = 10
  config.checkpoint.update(every_steps=20, keep_best=1, best_metric="val/ccneg/accuracy")
  config.data.shapes_eval_size = 32
  for eval_config in config.evals.values():
    eval_config.every_steps = 20
  trained = train.train_and_evaluate(config, str(tmp_path))
  results = trained.metrics
  assert trained.step == 40 and trained.workdir == str(tmp_path)
  losses = _losses(tmp_path)
  assert sorted(losses) == [5, 10, 15, 20, 25, 30, 35, 40]
  curve = [losses[s] for s in sorted(losses)]
  assert np.mean(curve[-3:]) < 0.9 * np.mean(curve[:3]), curve  # batch 16: compare averages
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [20, 40]
  # TensorBoard groups training scalars under train/, beside val/ and test/.
  tags = _tensorboard_tags(tmp_path / "tensorboard")
  assert {"train/loss", "train/contrastive_loss", "val/ccneg/accuracy", "test/ccneg/accuracy"} <= tags
  assert not {tag for tag in tags if "/" not in tag}
  assert all(isinstance(m["time"], float) for m in read_metrics(tmp_path))  # wall clock
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["step"] == 40 and written == {"step": 40, **results}
  assert 0 <= results["test/ccneg/accuracy"] <= 1
  assert {"val/retrieval/t2i_recall@1_original", "test/retrieval/i2t_recall@5_paraphrase",
          "val/ccneg/accuracy"} <= set(results)
  # Validation at step 20 and at the end; the test split once, at the end. The best checkpoint
  # is chosen on the validation metric each checkpoint carries.
  evals = {m["step"]: m for m in read_metrics(tmp_path) if "val/ccneg/accuracy" in m}
  assert sorted(evals) == [20, 40]
  assert [s for s, m in evals.items() if any(k.startswith("test/") for k in m)] == [40]
  for step in (20, 40):
    saved = json.loads((tmp_path / "checkpoints" / str(step) / "metrics" / "metrics").read_text())
    assert saved == {"val/ccneg/accuracy": evals[step]["val/ccneg/accuracy"]}
  reopened = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep_best=1,
                                        best_metric="val/ccneg/accuracy")
  best = max((20, 40), key=lambda s: (evals[s]["val/ccneg/accuracy"], s))
  assert reopened.best_step() == best
  reopened.close()
  assert json.loads((tmp_path / "config.json").read_text())["loss"]["name"] == "semclip"
  # The test round's per-item cosines, for the report's histograms.
  cosines = np.load(tmp_path / "similarities_ccneg.npz")
  assert set(cosines.files) == set(report_runs.KINDS)
  assert cosines["original_negation"].shape == (32,)
  model, info = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
  assert not any(info.values())
  card = (tmp_path / "hf" / "README.md").read_text()  # the export's model card
  assert "pipeline_tag: zero-shot-image-classification" in card and "`semclip`" in card
  assert f"{results['test/ccneg/accuracy']:.4f}" in card
  # Rerunning the finished run evaluates nothing again: the same results, no new metrics line.
  lines = (tmp_path / "metrics.jsonl").read_text()
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again.metrics == results and again.step == 40
  assert (tmp_path / "metrics.jsonl").read_text() == lines
  # --mode=eval and --mode=export on the same workdir, from its own config.json, reproduce the
  # final numbers and weights.
  exported = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  test_results = {k: v for k, v in results.items() if k.startswith("test/")}
  own = config_lib.load_config(f"workdir:{tmp_path}")
  assert train.evaluate(own, str(tmp_path)) == pytest.approx(test_results, abs=1e-6)
  other = config_lib.load_config(f"workdir:{tmp_path}", {"loss.name": "siglip"})
  with pytest.raises(train.RestoreError, match=r"differs from the run's config.json in "
                     r"loss\.name: run 'semclip', here 'siglip'"):
    train.export(other, str(tmp_path))
  (tmp_path / "hf" / "model.safetensors").unlink()
  written = train.export(config, str(tmp_path))
  again = safetensors.numpy.load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert all(np.array_equal(exported[k], again[k]) for k in exported)
  # The open_clip folder beside it holds the same weights.
  from_openclip = hf.hf_state_dict(openclip.load_openclip(written["open_clip"]))
  assert all(np.array_equal(from_openclip[k], again[k]) for k in again)


def _tensorboard_tags(folder):
  """The scalar tags in the TFRecord event files under `folder` (length, crc, event, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  tags = set()
  for path in folder.glob("events.out.tfevents.*"):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      tags |= {value.tag for value in event.summary.value}
      offset += 12 + length + 4
  return tags


def _command(workdir, *extra, total_steps=40):
  return [sys.executable, "-m", "semclip_jax.main", f"--config={SHAPES}:runlocal",
          f"--workdir={workdir}", "--config.mesh.num_devices=1", "--config.progress_bar=False",
          f"--config.total_steps={total_steps}", "--config.log_every_steps=1",
          "--config.checkpoint.every_steps=4", "--config.checkpoint.keep=20",
          "--config.export_hf=True",
          # No evaluation split: these runs test training, resuming and stopping, not scores.
          "--config.data.eval_split=", "--config.data.test_split=", *extra]


def _run_until(command, pick_step, signum) -> tuple[int, str, int]:
  """Starts `command`, sends `signum` once it logs step `pick_step(resumed_from)` (the step the
  run resumed from, 0 for a fresh one) and waits for it: (exit code, stderr, signalled step)."""
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  lines, target = [], None
  try:
    for line in process.stderr:
      lines.append(line)
      resumed = re.search(r"resumed from step (\d+)", line)
      if resumed or (target is None and "train: " in line):
        target = pick_step(int(resumed.group(1)) if resumed else 0)
      if target is not None and f"train: {target}/" in line:
        process.send_signal(signum)
        break
    else:
      pytest.fail("the run ended before it was signalled:\n" + "".join(lines)[-3000:])
    lines.append(process.communicate(timeout=300)[1])
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, "".join(lines), target


@pytest.mark.slow
def test_signals_at_random_steps_in_a_bucket_resume_bitwise(tmp_path, gcs_bucket):
  """Soak: a run with --workdir=gs://... (the emulator) gets SIGTERM on a checkpoint step, SIGINT
  at a random step after the one it resumed from, and SIGKILL on the next checkpoint step (while
  it saves), then runs to the end; it ends bitwise equal to the same run uninterrupted on disk,
  metrics.jsonl holding each step once, and is scored from the bucket. (Resuming is the same
  code for local paths: test_atomic_io.py covers local writes.)"""
  total, every = 16, 4
  full, run = tmp_path / "full", f"{gcs_bucket}/runs/shapes"
  command = _command(run, total_steps=total)
  subprocess.run(_command(full, total_steps=total), check=True, cwd=REPO, capture_output=True)
  rng = random.Random(19)
  checkpoint_step = lambda resumed: (resumed // every + 1) * every
  random_step = lambda resumed: resumed + rng.randint(1, 3)
  plan = [(signal.SIGTERM, checkpoint_step), (signal.SIGINT, random_step),
          (signal.SIGKILL, checkpoint_step)]
  stopped = []
  for signum, pick_step in plan:
    code, stderr, step = _run_until(command, pick_step, signum)
    assert step < total, "the plan ran past the end"
    if signum == signal.SIGKILL:
      assert code == -signal.SIGKILL
    else:  # a clean stop: a checkpoint at the step it stopped (saved once on a checkpoint step)
      assert code == 0, stderr[-3000:]
      saved = re.search(rf"{signal.Signals(signum).name}: saving a checkpoint at step (\d+)",
                        stderr)
      assert saved and int(saved.group(1)) >= step, stderr[-3000:]
      stopped.append(int(saved.group(1)))
  assert not storage.exists(f"{run}/hf")  # never finished
  assert not list(REPO.glob("gs:*")) and not list(tmp_path.glob("gs:*"))
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step" in resumed.stderr
  # The last SIGKILL left its lock behind: the host's next trainer found its pid gone.
  assert "taking over a stale lock" in resumed.stderr and not storage.exists(f"{run}/.lock")

  a = safetensors.numpy.load_file(str(full / "hf" / "model.safetensors"))
  with storage.local_copy(f"{run}/hf/model.safetensors") as exported:
    b = safetensors.numpy.load_file(exported)
  assert a.keys() == b.keys()
  for key in a:
    assert np.array_equal(a[key], b[key]), key
  assert _losses(run) == _losses(full)  # every step's loss, the replayed ones included
  # Lines the killed runs logged after their checkpoints were dropped when the reruns replayed
  # those steps: metrics.jsonl holds each step once, in order.
  assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, total + 1))
  assert storage.glob(f"{run}/tensorboard", "events.out.tfevents.*")
  # A signal's checkpoint holds exactly the input position of its step (runlocal: 16 per step,
  # an epoch is 20,000 shapes): nothing skipped, nothing read twice on resume.
  checkpoints = checkpointing.Checkpointer(f"{run}/checkpoints", keep=20)
  try:
    for step in stopped:
      state, data_state = checkpoints.restore(step)
      assert int(state["step"]) == step
      counts = data_state["counts"]
      assert (counts["epoch"], counts["seen_in_epoch"]) == (0, 16 * step)
  finally:
    checkpoints.close()
  # Scored from the bucket alone: --mode=eval restores the last checkpoint and finds the run's
  # config.json there (the override adds the test split these runs trained without).
  scored = subprocess.run([sys.executable, "-m", "semclip_jax.main", f"--workdir={run}",
                           "--mode=eval", "--config.data.test_split=test"], cwd=REPO,
                          capture_output=True, text=True)
  assert scored.returncode == 0, scored.stderr[-3000:]
  results = train.read_results(run)
  assert results["step"] == total and 0 <= results["test/ccneg/accuracy"] <= 1


def test_a_workdir_scheme_it_cannot_open_is_one_error_before_anything_is_written(tmp_path):
  # (storage.check's cases are in test_storage.py; this is the command line's end of it.)
  result = subprocess.run(_command("s3://bucket/run"), cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "python -m semclip_jax.main: error: --workdir: 's3://bucket/run': the scheme 's3://' is "
      "not supported (local paths and gs:// are)"), result.stderr
  assert not list(tmp_path.iterdir())  # no local folder named "s3:"


def test_eval_rounds_share_one_pass_and_compile_once_per_run(tmp_path, monkeypatch):
  # Evals at step 2 and at the end, on a 4x2 mesh (parameters FSDP-sharded as the step leaves
  # them): the second round reuses the towers compiled for the first, and ccneg and retrieval
  # share one pass over the held-out shapes.
  config = _shapes_config(total_steps=4, log_every_steps=2, export_hf=False)
  config.checkpoint.every_steps = 1000
  config.mesh.update(num_devices=8, data=4, fsdp=2)
  config.data.shapes_eval_size = 24
  for eval_config in config.evals.values():
    eval_config.every_steps = 2
  assert sorted(config.evals) == ["ccneg", "retrieval"]
  pipelines, rounds = [], []
  make_pipeline, evaluate_model = input_pipeline.make_pipeline, train.evaluate_model
  monkeypatch.setattr(input_pipeline, "make_pipeline",
                      lambda *a, **k: pipelines.append(a[0]) or make_pipeline(*a, **k))

  def counted(*args, **kwargs):
    before = len(pipelines)
    with count_compilations() as compiled:
      results = evaluate_model(*args, **kwargs)
    rounds.append({"compiled": dict(compiled), "passes": len(pipelines) - before})
    return results

  monkeypatch.setattr(train, "evaluate_model", counted)
  results = train.train_and_evaluate(config, str(tmp_path)).metrics
  # Validation at step 2; at the end validation and test (one round, two splits).
  assert len(rounds) == 3 and results["val/ccneg/items"] == results["test/ccneg/items"] == 24
  assert [r["passes"] for r in rounds] == [1, 1, 1]
  assert set(rounds[0]["compiled"]) == {"jit(encode_images)", "jit(encode_texts)"}
  assert rounds[0]["compiled"]["jit(encode_images)"] == 1
  assert rounds[1]["compiled"] == rounds[2]["compiled"] == {}, "a later eval round recompiled"


@pytest.mark.parametrize("field,value,message", [
    ("loss.name", "infonce", r"config\.loss\.name='infonce'"),
    ("data.batch_size", 12, r"config\.data\.batch_size=12 .* 8 devices"),
    ("data.kind", "csv", r"config\.data\.path=''"),
])
def test_config_errors_fail_before_compiling(tmp_path, field, value, message):
  config = _shapes_config()
  section, key = field.split(".")
  config[section][key] = value
  start = time.perf_counter()
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert time.perf_counter() - start < 5  # nothing was compiled
  assert not (tmp_path / "checkpoints").exists()


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


@pytest.mark.slow
def test_a_refused_config_leaves_the_run_as_it_was_and_a_named_change_is_taken(tmp_path):
  """A resume that would change the model, the loss, the optimizer or the batches, or a bad
  value, is one ConfigError naming the fields, before anything is built or written (config.json
  included); naming them in resume_changes makes the change deliberate."""
  config = _shapes_config(total_steps=2, log_every_steps=1)
  config.mesh.num_devices = 1
  config.checkpoint.every_steps = 1
  config.data.update(eval_split="", test_split="")
  config.export_hf = False
  train.train_and_evaluate(config, str(tmp_path))
  before = _files(tmp_path)
  refused = [({"loss.name": "clip"}, "loss.name: run 'semclip', here 'clip'"),
             ({"data.worker_count": 2}, "data.worker_count: run 0, here 2"),
             ({"optim.learning_rate": 0.01, "total_steps": 3},
              "optim.learning_rate: run 0.001, here 0.01; total_steps: run 2, here 3"),
             ({"data.batch_size": 0}, "config.data.batch_size=0 must be a positive integer"),
             ({"checkpoint.keep": 0}, "config.checkpoint.keep=0 must be a positive integer")]
  for overrides, message in refused:
    changed = config_lib.apply_overrides(config_lib.load_config(f"workdir:{tmp_path}"), overrides)
    start = time.perf_counter()
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
      train.train_and_evaluate(changed, str(tmp_path))
    assert time.perf_counter() - start < 5  # nothing was compiled
    assert _files(tmp_path) == before, overrides  # config.json included
  # Named, a change is deliberate; one the saved input position cannot follow is still refused,
  # as one line (not grain's KeyError), and leaves the run as it was.
  pipeline = config_lib.apply_overrides(config_lib.load_config(f"workdir:{tmp_path}"), {
      "data.worker_count": 2, "resume_changes": "data.worker_count"})
  with pytest.raises(config_lib.ConfigError, match="the input pipeline's position saved at step "
                     "2 does not fit this config's pipeline"):
    train.train_and_evaluate(pipeline, str(tmp_path))
  assert _files(tmp_path) == before
  deliberate = config_lib.apply_overrides(config_lib.load_config(f"workdir:{tmp_path}"), {
      "seed": 1, "resume_changes": "seed"})
  assert train.train_and_evaluate(deliberate, str(tmp_path)).step == 2
  assert config_lib.run_config(str(tmp_path)).seed == 1  # the run's config is now this one
  assert sorted(_losses(tmp_path)) == [1, 2]


# orbax's restore of the checkpoint missing a file leaves a callback for its closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_checkpoint_that_does_not_restore_falls_back_to_the_one_before(tmp_path, caplog):
  """A stray empty step folder, a checkpoint missing a file and one with NaN parameters (bit
  flips) are each reported in one line and set aside, and the newest good one is restored."""
  config = _shapes_config()
  config.mesh.num_devices = 1
  config.checkpoint.keep = 10
  mesh = train.make_mesh(config)
  _, state, _, _ = train.build_train_state(config, mesh)
  at_step = lambda s: jax.device_put(jnp.asarray(s, jnp.int32), state.step.sharding)
  leaves, treedef = jax.tree.flatten(state.params)
  flipped = jax.tree.unflatten(treedef, [jnp.full_like(leaves[0], jnp.nan)] + leaves[1:])
  checkpoints = train.make_checkpointer(config, str(tmp_path))
  checkpoints.save(1, state.replace(step=at_step(1)), {"at": 1})
  checkpoints.save(2, state.replace(step=at_step(2), params=flipped), {"at": 2})
  checkpoints.save(3, state.replace(step=at_step(3)), {"at": 3})
  checkpoints.wait()
  checkpoints.close()
  folder = tmp_path / "checkpoints"
  data_file = next(p for p in sorted((folder / "3" / "state").rglob("*"))
                   if p.is_file() and p.parent.name == "d")
  data_file.unlink()
  (folder / "30").mkdir()

  checkpoints = train.make_checkpointer(config, str(tmp_path))
  try:
    assert checkpoints.all_steps() == [1, 2, 3, 30]
    with caplog.at_level("WARNING", logger="semclip_jax.train"):
      restored, data_state, step = train.restore_latest(checkpoints, state, config,
                                                         str(tmp_path), set_aside=True)
    assert (step, data_state, int(restored.step)) == (1, {"at": 1}, 1)
    for a, b in zip(jax.tree.leaves(restored.params), leaves):
      assert np.array_equal(a, b)
    reasons = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert [r.split()[1] for r in reasons] == ["30", "3", "2"]
    assert "non-finite values in params.model.logit_scale" in reasons[2], reasons[2]
    assert checkpoints.all_steps() == [1]  # a resumed run saves 2 and 3 again
    assert sorted(p.name for p in (tmp_path / "unrestorable_checkpoints").iterdir()) == [
        "2", "3", "30"]
  finally:
    checkpoints.close()

  # None restoring is one error naming each step tried and why.
  (tmp_path / "other" / "checkpoints" / "5").mkdir(parents=True)
  checkpoints = train.make_checkpointer(config, str(tmp_path / "other"))
  try:
    with pytest.raises(train.RestoreError, match=r"no checkpoint restores .*\(step 5: "):
      train.restore_latest(checkpoints, state, config, str(tmp_path / "other"), set_aside=False)
    assert (tmp_path / "other" / "checkpoints" / "5").is_dir()  # eval and export move nothing
  finally:
    checkpoints.close()


def test_a_bad_value_is_the_last_line_of_main_and_writes_nothing(tmp_path):
  result = subprocess.run(_command(tmp_path / "run", "--config.checkpoint.every_steps=0"),
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "python -m semclip_jax.main: error: config.checkpoint.every_steps=0 must be a positive "
      "integer"), result.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def _purge_steps(folder):
  """The steps of the SessionLog START events with which TensorBoard hides later steps of
  earlier event files (tensorboardX's purge_step), over every event file under `folder`."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  steps = []
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        steps.append(event.step)
      offset += 12 + length + 4
  return steps


def test_a_full_disk_is_the_last_line_and_the_rerun_logs_each_step_once(tmp_path):
  """A write refused for lack of room (here a real file size limit, RLIMIT_FSIZE, which fails
  orbax's checkpoint writes with EFBIG as a full disk does with ENOSPC) ends the output in one
  line naming the file, after orbax's threads have said what they say. The rerun, with room,
  finishes; metrics.jsonl holds each step once, the attempt's lines dropped."""
  run = tmp_path / "run"
  command = _command(run, total_steps=8)
  # The limit set in a shim that then becomes the run (exec keeps it), not in a preexec_fn: a fork
  # of this multithreaded (JAX) process may deadlock. Python ignores SIGXFSZ, so an oversized
  # write fails with EFBIG instead of killing the process.
  limited = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource."
             "RLIMIT_FSIZE, (200_000, 200_000)); os.execv(sys.executable, sys.argv[1:])", *command]
  full = subprocess.run(limited, cwd=REPO, capture_output=True, text=True, check=False)
  assert full.returncode == 1, full.stderr[-3000:]
  last = full.stderr.strip().splitlines()[-1]
  assert re.fullmatch(
      r"python -m semclip_jax\.main: error: File too large writing "
      + re.escape(str(run / "checkpoints")) + r"/4\.orbax-checkpoint-tmp/\S+: free space there "
      r"\(or raise the quota or file size limit\) and rerun the same command: training resumes "
      r"from its last complete checkpoint", last), full.stderr[-3000:]
  assert "Traceback" not in full.stderr.split("error: File too large")[-1]
  assert {m["step"] for m in read_metrics(run) if "loss" in m} >= {1, 2, 3, 4}

  subprocess.run(command, cwd=REPO, capture_output=True, check=True)
  steps = [m["step"] for m in read_metrics(run) if "loss" in m]
  assert steps == list(range(1, 9))
  assert checkpointing.saved_steps(str(run / "checkpoints")) == [4, 8]
  assert _purge_steps(run / "tensorboard")[-1] == 1  # the rerun hides the attempt's steps


def test_a_wrong_image_dir_is_the_last_line_of_main_not_a_hang(tmp_path):
  """Every image missing (image_dir names a folder, but not the images'): the run ends within
  seconds in one line naming max_bad_fraction and the first missing file. It used to look for a
  good record forever."""
  (tmp_path / "imgs").mkdir()
  with open(tmp_path / "ccneg.csv", "w", encoding="utf-8") as f:
    f.write("image_number,caption,paraphrased,negation\n")
    f.writelines(f"{i},a dog {i},dog no. {i},not a dog {i}\n" for i in range(60))
  result = subprocess.run(
      [sys.executable, "-m", "semclip_jax.main", "--config=ccneg:runlocal",
       f"--workdir={tmp_path / 'run'}", f"--config.data.path={tmp_path / 'ccneg.csv'}",
       f"--config.data.image_dir={tmp_path / 'imgs'}", "--config.data.ccneg_official=False",
       "--config.mesh.num_devices=1", "--config.progress_bar=False"],
      cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert re.fullmatch(
      r"python -m semclip_jax\.main: error: 1 bad record\(s\) in a row: more than "
      r"max_bad_fraction=0\.01 allows in epochs of \d+ records; first offenders: ccneg\.csv:\d+: "
      r"cannot read image " + re.escape(str(tmp_path / "imgs")) + r"/\d+\.jpg: No such file or "
      r"directory", result.stderr.strip().splitlines()[-1]), result.stderr[-3000:]
