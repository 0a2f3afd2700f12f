"""Config files: each loads (full and runlocal), validates, and switches loss with one override."""

import csv
import json
import importlib.util
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from semclip_jax import config as config_lib
from semclip_jax import objective, train
from semclip_jax.data import sources
from semclip_jax.evaluators import sugarcrepe_pp

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
NAMES = ["shapes", "ccneg", "sugarcrepe_pp", "cc3m"]


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert "python -m semclip_jax.main --config=configs/" in module.__doc__  # launch command
  return module.get_config(arg)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_and_validates(name, arg):
  config = load(name, arg)
  train.validate_config(config, jax.device_count())
  assert set(config_lib.base_config().keys()) == set(config.keys())
  if arg == "runlocal":
    assert config.model.preset == "tiny" and not config.model.init_from and config.total_steps <= 20
  with pytest.raises(ValueError, match="unknown config argument"):
    load(name, "huge")


def test_paper_settings():
  config = load("ccneg")
  assert config.model.init_from.startswith("laion/CLIP-ViT-B-32")
  assert (config.optim.learning_rate, config.optim.weight_decay, config.optim.warmup_steps) == (5e-5, 0.2, 50)
  assert config.optim.freeze == (r"^model\.vision\.",) and config.optim.grad_accum_steps == 2
  assert config.data.batch_size == 512 and config.model.dtype == "bfloat16"


@pytest.mark.parametrize("loss", objective.LOSS_NAMES)
def test_every_ablation_is_one_override(loss):
  config = load("shapes")
  assert config.loss.name == "semclip"
  config.loss.name = loss
  train.validate_config(config, 8)
  built = objective.Objective(config.loss, 32)
  assert built.name == loss  # the override reaches the objective, not just the config
  # Each name's weights are pinned in tests/test_objective.py; here: the family it falls in.
  assert hasattr(built, "weights") == (loss in objective.SEMCLIP_FAMILY)
  assert hasattr(built, "logit_bias") == (loss == "siglip")


def test_unknown_loss_name_is_refused_before_compiling():
  config = load("shapes")
  config.loss.name = "semclipp"
  with pytest.raises(ValueError, match="config.loss.name='semclipp' is not one of"):
    train.validate_config(config, 8)


@pytest.mark.parametrize("field,value,message", [
    ("checkpoint.keep", 0, "config.checkpoint.keep=0 must be a positive integer"),  # deleted all
    ("checkpoint.every_steps", 0, "config.checkpoint.every_steps=0 must be a positive integer"),
    ("log_every_steps", 0, "config.log_every_steps=0 must be a positive integer"),
    ("data.batch_size", 0, "config.data.batch_size=0 must be a positive integer"),
    ("data.batch_size", -8, "config.data.batch_size=-8 must be a positive integer"),
    ("data.image_size", 0, "config.data.image_size=0 must be a positive integer"),
    ("optim.grad_accum_steps", 0, "config.optim.grad_accum_steps=0 must be a positive integer"),
    ("checkpoint.keep_best", -1, "config.checkpoint.keep_best=-1 must be 0 or more"),
    ("data.kind", "parquet", "config.data.kind='parquet' is not one of"),
    ("evals.ccneg.every_steps", -5, "config.evals.ccneg.every_steps=-5 must be 0"),
])
def test_values_that_would_fail_later_are_one_config_error(field, value, message):
  config = config_lib.apply_overrides(load("shapes", "runlocal"), {field: value})
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    train.validate_config(config, 8)


def test_a_resume_may_change_only_what_leaves_the_training_alone(tmp_path):
  saved = load("shapes", "runlocal")
  free = config_lib.apply_overrides(load("shapes", "runlocal"), {
      "log_every_steps": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 9, "export_hf": False,
      "evals.ccneg.every_steps": 4, "mesh.data": 2, "progress_bar": False,
      "data.shard_cache_dir": "/tmp/x"})
  assert config_lib.resume_changes(saved, free) == []
  changed = config_lib.apply_overrides(load("shapes", "runlocal"), {
      "loss.name": "clip", "data.worker_count": 2, "optim.learning_rate": 0.01,
      "total_steps": 50, "model.preset": "B/32", "seed": 1})
  assert config_lib.resume_changes(saved, changed) == [
      "data.worker_count: run 0, here 2", "loss.name: run 'semclip', here 'clip'",
      "model.preset: run 'tiny', here 'B/32'", "optim.learning_rate: run 0.001, here 0.01",
      "seed: run 0, here 1", "total_steps: run 12, here 50"]
  # Named fields (or prefixes ending in ".") are deliberate changes.
  changed.resume_changes = "optim.learning_rate, total_steps,loss."
  assert config_lib.resume_changes(saved, changed) == [
      "data.worker_count: run 0, here 2", "model.preset: run 'tiny', here 'B/32'",
      "seed: run 0, here 1"]
  # A run's config.json (lists for tuples) compares equal to the config it was written from.
  (tmp_path / "config.json").write_text(saved.to_json_best_effort(indent=2))
  assert config_lib.resume_changes(config_lib.run_config(str(tmp_path)), saved) == []


def test_ccneg_runlocal_trains_on_a_csv(tmp_path, caplog):
  rng = np.random.default_rng(0)
  (tmp_path / "images").mkdir()
  with open(tmp_path / "ccneg.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image_number", "caption", "paraphrased", "negation"])
    for i in range(60):
      Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
          tmp_path / "images" / f"{i:09d}.jpg")
      writer.writerow([i, f"a dog number {i}", f"dog no. {i}", f"not a dog number {i}"])
  config = load("ccneg", "runlocal")
  config.update(progress_bar=False, export_hf=False)
  config.data.update(path=str(tmp_path / "ccneg.csv"), image_dir=str(tmp_path / "images"))
  assert config.data.ccneg_official  # the release's split; 60 rows are too few for its 40,000
  config.data.ccneg_official = False
  config.mesh.num_devices = 1
  results = train.train_and_evaluate(config, str(tmp_path / "work")).metrics
  assert results["test/ccneg/items"] == 6  # the image-level test split: 10% of 60 images
  assert results["val/ccneg/items"] == 6
  assert 0.0 <= results["test/ccneg/accuracy"] <= 1.0
  # The cross-benchmark and zero-shot wait for their data: skipped, each with one line.
  assert not any(k.startswith(("test/zeroshot", "test/sugarcrepe_pp")) for k in results)
  skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert sorted(skipped) == [
      "evals.sugarcrepe_pp (sugarcrepe_pp) skipped: config.evals.sugarcrepe_pp.data.image_dir is "
      "not set", "evals.zeroshot (zeroshot) skipped: config.evals.zeroshot.data_dir is not set"]


@pytest.mark.parametrize("field,value,message", [
    ("checkpoint.best_metric", "test/ccneg/accuracy",
     r"config\.checkpoint\.best_metric='test/ccneg/accuracy': .* validation metrics only"),
    ("checkpoint.best_metric", "ccneg/accuracy", r"config\.checkpoint\.best_metric='ccneg/"),
    ("checkpoint.best_metric", "val/zeroshot/mean/delta", r"names no evaluator scored on the val"),
    ("data.eval_split", "test", r"config\.data\.eval_split='test' is also config\.data\.test_split"),
    ("evals.zeroshot.every_steps", 250, r"config\.evals\.zeroshot\.every_steps=250: .* test data"),
    ("evals.ccneg.data", {"eval_split": "test"}, r"config\.evals\.ccneg\.data\.eval_split"),
])
def test_selection_on_the_test_split_is_refused_before_compiling(field, value, message):
  config = load("ccneg")
  train.validate_config(config, 8)
  assert config.checkpoint.best_metric == "val/ccneg/accuracy"
  *sections, key = field.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[key] = value
  with pytest.raises(ValueError, match=message):
    train.validate_config(config, 8)


@pytest.mark.parametrize("name", ["ccneg", "sugarcrepe_pp"])
def test_paper_compat_is_one_argument_and_each_part_a_field(name):
  ours, compat = load(name), load(name, "paper_compat")
  parts = {"loss.paper_compat": True, "optim.decay_all": True, "data.resize": "squash",
           "data.normalization": "imagenet", "data.split_by": "rows", "data.split_seed": 42,
           "data.ccneg_official": False, "data.jpeg_draft": False}
  get = lambda c, path: c[path.split(".")[0]][path.split(".")[1]]
  for path, value in parts.items():
    assert get(compat, path) == value, path
    assert get(ours, path) != value or (path, name) == ("data.ccneg_official", "sugarcrepe_pp")
  assert compat.evals.official.type == "official" and tuple(compat.evals.official.ks) == (1, 3, 5)
  assert tuple(compat.evals.retrieval.ks) == (1, 3, 5) and "official" not in ours.evals
  # Any part switches back on its own; the others stay.
  compat.data.split_by = "image"
  assert compat.loss.paper_compat and compat.data.resize == "squash"
  train.validate_config(compat, 8)
  both = load(name, "paper_compat,runlocal")
  assert both.loss.paper_compat and both.model.preset == "tiny" and both.total_steps <= 20


def test_ccneg_config_scores_zero_shot_and_all_of_sugarcrepe_pp_as_test_data(tmp_path):
  config = load("ccneg")
  with open(sources.SUGARCREPE_PP_CSV, newline="", encoding="utf-8") as f:
    names = list(dict.fromkeys(row["filename"] for row in csv.DictReader(f)))
  for name in names[:sugarcrepe_pp.IMAGES_CHECKED]:  # the images looked for up front
    (tmp_path / name).write_bytes(b"")
  config.evals.sugarcrepe_pp.data.image_dir = str(tmp_path)
  config.evals.zeroshot.data_dir = str(tmp_path)
  config.data.update(eval_split="", test_split="")  # the run's own CC-Neg files are not needed here
  val, test = train.build_evaluators(config, train.eval_data_config(config))
  assert val == {} and sorted(test) == ["sugarcrepe_pp", "zeroshot"]
  assert len(test["sugarcrepe_pp"].source) == 4757 and test["zeroshot"].data_dir == str(tmp_path)


def test_load_config_by_name_or_file_with_its_argument_and_overrides(tmp_path, monkeypatch):
  expected = load("shapes", "runlocal")
  expected.loss.name = "clip"
  by_name = config_lib.load_config("shapes:runlocal", {"loss.name": "clip"})
  by_file = config_lib.load_config(f"{CONFIGS / 'shapes.py'}:runlocal", ["--config.loss.name=clip"])
  assert by_name.to_dict() == by_file.to_dict() == expected.to_dict()
  monkeypatch.chdir(tmp_path)  # the README's relative path, outside the checkout
  assert config_lib.load_config("configs/ccneg.py").to_dict() == load("ccneg").to_dict()
  typed = config_lib.load_config("shapes", ["data.batch_size=8", "--config.optim.freeze=('^a',)"])
  assert typed.data.batch_size == 8 and typed.optim.freeze == ("^a",)
  with pytest.raises(ValueError, match="no field 'nope'"):
    config_lib.load_config("shapes", {"loss.nope": 1})
  with pytest.raises(ValueError, match="no field 'nope'"):
    config_lib.load_config("shapes", ["--config.data.nope=1"])
  with pytest.raises(ValueError, match="batch_size=x"):
    config_lib.load_config("shapes", ["--config.data.batch_size=x"])
  with pytest.raises(FileNotFoundError, match="no packaged config of that name.*shapes"):
    config_lib.load_config("shapez")


def test_run_config_is_the_saved_config_over_todays_defaults(tmp_path):
  config = load("ccneg", "paper_compat")
  saved = json.loads(config.to_json_best_effort())
  del saved["hub"]  # a run saved before the field existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  restored = config_lib.run_config(str(tmp_path))
  assert restored.to_dict() == config.to_dict()  # tuples are tuples again
  assert restored.optim.freeze == config_lib.FREEZE_IMAGE_TOWER
  assert config_lib.load_config(f"workdir:{tmp_path}", {"loss.name": "clip"}).loss.name == "clip"
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json: not valid JSON"):
    config_lib.run_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not a training run's folder"):
    config_lib.run_config(str(tmp_path / "missing"))


def test_main_resolves_config_names_and_defaults_to_the_workdirs_own(tmp_path):
  from semclip_jax import main  # pylint: disable=import-outside-toplevel

  shapes = config_lib.config_file("shapes")
  assert main.resolve_config_flag(["main", "--config=shapes:runlocal", "--workdir=w"]) == [
      "main", f"--config={shapes}:runlocal", "--workdir=w"]
  assert main.resolve_config_flag(["main", "--config", "shapes", "--mode=eval"]) == [
      "main", f"--config={shapes}", "--mode=eval"]
  (tmp_path / "config.json").write_text("{}")
  argv = ["main", "--mode=export", f"--workdir={tmp_path}", "--config.data.batch_size=8"]
  assert main.resolve_config_flag(argv) == [
      "main", f"--config={config_lib.config_file('workdir')}:{tmp_path}", *argv[1:]]
  bare = ["main", f"--workdir={tmp_path / 'new'}"]
  assert main.resolve_config_flag(bare) == bare  # nothing to default to: main asks for --config
  with pytest.raises(FileNotFoundError, match="'nosuch'"):
    main.resolve_config_flag(["main", "--config=nosuch"])
  # --help lists every config field with its default.
  from absl import flags  # pylint: disable=import-outside-toplevel

  help_text = flags.FLAGS["config"].help
  flat = config_lib.describe_fields().splitlines()
  assert len(flat) > 60 and all(line.strip() in help_text for line in flat)
  assert "--config.loss.name='semclip'" in help_text


def test_an_unexpected_error_is_one_line_after_its_traceback(tmp_path):
  """Every failure of main ends in one line, a bug's too: its traceback above, the line last."""
  (tmp_path / "buggy.py").write_text("def get_config():\n  return {}['data']\n")
  result = subprocess.run(
      [sys.executable, "-m", "semclip_jax.main", f"--config={tmp_path / 'buggy.py'}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, check=False)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == ("python -m semclip_jax.main: error: unexpected KeyError: 'data' (its "
                       "traceback is above)"), result.stderr[-2000:]
  assert lines[-2] == "KeyError: 'data'" and "Traceback (most recent call last):" in lines
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,line", [
    ("--config.total_steps=abc", "python -m semclip_jax.main: error: flag --config.total_steps=abc: "
     "invalid literal for int() with base 10: 'abc' (--help lists every flag and config field)"),
    ("--config.data.nosuch=1", "python -m semclip_jax.main: error: --config.data.nosuch names no "
     "config field ('nosuch' is none; --help lists every field)"),
])
def test_a_bad_flag_is_one_line(tmp_path, flag, line):
  """absl's own parsing errors end in a hint line; ours end in the reason."""
  result = subprocess.run(
      [sys.executable, "-m", "semclip_jax.main", "--config=shapes", f"--workdir={tmp_path / 'run'}",
       flag], capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [line]
  assert not (tmp_path / "run").exists()
