"""The input pipeline's records/s, from source to finished batches: `--what=input`.

Decode, crop, tokenize three captions and batch (uint8 images: the train step normalises on the
device), for the built-in shapes dataset (rendered on the fly), for JPEG files on disk of CC3M/COCO
size (500x375, CSV + image folder, the paper's layout), each with the main process alone and with
grain worker processes, and for larger JPEGs (1024x768), where training's draft decoding applies,
with the main process alone, with and without it (`jpeg_draft`).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.models.model_config import get_preset


def write_jpeg_dataset(folder: str, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> str:
  """n JPEGs of CC3M/COCO-like size (smooth noise, so they compress like photos) under
  `folder/images` and their triples CSV, whose path is returned."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  rows = []
  for i in range(n):
    small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(
        os.path.join(folder, "images", f"{i:06d}.jpg"), quality=90)
    rows.append({"filename": f"{i:06d}.jpg", "caption": f"a brown dog runs on the beach number {i}",
                 "paraphrased": f"on the beach a brown dog is running, number {i}",
                 "negation": f"a brown dog does not run on the beach number {i}"})
  path = os.path.join(folder, "triples.csv")
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def records_per_second(source, *, image_size: int, batch_size: int, workers: int,
                       batches: int, tokenizer: CLIPTokenizer, jpeg_draft: bool = True) -> float:
  """Records/s of the training pipeline over `source`, timed over `batches` batches after the
  first (start-up, e.g. spawning workers, is not throughput)."""
  config = input_pipeline.default_config()
  config.update(batch_size=batch_size, image_size=image_size, worker_count=workers,
                jpeg_draft=jpeg_draft)
  pipeline = input_pipeline.make_pipeline(source, config, train=True, tokenizer=tokenizer,
                                          process_index=0, process_count=1)
  try:
    next(pipeline)
    start = time.perf_counter()
    for _ in range(batches):
      next(pipeline)
    return batches * batch_size / (time.perf_counter() - start)
  finally:
    pipeline.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The input benchmark's flags (its default image side follows the step's `--preset`)."""
  parser.add_argument("--image_size", type=int, default=None,
                      help="input benchmark's output image side (default: the preset's)")
  parser.add_argument("--input_batch_size", type=int, default=64, help="input benchmark's batch")
  parser.add_argument("--batches", type=int, default=20, help="timed batches per input measurement")
  parser.add_argument("--workers", type=int, default=2, help="grain worker processes")
  parser.add_argument("--jpeg_files", type=int, default=512, help="JPEGs written for the test")
  parser.add_argument("--large_jpeg_files", type=int, default=128,
                      help="1024x768 JPEGs written for the draft-decoding case (0: skip it)")
  parser.add_argument("--shapes_render_size", type=int, default=224,
                      help="side at which shapes are drawn before the crop")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """An "input" record per (dataset, worker count, draft decoding): 0 workers and `--workers`
  with draft decoding as training has it; the large JPEGs at 0 workers with and without it."""
  image_size = args.image_size or get_preset(args.preset).vision.image_size
  tokenizer = CLIPTokenizer()
  records = []
  with tempfile.TemporaryDirectory() as folder:
    small, large = os.path.join(folder, "500x375"), os.path.join(folder, "1024x768")
    runs = [("shapes", ShapesSource(split="train", size=None, image_size=args.shapes_render_size),
             workers, True) for workers in sorted({0, args.workers})]
    source = sources.csv_source(write_jpeg_dataset(small, args.jpeg_files),
                                os.path.join(small, "images"), split=None)
    runs += [("jpeg_500x375", source, workers, True) for workers in sorted({0, args.workers})]
    if args.large_jpeg_files:
      source = sources.csv_source(write_jpeg_dataset(large, args.large_jpeg_files, (1024, 768)),
                                  os.path.join(large, "images"), split=None)
      runs += [("jpeg_1024x768", source, 0, draft) for draft in (False, True)]
    for name, source, workers, draft in runs:
      rate = records_per_second(source, image_size=image_size, batch_size=args.input_batch_size,
                                workers=workers, batches=args.batches, tokenizer=tokenizer,
                                jpeg_draft=draft)
      records.append({"what": "input", "dataset": name, "workers": workers, "jpeg_draft": draft,
                      "image_size": image_size, "batch_size": args.input_batch_size,
                      "records_per_s": round(rate, 1)})
  return records


def relate_to_step(results: Sequence[dict[str, Any]]) -> None:
  """Adds `times_step_rate` to each "input" record when the run also timed steps: its records/s
  over the fastest step's samples/s (the rate the pipeline must keep up with). In place."""
  step_rates = [r["samples_per_s"] for r in results if r["what"] == "step"]
  if step_rates:
    for r in results:
      if r["what"] == "input":
        r["times_step_rate"] = r["records_per_s"] / max(step_rates)


def print_table(results: Sequence[dict[str, Any]]) -> None:
  for r in results:
    if r["what"] == "input":
      print(f"input  {r['dataset']:<14} workers={r['workers']}"
            + ("" if r.get("jpeg_draft", True) else " (no draft)")
            + f"  {r['records_per_s']:>8.1f} records/s"
            + (f"  ({r['times_step_rate']:.0f}× the step's consumption)"
               if "times_step_rate" in r else ""))
