"""Benchmarks: `python -m semclip_jax.bench --what=input`.

`input` measures the input pipeline's records/s, from source to finished batches (decode, crop,
normalise, tokenize three captions, batch), for the built-in shapes dataset (rendered on the fly)
and for JPEG files on disk (CSV + image folder, the paper's layout), each with the main process
alone and with grain worker processes. Prints a table and one JSON line per measurement.
Absolute rates depend on the machine: compare rows of one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.data.tokenizer import CLIPTokenizer


def write_jpeg_dataset(folder: str, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> str:
  """n JPEGs of CC3M/COCO-like size (smooth noise, so they compress like photos) and a CSV."""
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
                       batches: int, tokenizer: CLIPTokenizer) -> float:
  config = input_pipeline.default_config()
  config.update(batch_size=batch_size, image_size=image_size, worker_count=workers)
  pipeline = input_pipeline.make_pipeline(source, config, train=True, tokenizer=tokenizer,
                                          process_index=0, process_count=1)
  try:
    next(pipeline)  # start-up (worker spawn) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
      next(pipeline)
    return batches * batch_size / (time.perf_counter() - start)
  finally:
    pipeline.close()


def bench_input(args: argparse.Namespace) -> list[dict[str, Any]]:
  tokenizer = CLIPTokenizer()
  results = []
  with tempfile.TemporaryDirectory() as folder:
    csv_path = write_jpeg_dataset(folder, args.jpeg_files)
    datasets = {
        "shapes": ShapesSource(split="train", size=None, image_size=args.shapes_render_size),
        "jpeg_500x375": sources.csv_source(csv_path, os.path.join(folder, "images"), split=None),
    }
    for name, source in datasets.items():
      for workers in sorted({0, args.workers}):
        rate = records_per_second(source, image_size=args.image_size, batch_size=args.batch_size,
                                  workers=workers, batches=args.batches, tokenizer=tokenizer)
        results.append({"what": "input", "dataset": name, "workers": workers,
                        "image_size": args.image_size, "batch_size": args.batch_size,
                        "records_per_s": round(rate, 1)})
  return results


def machine() -> str:
  return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--what", choices=["input"], default="input")
  parser.add_argument("--image_size", type=int, default=224, help="output image side")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
  parser.add_argument("--workers", type=int, default=2, help="grain worker processes")
  parser.add_argument("--jpeg_files", type=int, default=512, help="JPEGs written for the test")
  parser.add_argument("--shapes_render_size", type=int, default=224,
                      help="side at which shapes are drawn before the crop")
  args = parser.parse_args(argv)
  results = bench_input(args)
  print(f"# {machine()}")
  print(f"{'dataset':<14} {'workers':>7} {'records/s':>10}")
  for r in results:
    print(f"{r['dataset']:<14} {r['workers']:>7} {r['records_per_s']:>10.1f}")
  for r in results:
    print(json.dumps({**r, "machine": machine()}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
