"""The frozen-image training loop end to end, with and without cached image embeddings:
`--what=cache`.

JPEGs of CC3M/COCO size on disk (CSV + image folder) go through the trainer's own parts: the
input pipeline (decode, crop, tokenize, batch; with the cache: embeddings and captions read
back), the jitted step (`--preset`, `--batch_size`, `--dtype`, image tower frozen, centre crop,
the deterministic transform a cache needs) and the host-device overlap of the training loop (no
wait per step; the clock stops when the last step is done). Samples/s after `--warmup` steps,
for the uncached loop and the cached one in the same run, and the time the cache took to build.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Sequence

import jax

from semclip_jax import image_embedding_cache, train, train_step
from semclip_jax.bench import step as step_bench
from semclip_jax.bench.input_rate import write_jpeg_dataset
from semclip_jax.data import input_pipeline, sources


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The loop's own flags; the step's (`--preset`, `--batch_size`, `--dtype`, `--warmup`,
  `--steps`) and the input's `--workers` are shared with `step` and `input`."""
  parser.add_argument("--cache_files", type=int, default=256,
                      help="JPEGs (500x375) written for the cached-vs-uncached loop")
  parser.add_argument("--cache_workers", type=int, default=0,
                      help="grain worker processes of the cached-vs-uncached loop")


def timed_loop(config, source, workdir: str, *, cached: bool, warmup: int, steps: int
               ) -> dict[str, Any]:
  """Samples/s of `steps` training steps fed by the input pipeline over `source`, after
  `warmup` (compilation, worker start-up); with `cached`, the cache is built first (timed)."""
  mesh = train.make_mesh(config)
  graphdef, state, shardings, tx = train.build_train_state(config, mesh)
  build_s = None
  if cached:
    start = time.perf_counter()
    source = image_embedding_cache.prepare(config, workdir, graphdef, state, source)
    build_s = time.perf_counter() - start
  step = train_step.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings,
                                    normalization=config.data.normalization)
  pipeline = input_pipeline.make_pipeline(source, config.data, train=True, mesh=mesh)
  try:
    metrics = None
    for i in range(warmup + steps):
      if i == warmup:
        jax.block_until_ready(metrics)
        start = time.perf_counter()
      batch = next(pipeline)
      state, metrics = step(state, input_pipeline.device_arrays(batch))
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
  finally:
    pipeline.close()
  b = config.data.batch_size
  return {"what": "cache", "cached": cached, "preset": config.model.preset, "batch_size": b,
          "dtype": config.model.dtype, "workers": config.data.worker_count,
          "steps": steps, "samples_per_s": round(steps * b / elapsed, 3),
          "step_s_mean": elapsed / steps, "cache_build_s": build_s,
          "loss_value": float(metrics["loss"]), "backend": jax.default_backend()}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """An uncached and a cached "cache" record, same data and config; the cached one carries
  `speedup` (its samples/s over the uncached one's)."""
  config = step_bench.bench_config(args.preset, args.batch_size, freeze_image=True,
                                   dtype=args.dtype)
  records = []
  with tempfile.TemporaryDirectory() as folder:
    csv_path = write_jpeg_dataset(folder, args.cache_files)
    source = sources.csv_source(csv_path, os.path.join(folder, "images"), split=None)
    config.data.update(train_crop="center", worker_count=args.cache_workers,
                       image_embedding_cache_dir=os.path.join(folder, "cache"))
    for cached in (False, True):
      records.append(timed_loop(config, source, folder, cached=cached,
                                warmup=max(args.warmup, 1), steps=args.steps))
  records[1]["speedup"] = records[1]["samples_per_s"] / records[0]["samples_per_s"]
  return records


def print_table(results: Sequence[dict[str, Any]]) -> None:
  for r in results:
    if r["what"] == "cache":
      print(f"cache  {r['preset']} B={r['batch_size']} {r['dtype']} towers=text "
            f"workers={r['workers']} {'cached  ' if r['cached'] else 'uncached'}: "
            f"{r['samples_per_s']:.2f} samples/s end to end ({r['step_s_mean']:.3f} s/step)"
            + (f", cache built in {r['cache_build_s']:.1f} s, {r['speedup']:.2f}x uncached"
               if r["cached"] else ""))
