"""The training step, timed: `--what=step`.

The full step (image tower on B images, text tower on the 3B captions in one call, loss,
backward, AdamW update) after compilation and warm-up: median step time, samples/s, model FLOPs
per step (`flops.train_step_flops`), MFU against a matmul peak measured in the same run, XLA's own
FLOP count, peak memory and compile time. Captions are drawn from the vendored SugarCrepe++ CSV
and cut to their length bucket exactly as the input pipeline does. `semclip_jax.bench.peers`
builds its comparison on `StepBench` and this module's flags.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from semclip_jax import config as config_lib
from semclip_jax import sharding, train, train_step
from semclip_jax.bench import flops, peak, results as results_lib
from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.models.layers import REMAT_POLICIES
from semclip_jax.models.model_config import get_preset

TOWERS = {"text": [True], "both": [False], "all": [True, False]}  # --towers -> freeze_image values


def freeze_settings(towers: str) -> list[bool]:
  """`--towers` as the freeze_image values to run: text (image frozen), both, or all = each."""
  return TOWERS[towers]


def towers_name(freeze_image: bool) -> str:
  """The trained towers as records name them: "text" (image tower frozen) or "both"."""
  return "text" if freeze_image else "both"


def caption_tokens(batch_size: int, *, path: str | None = None, seed: int = 0,
                   tokenizer: CLIPTokenizer | None = None) -> tuple[np.ndarray, str]:
  """int32 [B, 3, 77] token ids of (caption, paraphrase, negation) triples and where they came from.

  Real triples from the SugarCrepe++ CSV (`path`, default the vendored one) when it exists: real
  captions are short, which is what length bucketing exploits. With `path=""` or a missing file,
  templated captions of similar length, said in the origin.
  """
  tokenizer = tokenizer or CLIPTokenizer()
  rng = np.random.default_rng(seed)
  path = path if path is not None else sources.SUGARCREPE_PP_CSV
  if path and os.path.isfile(path):
    triples = sources.read_triples(path)
    rows = [triples[i] for i in rng.choice(len(triples), batch_size, replace=len(triples) < batch_size)]
    texts = [t for row in rows for t in (row.caption, row.paraphrase, row.negation)]
    origin = os.path.basename(path)
  else:
    texts = [t.format(i) for i in range(batch_size) for t in (
        "a photo of a brown dog running on the beach next to the sea, number {}",
        "on the beach next to the sea a brown dog is running, number {}",
        "a photo of a brown dog that is not running on the beach next to the sea, number {}")]
    origin = "templated"
  return tokenizer(texts, context_length=77).reshape(batch_size, 3, 77), origin


def bench_config(preset: str, batch_size: int, *, freeze_image: bool, dtype: str = "float32",
                 loss: str = "semclip", paper_compat: bool = False,
                 chunk_size: int | None = None, remat: str = "none") -> ml_collections.ConfigDict:
  """The trainer's config for a benchmark step: `preset` from random init, AdamW as the paper,
  the image tower frozen as the paper (`config.FREEZE_IMAGE_TOWER`) when `freeze_image`."""
  config = config_lib.paper_finetuning(config_lib.base_config())
  config.model.update(preset=preset, init_from="", dtype=dtype, remat=remat)
  config.loss.update(name=loss, paper_compat=paper_compat, chunk_size=chunk_size)
  config.optim.update(freeze=config_lib.FREEZE_IMAGE_TOWER if freeze_image else (),
                      grad_accum_steps=1)
  config.data.update(batch_size=batch_size, image_size=get_preset(preset).vision.image_size)
  return config


def make_batch(config: ml_collections.ConfigDict, tokens: np.ndarray,
               seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking random images float32 [B, H, W, 3] and the given tokens int32 [B, 3, L]."""
  size = config.data.image_size
  images = np.random.default_rng(seed).standard_normal((tokens.shape[0], size, size, 3), np.float32)
  return {"image": images, "tokens": tokens}


class StepBench:
  """A compiled train step on a fixed batch, ready to time; `trainee()` is its model before any
  step (`peers` copies these weights into the peer so both compute the same loss)."""

  def __init__(self, config: ml_collections.ConfigDict, tokens: np.ndarray, *,
               buckets: Sequence[int] = (), seed: int = 0):
    self.config = config
    self.full_length = tokens.shape[-1]
    self.tokens = input_pipeline.trim_to_bucket(tokens, tuple(buckets)) if buckets else tokens
    mesh = train.make_mesh(config)
    train.validate_config(config, mesh.size)
    self.graphdef, self.state, shardings, tx = train.build_train_state(config, mesh)
    self.batch = sharding.global_batch(make_batch(config, self.tokens, seed), mesh)
    step = train_step.make_train_step(self.graphdef, tx, mesh=mesh, state_shardings=shardings)
    self.program_flops = flops.jaxpr_matmul_flops(jax.make_jaxpr(step)(self.state, self.batch))
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start

  def trainee(self) -> train_step.Trainee:
    return train.nnx_merge(self.graphdef, self.state)

  def run(self, steps: int) -> tuple[list[float], dict[str, float]]:
    """Times `steps` steps (each waited for; the wait is µs against a step of ms to s)."""
    times, metrics = [], {}
    for _ in range(steps):
      start = time.perf_counter()
      self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return times, {k: float(v) for k, v in metrics.items()}


def profile_step(bench: StepBench, folder: str, top: int = 12) -> list[dict[str, Any]]:
  """Traces one step with jax.profiler into `folder` (open it in TensorBoard / Perfetto) and
  returns the XLA ops that took longest, by op kind (fusion names without their numbers)."""
  jax.profiler.start_trace(folder, create_perfetto_trace=True)
  try:
    bench.run(1)
  finally:
    jax.profiler.stop_trace()
  traces = sorted(glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz")))
  if not traces:
    return []
  with gzip.open(traces[-1], "rt", encoding="utf-8") as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals: dict[str, list[float]] = {}
  for e in events:  # leaf ops only: skip executor/Python spans that contain them
    if e.get("ph") == "X" and not e["name"].startswith(("ThunkExecutor", "$", "PjitFunction")):
      kind = re.sub(r"[.\d]+$", "", e["name"])
      totals.setdefault(kind, [0.0, 0])
      totals[kind][0] += e["dur"] / 1e6
      totals[kind][1] += 1
  busy = sum(t for t, _ in totals.values()) or 1.0
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
  return [{"what": "profile", "op": k, "seconds": t, "share": t / busy, "count": n}
          for k, (t, n) in ranked]


def step_result(bench: StepBench, times: list[float], metrics: dict[str, float],
                peak_record: dict[str, Any], *, freeze_image: bool,
                captions: str) -> dict[str, Any]:
  """The "step" record of a timed `StepBench`: rates, FLOPs, MFU against `peak_record`, memory."""
  config = bench.config
  b, length = config.data.batch_size, bench.tokens.shape[-1]
  step_flops = flops.train_step_flops(get_preset(config.model.preset), b, length, freeze_image)
  return {
      "what": "step", "preset": config.model.preset, "batch_size": b, "dtype": config.model.dtype,
      "towers": towers_name(freeze_image), "loss": config.loss.name, "remat": config.model.remat,
      "text_length": length, "full_length": bench.full_length, "captions": captions,
      **results_lib.rate_fields(b, times, step_flops, peak_record),
      "program_matmul_flops": bench.program_flops, "compile_s": bench.compile_s,
      "memory": results_lib.memory_analysis(bench.compiled),
      "peak_memory_bytes": results_lib.peak_memory_bytes(), "loss_value": metrics.get("loss"),
      "devices": jax.device_count(), "backend": jax.default_backend(),
  }


def measure_steps(args: argparse.Namespace, peak_record: dict[str, Any]) -> list[dict[str, Any]]:
  """A "step" record per `--towers` setting (each followed by its "profile" records with
  `--profile_dir`), MFU against `peak_record`."""
  tokens, origin = caption_tokens(args.batch_size, path=args.captions)
  records = []
  for freeze in freeze_settings(args.towers):
    config = bench_config(args.preset, args.batch_size, freeze_image=freeze, dtype=args.dtype,
                          loss=args.loss, paper_compat=args.paper_compat,
                          chunk_size=args.chunk_size, remat=args.remat)
    bench = StepBench(config, tokens, buckets=() if args.no_buckets else args.buckets)
    bench.run(args.warmup)
    times, metrics = bench.run(args.steps)
    records.append(step_result(bench, times, metrics, peak_record, freeze_image=freeze,
                               captions=origin))
    if args.profile_dir:
      towers = towers_name(freeze)
      records += [{**r, "towers": towers}
                  for r in profile_step(bench, os.path.join(args.profile_dir, towers))]
  return records


def _int_list(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
  """The step's flags, shared with `semclip_jax.bench.peers` so both measure the same step."""
  parser.add_argument("--preset", default="B/32", help="tiny | B/32 | B/16 | L/14")
  parser.add_argument("--batch_size", type=int, default=32,
                      help="images per step, each with its 3 captions (all devices together)")
  parser.add_argument("--towers", choices=list(TOWERS), default="all",
                      help="trained towers: text (image frozen, the paper's setting), both, or "
                           "all = one run of each")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--loss", default="semclip", help="config.loss.name (clip, siglip, ...)")
  parser.add_argument("--paper_compat", action="store_true",
                      help="the official code's contrastive term (as the open_clip peer computes)")
  parser.add_argument("--chunk_size", type=int, default=None, help="logits chunk (default: none)")
  parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="none",
                      help="model.remat: recompute each block's activations in the backward pass")
  parser.add_argument("--buckets", type=_int_list, default=(16, 24, 32, 48, 64, 77),
                      help="caption length buckets, comma separated")
  parser.add_argument("--no_buckets", action="store_true", help="always run all 77 tokens")
  parser.add_argument("--captions", default=None,
                      help="CSV of triples (default: the vendored SugarCrepe++ CSV)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--steps", type=int, default=3, help="timed steps")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """`add_step_arguments` and the profiler's folder (the peak's `--peak_n` is `peak`'s flag)."""
  add_step_arguments(parser)
  parser.add_argument("--profile_dir", default=None,
                      help="also trace one step per setting with jax.profiler into this folder")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """The matmul peak, `measure_steps` against it (MFU needs a peak from the same run), and the
  peak again: `results_lib.judge_mfu` refuses an MFU the two peaks do not support."""
  before = peak.measure(args)[0]
  steps = measure_steps(args, before)
  results_lib.judge_mfu(steps, before, peak.matmul_peak(before["dtype"], n=before["n"]))
  return [before, *steps]


def print_table(results: Sequence[dict[str, Any]]) -> None:
  """Rows of the peak, step and profile records, in their order."""
  for r in results:
    if r["what"] == "peak":
      print(peak.peak_line(r))
    elif r["what"] == "profile":
      print(f"  profile towers={r['towers']} {r['op']:<32} {r['seconds']:8.3f} s "
            f"{100 * r['share']:5.1f}%  ({r['count']} calls)")
    elif r["what"] == "step":
      m = r["memory"]
      print(f"step   {r['preset']} B={r['batch_size']} {r['dtype']} towers={r['towers']} "
            f"L={r['text_length']}/{r['full_length']}"
            + (f" remat={r['remat']}" if r["remat"] != "none" else "")
            + f": {r['step_s_median']:.3f} s/step "
            f"(min {r['step_s_min']:.3f}), {r['samples_per_s']:.2f} samples/s, "
            f"{r['model_flops'] / 1e9:,.1f} GFLOP/step "
            f"(traced program: {r['program_matmul_flops'] / 1e9:,.1f}), "
            f"{r['achieved_flops_per_s'] / 1e9:,.1f} GFLOP/s = {results_lib.mfu_text(r)}, "
            f"compile {r['compile_s']:.1f} s, "
            f"XLA temp {m.get('temp_size', 0) / results_lib.MIB:,.0f} MiB, "
            f"peak memory {r['peak_memory_bytes'] / results_lib.GIB:.2f} GiB, "
            f"loss {r['loss_value']:.6f}")
