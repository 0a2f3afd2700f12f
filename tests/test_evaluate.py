"""`python -m semclip_jax.evaluate`: model specs, and one comparison of an open_clip checkpoint, a
training run and a Hugging Face folder on CC-Neg-style shapes and a NegBench MCQ file."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import torch
from PIL import Image

from semclip_jax import evaluate, hf, openclip, train
from semclip_jax.evaluate import ModelSpec, parse_models
from semclip_jax.models import create_clip, get_preset
from test_model_card import StandInHub, serve
from test_openclip import TINY_OPENAI, build_openclip
from test_train import _shapes_config


def test_model_specs_take_labels_and_architectures(tmp_path):
  (tmp_path / "negclip.pth").write_bytes(b"")
  assert ModelSpec.parse(f"{tmp_path}/negclip.pth@ViT-B-32-quickgelu") == ModelSpec(
      "negclip", f"{tmp_path}/negclip.pth", "ViT-B-32-quickgelu")
  assert ModelSpec.parse("clip=openai/clip-vit-base-patch32") == ModelSpec(
      "clip", "openai/clip-vit-base-patch32")
  assert ModelSpec.parse("a=b=c.pt@arch.json") == ModelSpec("a=b", "c.pt", "arch.json")
  assert [s.label for s in parse_models("x/run,y/run,z/run")] == ["run", "run-2", "run-3"]
  with pytest.raises(ValueError, match="names no model"):
    parse_models(",")


def _negbench_mcq(folder, count=6):
  """A NegBench MCQ file (the authors' absolute paths) and its rendered images under folder."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(count):
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"{i:012d}.jpg")
    rows.append([0, f"a photo of shape {i}", f"a photo of shape {i}, but not a circle",
                 "a photo of a circle", f"a photo without shape {i}",
                 ("positive", "negative", "hybrid")[i % 3],
                 f"/data/healthy-ml/scratch/coco/val2017/{i:012d}.jpg"])
  path = folder / "COCO_val_mcq.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["correct_answer", "caption_0", "caption_1", "caption_2", "caption_3",
                     "correct_answer_template", "image_path"])
    writer.writerows(rows)
  return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A 1-step shapes run with settings of its own (batch 8, 64 test scenes) and its export."""
  run = tmp_path_factory.mktemp("tiny") / "ours"
  config = _shapes_config(total_steps=1, export_hf=True)
  config.evals = {}
  config.mesh.num_devices = 1
  config.data.update(batch_size=8, shapes_eval_size=64)
  train.train_and_evaluate(config, str(run))
  return run


def test_one_command_compares_openclip_run_and_hf_models(tmp_path, capsys, tiny_run):
  # An open_clip / OpenAI-layout checkpoint (architecture from its shapes) ...
  openclip_file = tmp_path / "negclip.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in build_openclip(TINY_OPENAI).state_dict()
                             .items()}, "epoch": 5}, openclip_file)
  # ... the same weights as a Hugging Face folder (a second loader: its column must be identical)
  hf_folder = hf.save_hf_clip(openclip.load_openclip(str(openclip_file)), str(tmp_path / "hf_clip"))
  # ... and one of our training runs.
  run = tiny_run

  images = tmp_path / "coco"
  images.mkdir()
  mcq = _negbench_mcq(images)
  out = tmp_path / "comparison"
  assert evaluate.main([
      f"--model={openclip_file},{run},clip={hf_folder}", "--tasks=ccneg,negbench_mcq",
      "--data_kind=shapes", "--batch_size=16", f"--negbench_mcq={mcq}", f"--image_root={images}",
      f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert f"table: {out / 'report.md'}" in printed
  results = json.loads((out / "results.json").read_text())
  assert set(results) == {"negclip", "ours", "clip"}
  for name, metrics in results.items():
    # The same data for every model: the run's own (its 64-item shapes test split).
    assert metrics["test/ccneg/items"] == 64, name
    assert metrics["test/negbench_mcq/items"] == 6, name
    assert 0 <= metrics["test/negbench_mcq/accuracy"] <= 1
  assert results["negclip"] == results["clip"]  # one set of weights, two loaders, same numbers
  table = (out / "report.md").read_text()
  assert "| metric | negclip | ours | clip |" in table
  assert "| test/negbench_mcq/accuracy |" in table
  assert (out / "similarities.png").is_file() and (out / "benchmarks.png").is_file()
  assert not (run / "results.json").exists()  # a compared run's own folder is left as it was


def test_bad_models_get_one_error_line(tmp_path, capsys):
  (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")
  assert evaluate.main([f"--model={tmp_path / 'weights.pt'}", "--tasks=ccneg",
                        "--data_kind=shapes", f"--out={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "weights.pt: torch.load(weights_only=True)" in err[0]
  assert evaluate.main([f"--model={tmp_path / 'x.pt'}", "--tasks=nosuch", "--data_kind=shapes"]) == 2
  assert "unknown task 'nosuch'" in capsys.readouterr().err


def _poisoned(path, name):
  """Rewrites the safetensors file `path` with a NaN in tensor `name`; returns `path`."""
  tensors = safetensors.numpy.load_file(str(path))
  tensors[name] = tensors[name].copy()
  tensors[name].flat[0] = np.nan
  safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
  return path


def test_a_failed_evaluation_leaves_only_what_was_there(tmp_path, capsys, monkeypatch):
  """A model with a NaN weight (either format) is refused in one line naming the file and tensor;
  a path that is not there is refused without a hub lookup; a failed command removes what it
  created (the default results folder and its checkpoints/) and keeps what --out held."""
  monkeypatch.chdir(tmp_path)
  model = create_clip(get_preset("tiny"))
  hf_weights = _poisoned(os.path.join(hf.save_hf_clip(model, "nan_hf"), "model.safetensors"),
                         "text_projection.weight")
  openclip_weights = _poisoned(
      os.path.join(openclip.save_openclip(model, "nan_open_clip"), openclip.WEIGHTS_FILE),
      "text_projection")
  os.mkdir("out")
  (tmp_path / "out" / "mine.txt").write_text("kept")
  os.mkdir("runs")
  before = sorted(os.listdir(tmp_path))
  flags = ["--tasks=ccneg", "--data_kind=shapes"]
  for argv, message in (
      (["--model=nan_hf"], f"{hf_weights}: tensor text_projection.weight holds 1 non-finite"),
      (["--model=nan_hf", "--out=out"], f"{hf_weights}: tensor text_projection.weight holds 1"),
      (["--model=nan_open_clip"], f"{openclip_weights}: tensor text_projection holds 1"),
      (["--model=runs/model"], "--model runs/model: no such file or folder"),
      (["--model=nope/model"], f"'nope/model': no local folder {tmp_path.resolve() / 'nope'}")):
    assert evaluate.main([*argv, *flags]) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], (argv, err)
    assert sorted(os.listdir(tmp_path)) == before, argv  # no nan_hf_eval/, eval_nope--model/
    assert os.listdir(tmp_path / "out") == ["mine.txt"], argv


def test_a_hub_id_that_cannot_be_loaded_ends_the_command_in_one_line(tmp_path):
  """`nope/model` may be a mistyped local path: the command says it reads it as a hub id, then ends
  with one line naming both readings, status 2 (offline: HF_HUB_OFFLINE, from conftest)."""
  done = subprocess.run(
      [sys.executable, "-m", "semclip_jax.evaluate", "--model=nope/model", "--tasks=ccneg",
       "--data_kind=shapes"], cwd=tmp_path, capture_output=True, text=True, check=False,
      timeout=120)
  assert done.returncode == 2, done.stderr
  *_, said, last = done.stderr.strip().splitlines()
  local = f"'nope/model': no local folder {tmp_path.resolve() / 'nope' / 'model'}"
  assert said.endswith(f"{local}; loading the Hugging Face hub model nope/model")
  assert last == (f"python -m semclip_jax.evaluate: error: {local}, and the Hugging Face hub model "
                  "nope/model could not be loaded: the hub is off (HF_HUB_OFFLINE) and the local "
                  "Hugging Face cache does not hold it")
  assert not os.listdir(tmp_path)  # no eval_nope--model/ left behind


def _triples_csv(folder, rows=12):
  rng = np.random.default_rng(1)
  (folder / "images").mkdir()
  with open(folder / "triples.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["filename", "caption", "paraphrased", "negation"])
    for i in range(rows):
      Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(folder / "images" / f"{i}.png")
      writer.writerow([f"{i}.png", f"a thing {i}", f"thing number {i}", f"no thing {i}"])
  return folder / "triples.csv"


def test_an_export_is_scored_with_its_runs_data_and_the_command_lines_overrides(
    tiny_run, tmp_path, capsys):
  run, hf_folder = tiny_run, tiny_run / "hf"
  own_out = tmp_path / "own"
  assert evaluate.main([f"--model={run}", "--tasks=ccneg", f"--out={own_out}"]) == 0
  own = json.loads((own_out / "results.json").read_text())
  assert sorted(p.name for p in own_out.iterdir()) == ["results.json", "similarities_ccneg.npz"]
  # The export sits in its run: scored on the run's data settings (64 scenes rendered as the run
  # rendered them), the same numbers; without --out, beside the export.
  assert evaluate.main([f"--model={hf_folder}", "--tasks=ccneg"]) == 0
  exported = json.loads((run / "hf_eval" / "results.json").read_text())
  # Results only: not the checkpoints/ folder the model was loaded through.
  assert sorted(p.name for p in (run / "hf_eval").iterdir()) == ["results.json",
                                                                  "similarities_ccneg.npz"]
  assert exported["test/ccneg/items"] == own["test/ccneg/items"] == 64
  assert exported["test/ccneg/accuracy"] == pytest.approx(own["test/ccneg/accuracy"], abs=1e-6)
  assert f"results: {run / 'hf_eval' / 'results.json'}" in capsys.readouterr().out
  # Any config field from the command line, as main takes them.
  assert evaluate.main([f"--model={hf_folder}", "--tasks=ccneg", f"--out={tmp_path / 'small'}",
                        "--config.data.shapes_eval_size=16"]) == 0
  assert json.loads((tmp_path / "small" / "results.json").read_text())["test/ccneg/items"] == 16
  # A whole CSV (--split=all) or its test split.
  csv_flags = [f"--model={hf_folder}", "--tasks=ccneg", "--data_kind=csv", "--layout=sugarcrepe_pp",
               f"--data_path={_triples_csv(tmp_path)}", f"--image_dir={tmp_path / 'images'}"]
  assert evaluate.main([*csv_flags, "--split=all", f"--out={tmp_path / 'all'}"]) == 0
  assert evaluate.main([*csv_flags, f"--out={tmp_path / 'test'}"]) == 0
  assert json.loads((tmp_path / "all" / "results.json").read_text())["test/ccneg/items"] == 12
  assert json.loads((tmp_path / "test" / "results.json").read_text())["test/ccneg/items"] < 12
  capsys.readouterr()
  # A model without a config of its own needs --tasks; an unknown field is one line too.
  assert evaluate.main([f"--model={hf_folder}"]) == 2
  assert "give --tasks" in capsys.readouterr().err
  assert evaluate.main([f"--model={hf_folder}", "--tasks=ccneg", "--config.data.nope=1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no field 'nope'" in err[0]


def test_export_and_push_from_the_command_line_need_no_training_flag(tiny_run, tmp_path):
  """`--mode=export` on a run with settings of its own reads its config.json (no flag repeated),
  writes the card, and `--push_to_hub` uploads the folder (to a stand-in of the Hub)."""
  run = tmp_path / "run"
  shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("hf", "hf_eval"))
  with serve(StandInHub()) as hub:
    done = subprocess.run(
        [sys.executable, "-m", "semclip_jax.main", "--mode=export", f"--workdir={run}",
         "--push_to_hub=me/tiny-semclip"], capture_output=True, text=True, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test"})
  assert done.returncode == 0, done.stderr[-2000:]
  card = (run / "hf" / "README.md").read_text()
  assert "pipeline_tag: zero-shot-image-classification" in card and "me/tiny-semclip" in card
  assert (run / "open_clip" / "open_clip_config.json").is_file()
  assert hub.repos["me/tiny-semclip"]["visibility"] == "private"
  # huggingface_hub fetches its agent-harness registry (for its user agent) once a day.
  assert set(hub.unexpected) <= {"GET /api/agent-harnesses"}
  assert hub.files["me/tiny-semclip"] == {
      p.name: p.read_bytes() for p in (run / "hf").iterdir()}
