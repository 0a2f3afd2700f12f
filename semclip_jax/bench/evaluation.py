"""`--what=eval`: the sugarcrepe_pp config's evaluators (ccneg, retrieval, sugarcrepe_pp) over two
eval rounds, as the trainer runs them.

The items are the vendored SugarCrepe++ CSV (4,757 rows over 1,542 COCO val2017 file names;
`--split` picks the config's held-out split or every row, `--max_rows` a prefix) over small
synthetic JPEGs written to a temporary folder under those names (the COCO images are not
shipped). One `Encoder` serves both rounds, as in `train.train_and_evaluate`; the second round's
parameters are fresh values of the same shapes, as a later step's are. Per round: wall time,
items scored per second (each evaluator's items, summed: the work the evaluators report), XLA
compilations, and passes over the data.

  python -m semclip_jax.bench --what=eval --eval_preset=tiny --eval_batch_size=128
  python -m semclip_jax.bench --what=eval --eval_preset=B/32 --eval_batch_size=32 \
      --eval_split=all --eval_max_rows=256

Flags carry the `eval_` prefix: the `bench` CLI holds every mode's flags on one parser.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from flax import nnx
from PIL import Image

from semclip_jax import config as config_lib
from semclip_jax import train
from semclip_jax.data import sources
from semclip_jax.evaluators import ALL, Encoder, EvalRound, make_evaluator, reads_own_data
from semclip_jax.evaluators.embed import count_compilations
from semclip_jax.models import create_clip, get_preset

CONFIG = "sugarcrepe_pp"  # the config measured: a packaged config's name, or a file


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--eval_preset", default="tiny", help="eval: model preset (tiny, B/32, ...)")
  parser.add_argument("--eval_batch_size", type=int, default=128, help="eval: batch size")
  parser.add_argument("--eval_rounds", type=int, default=2, help="eval: rounds, one encoder")
  parser.add_argument("--eval_split", default="test",
                      help="eval: the split scored (test: ~10%% of the images) or all")
  parser.add_argument("--eval_max_rows", type=int, default=0,
                      help="eval: the CSV's first rows only (0: all)")
  parser.add_argument("--eval_image_dir", default="",
                      help="eval: folder for the synthetic JPEGs (default: a temporary one)")
  parser.add_argument("--eval_config", default=CONFIG,
                      help="eval: the config (name or file) whose evals run")


def write_images(folder: str, names: Sequence[str], size: tuple[int, int] = (96, 128)) -> None:
  """One small random JPEG per name (kept if present): stand-ins for the COCO images."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in sorted(set(names)):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def load_config(args: argparse.Namespace, csv_path: str, image_dir: str
                ) -> ml_collections.ConfigDict:
  """`--eval_config`'s data and evals over `csv_path` and `image_dir`, for a random-init
  `--eval_preset` model."""
  config = config_lib.load_config(args.eval_config)
  config.data.update(path=csv_path, image_dir=image_dir, batch_size=args.eval_batch_size,
                     image_size=get_preset(args.eval_preset).vision.image_size)
  config.model.update(init_from="", preset=args.eval_preset, dtype="float32")
  config.mesh.num_devices = 0
  return config


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """One record per round: {"what": "eval", round, wall_s, items_per_s, compilations, passes,
  ...}."""
  with open(sources.SUGARCREPE_PP_CSV, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  with tempfile.TemporaryDirectory() as tmp:
    csv_path = sources.SUGARCREPE_PP_CSV
    if args.eval_max_rows:
      rows = rows[:args.eval_max_rows]
      csv_path = os.path.join(tmp, "sugarcrepe_pp.csv")
      with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    image_dir = args.eval_image_dir or os.path.join(tmp, "val2017")
    write_images(image_dir, [r["filename"] for r in rows])
    config = load_config(args, csv_path, image_dir)
    mesh = train.make_mesh(config)
    split = None if args.eval_split == ALL else args.eval_split
    evaluators = {n: make_evaluator(c, train.eval_data_config(config), split)
                  for n, c in config.evals.items() if not reads_own_data(c)}
    encoder = None
    records = []
    for index in range(args.eval_rounds):
      model = create_clip(get_preset(args.eval_preset), seed=index)  # a later step's new values
      graphdef, state = nnx.split(model)
      encoder = encoder or Encoder(graphdef, model.config)  # once for the run
      round_ = EvalRound(encoder, (state,), mesh)
      start = time.perf_counter()
      with count_compilations() as compiled:
        results = train.evaluate_model(evaluators, round_, os.path.join(tmp, "work"), train.TEST)
      wall = time.perf_counter() - start
      items = int(results[f"{train.TEST}/ccneg/items"])
      scored = items * len(evaluators)  # every evaluator scores every item of the split
      records.append({"what": "eval", "round": index + 1, "preset": args.eval_preset,
                      "batch_size": args.eval_batch_size, "split": args.eval_split,
                      "rows": len(rows),
                      "items": items, "items_scored": scored, "wall_s": round(wall, 2),
                      "items_per_s": round(scored / wall, 1), "compilations": compiled.total(),
                      "passes": round_.passes, "evaluators": ",".join(evaluators)})
  return records


def print_table(results: Sequence[dict[str, Any]]) -> None:
  """Rows of the eval records (others skipped)."""
  for r in results:
    if r["what"] == "eval":
      print(f"eval   round {r['round']}  {r['preset']} B={r['batch_size']} {r['items']} items x "
            f"{len(r['evaluators'].split(','))} evaluators  {r['wall_s']:>7.2f} s  "
            f"{r['items_per_s']:>7.1f} items/s  {r['compilations']} compilations  "
            f"{r['passes']} passes")
