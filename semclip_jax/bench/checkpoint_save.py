"""The checkpoint save, timed: `--what=save`.

The train state of `--preset` as the trainer builds it (parameters, AdamW state, counters; the
image tower frozen or not per `--towers`) saved with the trainer's own `Checkpointer` (orbax,
asynchronous) into `--save_dir` (default: a fresh temporary folder, removed afterwards), blocking
until it is on disk: the time a preemption save (SIGTERM) needs before the process may exit, to
hold against a spot VM's notice (30 s on Google Cloud). `--save_repeats` saves, each of a new
step: the first pays orbax's start-up, the later ones are what a run that already saved pays.
Per save: the blocking part of `save()` (what the training loop pauses for) and save + wait.
The state's float arrays are filled with noise first: a fresh state's zero optimizer moments
would compress to nothing on disk, a trained state's do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semclip_jax import checkpointing, train
from semclip_jax.bench import step as step_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The save's own flags; `--preset`, `--towers` and `--dtype` are the step's."""
  parser.add_argument("--save_dir", default=None,
                      help="folder the timed checkpoints go to (default: a temporary folder, "
                           "removed afterwards)")
  parser.add_argument("--save_repeats", type=int, default=3,
                      help="saves per setting, each of a new step (the first includes orbax's "
                           "start-up)")


def folder_bytes(path: str) -> int:
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def noisy_like(state: Any, seed: int = 0) -> Any:
  """`state` with every float array replaced by standard normal noise, same shape, dtype and
  sharding: a fresh state's optimizer moments are zeros, which orbax's compression shrinks to
  almost nothing, unlike a trained state's."""
  rng = np.random.default_rng(seed)

  def noisy(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return jax.device_put(rng.standard_normal(x.shape, np.float32).astype(x.dtype), x.sharding)

  return jax.tree.map(noisy, state)


def timed_saves(state: Any, directory: str, repeats: int) -> list[dict[str, float]]:
  """Saves `state` `repeats` times (steps 1, 2, ...) into `directory` with the trainer's
  checkpointer, each waited for: [{"call_s", "save_s", "disk_bytes"}]."""
  checkpointer = checkpointing.Checkpointer(directory, keep=1)
  times = []
  try:
    for step in range(1, repeats + 1):
      jax.block_until_ready(state)
      start = time.perf_counter()
      checkpointer.save(step, state, {})
      called = time.perf_counter()
      checkpointer.wait()
      done = time.perf_counter()
      times.append({"call_s": called - start, "save_s": done - start,
                    "disk_bytes": folder_bytes(os.path.join(directory, str(step)))})
  finally:
    checkpointer.close()
  return times


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """A "save" record per `--towers` setting."""
  records = []
  for freeze in step_bench.freeze_settings(args.towers):
    config = step_bench.bench_config(args.preset, 8, freeze_image=freeze, dtype=args.dtype)
    _, state, _, _ = train.build_train_state(config, train.make_mesh(config))
    state = noisy_like(state)
    leaves = jax.tree.leaves(state)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    name = f"{args.preset.replace('/', '_')}_{step_bench.towers_name(freeze)}"
    folder = (tempfile.mkdtemp(prefix=f"semclip_jax_bench_save_{name}_") if args.save_dir is None
              else os.path.join(args.save_dir, name))
    try:
      saves = timed_saves(state, folder, args.save_repeats)
    finally:
      if args.save_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    later = saves[1:] or saves
    records.append({
        "what": "save", "preset": args.preset, "towers": step_bench.towers_name(freeze),
        "state_bytes": sum(x.nbytes for x in leaves), "params": params, "arrays": len(leaves),
        "disk_bytes": saves[-1]["disk_bytes"], "first_save_s": saves[0]["save_s"],
        "save_s": min(s["save_s"] for s in later), "call_s": min(s["call_s"] for s in later),
        "saves": saves, "async": True, "directory": args.save_dir or "tmp",
        "devices": jax.device_count(), "backend": jax.default_backend()})
    del state, leaves
  return records


def print_table(results: Sequence[dict[str, Any]]) -> None:
  for r in results:
    if r["what"] == "save":
      print(f"save   {r['preset']} towers={r['towers']}: state {r['state_bytes'] / 2**20:,.0f} MiB "
            f"({r['params'] / 1e6:,.1f} M parameters, {r['arrays']} arrays; "
            f"{r['disk_bytes'] / 2**20:,.0f} MiB on disk) saved and waited for in "
            f"{r['save_s']:.2f} s (first save {r['first_save_s']:.2f} s; the loop blocks "
            f"{r['call_s']:.2f} s of it) to {r['directory']}")
