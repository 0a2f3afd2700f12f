"""Score any checkpoint or Hugging Face CLIP, and compare runs side by side.

  # a training run's workdir: its config's evaluators on its latest checkpoint, test split
  python -m semclip_jax.evaluate --model=/tmp/shapes
  # any Hugging Face CLIP folder or hub id, on a triples CSV (paper layout) and its images
  python -m semclip_jax.evaluate --model=openai/clip-vit-base-patch32 --tasks=ccneg,retrieval \\
      --data_kind=csv --data_path=ccneg.csv --image_dir=images --split=test --out=/tmp/eval_openai
  # the report: results.json, report.md (one column per run) and PNG plots
  python -m semclip_jax.evaluate --report=/tmp/shapes_clip,/tmp/shapes --out=/tmp/report
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import ml_collections

from semclip_jax import checkpointing, train
from semclip_jax import config as config_lib
from semclip_jax.evaluators import EVALUATORS
from semclip_jax.report import write_report


def config_for_model(args: argparse.Namespace) -> tuple[ml_collections.ConfigDict, str]:
  """(config, workdir) to evaluate `--model`: a run folder's own config, else one built from flags."""
  if os.path.isfile(os.path.join(args.model, "config.json")) and os.path.isdir(
      os.path.join(args.model, "checkpoints")):
    config = ml_collections.ConfigDict(checkpointing.read_config_json(args.model))
    workdir = args.model
  else:
    config = config_lib.base_config()
    config.model.init_from = args.model
    workdir = args.out or "eval_" + os.path.basename(os.path.normpath(args.model))
  if args.tasks:
    config.evals = {task: {"type": task} for task in args.tasks.split(",")}
  for flag, field in (("data_kind", "kind"), ("data_path", "path"), ("image_dir", "image_dir"),
                      ("layout", "layout"), ("split", "test_split"), ("batch_size", "batch_size")):
    if getattr(args, flag) is not None:
      config.data[field] = getattr(args, flag)
  if config.data.layout == "ccneg" and config.data.kind == "csv":
    config.data.ccneg_official = True  # CC-Neg is scored on its official 40,000-item split
  if args.out:
    workdir = args.out
  return config, workdir


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", help="a training workdir, a Hugging Face CLIP folder or a hub id")
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
  args = parser.parse_args(argv)
  if bool(args.model) == bool(args.report):
    parser.error("give exactly one of --model and --report")
  if args.report:
    written = write_report(args.report.split(","), args.out or "report")
    for name, path in written.items():
      print(f"{name}: {path}")
    return 0
  config, workdir = config_for_model(args)
  train.evaluate(config, workdir)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
