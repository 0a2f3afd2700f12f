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
  # the report of earlier runs or evaluations
  python -m semclip_jax.evaluate --report=/tmp/shapes_clip,/tmp/shapes --out=/tmp/report

A model is `[LABEL=]PATH[@ARCH]`: a training workdir (its latest checkpoint), a Hugging Face
folder or hub id, or an open_clip / OpenAI-layout checkpoint (.safetensors/.pt/.pth/.bin/.ckpt or
an open_clip folder; ARCH is an open_clip architecture name or model-config JSON, inferred from
the tensor shapes when absent). LABEL names its column (default: the file or folder name).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

import ml_collections

from semclip_jax import checkpointing, train
from semclip_jax import config as config_lib
from semclip_jax.evaluators import EVALUATORS
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
    if not label:
      label = os.path.basename(os.path.normpath(path))
      label = os.path.splitext(label)[0] if os.path.isfile(path) else label
    return cls(label, path, arch)

  @property
  def is_workdir(self) -> bool:
    return (os.path.isfile(os.path.join(self.path, "config.json"))
            and os.path.isdir(os.path.join(self.path, "checkpoints")))


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


def shared_config(args: argparse.Namespace, specs: Sequence[ModelSpec]
                  ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(data, evals) every model is scored with: the first workdir's (else the defaults'), with the
  flags applied. The same data and evaluators for all: the comparison is like for like."""
  workdir = next((s for s in specs if s.is_workdir), None)
  base = (ml_collections.ConfigDict(checkpointing.read_config_json(workdir.path)) if workdir
          else config_lib.base_config())
  data = ml_collections.ConfigDict(base.data.to_dict())
  for flag, field in DATA_FLAGS.items():
    if getattr(args, flag) is not None:
      data[field] = getattr(args, flag)
  if data.layout == "ccneg" and data.kind == "csv":
    data.ccneg_official = True  # CC-Neg is scored on its official 40,000-item split
  if args.tasks:
    evals = task_evals(args)
  elif workdir is not None:
    evals = base.evals
  else:
    raise ValueError("give --tasks: the models named have no config of their own to take "
                     "evaluators from")
  return data, evals


def model_config(spec: ModelSpec, data: ml_collections.ConfigDict,
                 evals: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config that scores `spec`: its own run's (model, checkpointing) or the defaults with
  init_from, with the shared data and evaluators."""
  if spec.is_workdir:
    if spec.arch:
      raise ValueError(f"--model {spec.path}: a training workdir takes no @architecture")
    config = ml_collections.ConfigDict(checkpointing.read_config_json(spec.path))
  else:
    config = config_lib.base_config()
    config.model.init_from = spec.path
    config.model.init_arch = spec.arch
  config.data = ml_collections.ConfigDict(data.to_dict())
  config.evals = ml_collections.ConfigDict(evals.to_dict())
  return config


def score(spec: ModelSpec, data: ml_collections.ConfigDict, evals: ml_collections.ConfigDict,
          results_dir: str) -> None:
  """The test round of `spec` into `results_dir` (a workdir's checkpoints are read, never
  written: only its results land there, and only when `results_dir` is the workdir)."""
  train.evaluate(model_config(spec, data, evals), spec.path if spec.is_workdir else results_dir,
                 results_dir=results_dir)


def compare(specs: Sequence[ModelSpec], data: ml_collections.ConfigDict,
            evals: ml_collections.ConfigDict, out: str) -> dict[str, str]:
  """Scores every model into <out>/<label> and writes the report of them all into <out>."""
  folders = []
  for spec in specs:
    folder = os.path.join(out, spec.label)
    print(f"== {spec.label}: {spec.path}{'@' + spec.arch if spec.arch else ''}", flush=True)
    score(spec, data, evals, folder)
    folders.append(folder)
  return write_report(folders, out)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", help="comma-separated [LABEL=]PATH[@ARCH]: training workdirs, "
                      "Hugging Face folders or hub ids, open_clip / OpenAI-layout checkpoints")
  parser.add_argument("--tasks", help=f"comma-separated evaluators from {sorted(EVALUATORS)}")
  parser.add_argument("--report", help="comma-separated run folders to compare")
  parser.add_argument("--out", help="where results (or the report) go")
  parser.add_argument("--data_kind", choices=["shapes", "csv", "array_record"])
  parser.add_argument("--data_path")
  parser.add_argument("--image_dir")
  parser.add_argument("--layout")
  parser.add_argument("--split", help="the split scored as the test round (default test); results "
                      "are keyed test/<task>/<metric>")
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--negbench_mcq", help="NegBench MCQ CSV (task negbench_mcq)")
  parser.add_argument("--negbench_retrieval", help="NegBench retrieval CSV (task negbench_retrieval)")
  parser.add_argument("--negbench_negated_retrieval",
                      help="NegBench negated-query retrieval CSV (task negbench_retrieval)")
  parser.add_argument("--image_root", help="folder NegBench's image paths are resolved against "
                      "(their absolute prefix is replaced; default: the CSV's folder)")
  parser.add_argument("--zeroshot_data_dir", help="TFDS folder of the zero-shot datasets")
  args = parser.parse_args(argv)
  if bool(args.model) == bool(args.report):
    parser.error("give exactly one of --model and --report")
  try:
    if args.report:
      written = write_report(args.report.split(","), args.out or "report")
    else:
      specs = parse_models(args.model)
      data, evals = shared_config(args, specs)
      if len(specs) > 1:
        written = compare(specs, data, evals, args.out or "comparison")
      else:  # one model: its results alone (a run scores into its own folder, as --mode=eval)
        spec = specs[0]
        score(spec, data, evals,
              args.out or (spec.path if spec.is_workdir else f"eval_{spec.label}"))
        return 0
  except (ValueError, KeyError, OSError) as e:  # bad input: one line, not a traceback
    print(f"python -m semclip_jax.evaluate: error: {e}", file=sys.stderr)
    return 2
  for name, path in written.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
