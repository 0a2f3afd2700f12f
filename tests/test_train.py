"""The trainer end to end: shapes run, exact resume after SIGKILL, SIGTERM, meshes, config errors."""

import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

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
  with pytest.raises(ValueError, match=r"differs from the run's config.json in loss\.name: run "
                     r"'semclip', here 'siglip'"):
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


@pytest.mark.slow
def test_resume_after_sigkill_in_a_bucket_is_exact(tmp_path, gcs_bucket):
  """A run with --workdir=gs://... (the emulator) killed after a checkpoint, resumed, exported and
  evaluated from the bucket, against the same run uninterrupted on disk. (The resume logic is
  the same for both kinds of path; local atomic writes are tested in test_atomic_io.py, local
  restores by the SIGTERM test below.)"""
  full, run = tmp_path / "full", f"{gcs_bucket}/runs/shapes"
  subprocess.run(_command(full, total_steps=12), check=True, cwd=REPO, capture_output=True)
  process = subprocess.Popen(_command(run, total_steps=12), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300  # on an object store orbax commits a step with a marker object
  while not storage.isfile(f"{run}/checkpoints/4/commit_success.txt"):
    assert process.poll() is None, "the run ended before it could be interrupted"
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  process.kill()
  process.wait()
  assert not storage.exists(f"{run}/hf")  # really interrupted
  assert not list(REPO.glob("gs:*")) and not list(tmp_path.glob("gs:*"))
  resumed = subprocess.run(_command(run, total_steps=12), cwd=REPO, capture_output=True, env=env,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 4" in resumed.stderr

  a = safetensors.numpy.load_file(str(full / "hf" / "model.safetensors"))
  with storage.local_copy(f"{run}/hf/model.safetensors") as exported:
    b = safetensors.numpy.load_file(exported)
  assert a.keys() == b.keys()
  for key in a:
    assert np.array_equal(a[key], b[key]), key
  assert _losses(run) == _losses(full)  # every step's loss, the replayed ones included
  # The steps the killed run logged after its checkpoint were dropped when the rerun replayed
  # them: metrics.jsonl holds each step once, in order.
  assert [m["step"] for m in read_metrics(run) if "loss" in m] == list(range(1, 13))
  assert storage.glob(f"{run}/tensorboard", "events.out.tfevents.*")
  # Scored from the bucket alone: --mode=eval restores the last checkpoint and finds the run's
  # config.json there (the override adds the test split these runs trained without).
  scored = subprocess.run([sys.executable, "-m", "semclip_jax.main", f"--workdir={run}",
                           "--mode=eval", "--config.data.test_split=test"], cwd=REPO,
                          capture_output=True, env=env, text=True)
  assert scored.returncode == 0, scored.stderr[-3000:]
  results = train.read_results(run)
  assert results["step"] == 12 and 0 <= results["test/ccneg/accuracy"] <= 1


def test_a_workdir_scheme_it_cannot_open_is_one_error_before_anything_is_written(tmp_path):
  # (storage.check's cases are in test_storage.py; this is the command line's end of it.)
  result = subprocess.run(_command("s3://bucket/run"), cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "python -m semclip_jax.main: error: --workdir: 's3://bucket/run': the scheme 's3://' is "
      "not supported (local paths and gs:// are)"), result.stderr
  assert not list(tmp_path.iterdir())  # no local folder named "s3:"


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint(tmp_path):
  process = subprocess.Popen(_command(tmp_path, "--config.checkpoint.every_steps=1000"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not (tmp_path / "metrics.jsonl").exists() or len(read_metrics(tmp_path)) < 5:
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr.decode()[-2000:]
  last_logged = max(_losses(tmp_path))
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  step = checkpointer.latest_step()
  assert step is not None and last_logged <= step < 40
  state, data_state = checkpointer.restore(step)
  assert int(state["step"]) == step
  # The saved input position is exactly the batches the saved step consumed (runlocal: 16 per
  # step, one epoch is 20,000 shapes): nothing skipped, nothing read twice on resume.
  assert data_state["counts"]["epoch"] == 0
  assert data_state["counts"]["seen_in_epoch"] == 16 * step


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
