"""Score any checkpoint or pretrained CLIP, compare models side by side on the same data.

  # a training run's workdir: its config's evaluators on its latest checkpoint, test split
  python -m semclip_jax.evaluate --model=/tmp/shapes
  # any Hugging Face CLIP folder or hub id, on a triples CSV (paper layout) and its images
  python -m semclip_jax.evaluate --model=openai/clip-vit-base-patch32 --tasks=ccneg,retrieval \\
      --data_kind=csv --data_path=ccneg.csv --image_dir=images --split=test --out=/tmp/eval_openai
  # several models (labels optional; open_clip / OpenAI-layout checkpoints take @<architecture>)
  # on the same data, with one report: results.json, report.md (a column per model), PNG plots
  python -m semclip_jax.evaluate \\
      --model=ours=/tmp/run,negclip=negclip.pth@ViT-B-32-quickgelu,clip=openai/clip-vit-base-patch32 \\
      --tasks=ccneg,negbench_mcq --data_kind=csv --data_path=ccneg.csv --image_dir=images \\
      --negbench_mcq=COCO_val_mcq_llama3.1_rephrased.csv --image_root=coco/val2017 --out=/tmp/cmp
  # a run's export, with the run's data settings and one field changed; a whole CSV (--split=all)
  python -m semclip_jax.evaluate --model=/tmp/shapes/hf --config=workdir:/tmp/shapes \
      --tasks=ccneg --config.data.batch_size=128
  # the report of earlier runs or evaluations (labels optional)
  python -m semclip_jax.evaluate --report=clip=/tmp/shapes_clip,/tmp/shapes --out=/tmp/report

A model is `[LABEL=]PATH[@ARCH]`: a training workdir (its latest checkpoint), a Hugging Face
folder or hub id, or an open_clip / OpenAI-layout checkpoint (.safetensors/.pt/.pth/.bin/.ckpt or
an open_clip folder; ARCH is an open_clip architecture name or model-config JSON, inferred from
the tensor shapes when absent). LABEL names its column (default: the file or folder name).

The data and evaluators every model is scored with come from `--config` (a config file or name,
or `workdir:<run>`), else from the first training workdir named (a run is scored with its own
config.json), else from a run holding an export named (`<run>/hf`), else from the defaults; the
data flags and `--config.<field>=<value>` overrides (as `main` takes them) apply on top. Models
that are not training workdirs need `--tasks`. One model's results go to `--out`, by default the
run itself for a workdir, `<path>_eval` beside a local model and `eval_<org>--<name>` for a hub id.

A model is a hub id only by `model_card.hub_model_id`'s rule ('org/name', not starting with '.',
'/' or '~', whose 'org' is no local folder); any other name that does not exist is refused before
anything is scored. Reading a name as a hub id is said in one warning line naming the local folder
that is not there; a hub id that cannot be fetched ends the command in one line naming both. A
command that fails leaves `--out` as it found it, less the files it replaced: what it created
there (the folder itself, results, the `checkpoints/` folder a model that is not a run is loaded
through) is removed. A model with NaN or Inf weights is refused by its loader, one line naming
the file and tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from typing import Iterator, Sequence

import ml_collections

from semclip_jax import model_card, storage, train
from semclip_jax import config as config_lib
from semclip_jax.evaluators import EVALUATORS
from semclip_jax.progress import HelpFormatter
from semclip_jax.report import write_report

# Flags copied into config.data (flag -> field), and into the evaluators of a task (task -> flag
# -> field).
DATA_FLAGS = {"data_kind": "kind", "data_path": "path", "image_dir": "image_dir",
              "layout": "layout", "split": "test_split", "batch_size": "batch_size"}
TASK_FLAGS = {"negbench_mcq": {"negbench_mcq": "path", "image_root": "image_root"},
              "negbench_retrieval": {"negbench_retrieval": "path",
                                     "negbench_negated_retrieval": "negated_path",
                                     "image_root": "image_root"},
              "zeroshot": {"zeroshot_data_dir": "data_dir"}}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One `--model` entry: `[label=]path[@arch]`."""
  label: str
  path: str
  arch: str = ""

  @classmethod
  def parse(cls, text: str) -> ModelSpec:
    label, _, rest = text.rpartition("=") if "=" in text.split("@")[0] else ("", "", text)
    path, _, arch = rest.partition("@")
    if not path:
      raise ValueError(f"--model entry {text!r} names no model")
    storage.check(path, "--model")
    if not label:
      label = storage.basename(storage.normpath(path))
      label = os.path.splitext(label)[0] if storage.isfile(path) else label
    return cls(label, path, arch)

  @property
  def is_workdir(self) -> bool:
    return is_run(self.path)

  @property
  def run(self) -> str | None:
    """The training run this model is or sits in (`<run>` for `<run>` and `<run>/hf`)."""
    if self.is_workdir:
      return self.path
    parent = storage.dirname(storage.normpath(self.path))
    return parent if storage.isdir(self.path) and is_run(parent) else None

  def check_exists(self) -> None:
    """Refuses a model that is neither an existing path (local or gs://) nor a hub id, before
    anything is scored: a mistyped path among several models fails before the others run."""
    if not storage.exists(self.path) and model_card.hub_model_id(self.path) is None:
      raise FileNotFoundError(f"--model {self.path}: no such file or folder "
                              f"({model_card.HUB_ID_RULE})")

  def default_out(self) -> str:
    """Where one model's results go without --out: the run itself, `<path>_eval` beside a local
    model, `eval_<org>--<name>` in the current folder for a hub id."""
    if self.is_workdir:
      return self.path
    if storage.exists(self.path):
      stem = storage.normpath(self.path)
      return (os.path.splitext(stem)[0] if storage.isfile(stem) else stem) + "_eval"
    return "eval_" + re.sub(r"[^\w.-]+", "--", self.path.strip("/"))


def is_run(path: str) -> bool:
  """Whether `path` is a training workdir: its config.json and checkpoints."""
  return (storage.isfile(storage.join(path, config_lib.RUN_CONFIG_FILE))
          and storage.isdir(storage.join(path, "checkpoints")))


def parse_models(text: str) -> list[ModelSpec]:
  """Comma-separated specs with distinct labels (a repeated label gets -2, -3, ...)."""
  specs, seen = [], {}
  for spec in (ModelSpec.parse(part) for part in text.split(",") if part.strip()):
    seen[spec.label] = seen.get(spec.label, 0) + 1
    if seen[spec.label] > 1:
      spec = dataclasses.replace(spec, label=f"{spec.label}-{seen[spec.label]}")
    specs.append(spec)
  if not specs:
    raise ValueError("--model names no model")
  return specs


def task_evals(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """config.evals for --tasks: one evaluator per task, typed by its name, with its data flags."""
  evals = ml_collections.ConfigDict()
  for task in args.tasks.split(","):
    if task not in EVALUATORS:
      raise ValueError(f"--tasks: unknown task {task!r}; choose from {sorted(EVALUATORS)}")
    fields = {field: getattr(args, flag) for flag, field in TASK_FLAGS.get(task, {}).items()
              if getattr(args, flag) is not None}
    evals[task] = {"type": task, **fields}
  return evals


@dataclasses.dataclass(frozen=True)
class Setting:
  """What every model is scored with: the same data and evaluators for all (like for like), and
  the command line's `--config.<field>=<value>` overrides, applied to each model's config."""
  data: ml_collections.ConfigDict
  evals: ml_collections.ConfigDict
  overrides: tuple[str, ...] = ()


def shared_setting(args: argparse.Namespace, specs: Sequence[ModelSpec],
                   overrides: Sequence[str] = ()) -> Setting:
  """The data and evaluators of `--config`, else of the first run among the models (a workdir,
  else a run an export sits in), else the defaults'; with the data flags and overrides applied.
  Evaluators come from --tasks, else from a workdir's (or --config's) own config."""
  workdir = next((s.path for s in specs if s.is_workdir), None)
  run = workdir or next((s.run for s in specs if s.run), None)
  if args.config:
    base = config_lib.load_config(args.config)
  elif run:
    base = config_lib.run_config(run)
  else:
    base = config_lib.base_config()
  for flag, field in DATA_FLAGS.items():
    if getattr(args, flag) is not None:
      base.data[field] = getattr(args, flag)
  if args.data_path is not None and base.data.kind == "array_record":
    # One folder of shards is the data whichever split is scored.
    base.data.update(eval_path=args.data_path, test_path=args.data_path)
  if base.data.layout == "ccneg" and base.data.kind == "csv":
    base.data.ccneg_official = True  # CC-Neg is scored on its official 40,000-item split
  config_lib.apply_overrides(base, list(overrides))
  if args.tasks:
    evals = task_evals(args)
  elif workdir is not None or (args.config and base.evals):
    evals = base.evals
  else:
    raise ValueError("give --tasks (comma-separated, from "
                     f"{sorted(EVALUATORS)}): only a training workdir or --config brings "
                     "evaluators of its own")
  if not evals:
    raise ValueError("no evaluator to run: the config names none; give --tasks")
  return Setting(base.data, evals, tuple(overrides))


def model_config(spec: ModelSpec, setting: Setting) -> ml_collections.ConfigDict:
  """The config that scores `spec`: its own run's (model, checkpointing) or the defaults with
  init_from, with the shared data and evaluators and the overrides."""
  if spec.is_workdir:
    if spec.arch:
      raise ValueError(f"--model {spec.path}: a training workdir takes no @architecture")
    config = config_lib.run_config(spec.path)
  else:
    config = config_lib.base_config()
    config.model.init_from = spec.path
    config.model.init_arch = spec.arch
  config.data = ml_collections.ConfigDict(setting.data.to_dict())
  config.evals = ml_collections.ConfigDict(setting.evals.to_dict())
  return config_lib.apply_overrides(config, list(setting.overrides))


def score(spec: ModelSpec, setting: Setting, results_dir: str) -> None:
  """The test round of `spec` into `results_dir` (a workdir's checkpoints are read, never
  written: only its results land there, and only when `results_dir` is the workdir). A model that
  is not a run is loaded by `train.evaluate` through a checkpointer opened on `results_dir`, which
  creates `results_dir/checkpoints`: removed afterwards when it is new and empty."""
  checkpoints = storage.join(results_dir, "checkpoints")
  stray = not spec.is_workdir and not storage.exists(checkpoints)
  try:
    train.evaluate(model_config(spec, setting), spec.path if spec.is_workdir else results_dir,
                   results_dir=results_dir)
  finally:
    if stray and storage.isdir(checkpoints) and not storage.listdir(checkpoints):
      storage.rmtree(checkpoints)


def _outermost_missing(path: str) -> str | None:
  """The outermost folder that writing into `path` creates (`path` or a parent), None when
  `path` exists."""
  if storage.exists(path):
    return None
  if storage.is_remote(path):  # no folders: the prefix is all there is
    return path
  path = os.path.abspath(path)
  while not os.path.exists(os.path.dirname(path)):
    path = os.path.dirname(path)
  return path


@contextlib.contextmanager
def removing_on_failure(folder: str) -> Iterator[None]:
  """Runs the block; when it raises, removes what it created in `folder` and nothing else: the
  folder itself (with the parents made for it) when it did not exist, else the entries that were
  not there before. Files that the block replaced stay replaced."""
  created = _outermost_missing(folder)
  before = set(storage.listdir(folder)) if created is None and storage.isdir(folder) else None
  try:
    yield
  except BaseException:
    if created is not None:
      storage.rmtree(created)
    elif before is not None:
      for name in sorted(set(storage.listdir(folder)) - before):
        path = storage.join(folder, name)
        if storage.isdir(path):
          storage.rmtree(path)
        else:
          storage.remove(path)
    raise


def compare(specs: Sequence[ModelSpec], setting: Setting, out: str) -> dict[str, str]:
  """Scores every model into <out>/<label> and writes the report of them all into <out>."""
  folders = {}
  for spec in specs:
    folder = storage.join(out, spec.label)
    print(f"== {spec.label}: {spec.path}{'@' + spec.arch if spec.arch else ''}", flush=True)
    score(spec, setting, folder)
    folders[spec.label] = folder
  return write_report(folders, out)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.evaluate", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--model", help="comma-separated [LABEL=]PATH[@ARCH]: training workdirs, "
                      "Hugging Face folders or hub ids, open_clip / OpenAI-layout checkpoints")
  parser.add_argument("--tasks", help=f"comma-separated evaluators from {sorted(EVALUATORS)}")
  parser.add_argument("--report", help="comma-separated [LABEL=]FOLDER of runs or evaluations to "
                      "compare")
  parser.add_argument("--out", help="where results (or the report) go (default: see above; "
                      "comparison/ for several models, report/ for --report)")
  parser.add_argument("--config", help="config file or name (shapes, ccneg, workdir:<run>) whose "
                      "data and evaluators are used; --config.<field>=<value> overrides a field")
  parser.add_argument("--data_kind", choices=["shapes", "csv", "array_record"])
  parser.add_argument("--data_path")
  parser.add_argument("--image_dir")
  parser.add_argument("--layout")
  parser.add_argument("--split", help="the split scored as the test round: test, val, or all (every "
                      "row of the file); results are keyed test/<task>/<metric> (default: the "
                      "config's data.test_split, test)")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--negbench_mcq", help="NegBench MCQ CSV (task negbench_mcq)")
  parser.add_argument("--negbench_retrieval", help="NegBench retrieval CSV (task negbench_retrieval)")
  parser.add_argument("--negbench_negated_retrieval",
                      help="NegBench negated-query retrieval CSV (task negbench_retrieval)")
  parser.add_argument("--image_root", help="folder NegBench's image paths are resolved against "
                      "(their absolute prefix is replaced; default: the CSV's folder)")
  parser.add_argument("--zeroshot_data_dir", help="TFDS folder of the zero-shot datasets")
  args, rest = parser.parse_known_args(argv)
  overrides = [arg for arg in rest if arg.startswith("--config.")]
  if len(overrides) != len(rest):
    parser.error(f"unrecognized arguments: {' '.join(a for a in rest if a not in overrides)}")
  if bool(args.model) == bool(args.report):
    parser.error("give exactly one of --model and --report")
  try:
    if args.report:
      out = args.out or "report"
      with removing_on_failure(out):
        written = write_report(args.report.split(","), out)
    else:
      specs = parse_models(args.model)
      setting = shared_setting(args, specs, overrides)
      for spec in specs:
        spec.check_exists()
      if len(specs) > 1:
        out = args.out or "comparison"
        with removing_on_failure(out):
          written = compare(specs, setting, out)
      else:  # one model: its results alone (a run scores into its own folder, as --mode=eval)
        spec = specs[0]
        out = args.out or spec.default_out()
        with removing_on_failure(out):
          score(spec, setting, out)
        print(f"results: {storage.join(out, train.RESULTS_FILE)}")
        return 0
  except (ValueError, KeyError, OSError, train.RestoreError) as e:  # bad input: one line
    print(f"python -m semclip_jax.evaluate: error: {e}", file=sys.stderr)
    return 2
  for name, path in written.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
