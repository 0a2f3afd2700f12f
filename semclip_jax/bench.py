"""Benchmarks: `python -m semclip_jax.bench --what=step|input|peak|all|loss_memory|pod`.

`step` times the full training step (image tower on B images, text tower on the 3B captions in one
call, loss, backward, AdamW update) after compilation and warm-up: median step time, samples/s,
model FLOPs per step (counted analytically, see `train_step_flops`), MFU against a matmul peak
measured in the same run, XLA's own FLOP count, peak memory and compile time. Captions are drawn
from the vendored SugarCrepe++ CSV (`data/vendor/`) and cut to their length bucket exactly as
the input pipeline does.

`input` measures the input pipeline's records/s, from source to finished batches (decode, crop,
normalise, tokenize three captions, batch), for the built-in shapes dataset (rendered on the fly)
and for JPEG files on disk (CSV + image folder, the paper's layout), each with the main process
alone and with grain worker processes.

`peak` measures the dense matmul peak (float32 on CPU, bfloat16 on GPU/TPU) that MFU is quoted
against. Every measurement prints a table and one JSON line. Absolute rates depend on the machine:
compare rows of one run.

`loss_memory` (the sharded loss's per-device memory, chunked vs unchunked, on 8 forced host
devices) and `pod` (the full step compiled, not run, for 256 forced devices) are
`semclip_jax.bench_scale`'s measurements, with its flags; `all` leaves them out (the pod
simulation compiles for minutes).
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import json
import os
import platform
import re
import resource
import statistics
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from semclip_jax import config as config_lib
from semclip_jax import sharding, train, train_step
from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.models.layers import REMAT_POLICIES
from semclip_jax.models.model_config import CLIPConfig, get_preset

SUGARCREPE_CSV = sources.SUGARCREPE_PP_CSV  # real captions, vendored with the package
FREEZE_IMAGE = config_lib.FREEZE_IMAGE_TOWER  # the paper's setting


# ----------------------------------------------------------------------------------------------
# FLOPs, counted analytically (multiply-add = 2 FLOPs; matmuls only: norms, softmax, GELU and the
# loss are < 1% for these shapes).
# ----------------------------------------------------------------------------------------------
def transformer_flops(layers: int, width: int, mlp: int, seq: int) -> int:
  """Forward FLOPs of one sequence through a pre-norm transformer.

  Per layer: q, k, v, out projections 4·(2·T·d²); MLP 2·(2·T·d·m); attention scores QKᵀ and the
  weighted sum AV 2·(2·T²·d). Causal attention is counted in full: the kernels compute all T²
  scores and mask them, so these are FLOPs executed.
  """
  return layers * (8 * seq * width**2 + 4 * seq * width * mlp + 4 * seq**2 * width)


def image_tower_flops(config: CLIPConfig) -> int:
  """Forward FLOPs per image: patch embedding, the ViT over patches + class token, projection."""
  v = config.vision
  patches = (v.image_size // v.patch_size) ** 2
  return (patch_embedding_flops(config)
          + transformer_flops(v.num_hidden_layers, v.hidden_size, v.intermediate_size, patches + 1)
          + 2 * v.hidden_size * config.projection_dim)


def patch_embedding_flops(config: CLIPConfig) -> int:
  v = config.vision
  return 2 * (v.image_size // v.patch_size) ** 2 * v.patch_size**2 * v.num_channels * v.hidden_size


def text_tower_flops(config: CLIPConfig, length: int) -> int:
  """Forward FLOPs per caption of `length` tokens (the embedding lookup is a gather: 0 FLOPs)."""
  t = config.text
  return (transformer_flops(t.num_hidden_layers, t.hidden_size, t.intermediate_size, length)
          + 2 * t.hidden_size * config.projection_dim)


def train_step_flops(config: CLIPConfig, batch_size: int, text_length: int,
                     freeze_image: bool) -> dict[str, int]:
  """Model FLOPs of one SemCLIP train step on B images and 3B captions of `text_length` tokens.

  A trained tower costs 3× its forward (forward, then gradients w.r.t. activations and w.r.t.
  weights, each as large as the forward), except that no gradient w.r.t. the images is formed
  (the patch embedding costs 2×); a frozen image tower costs its forward only. The contrastive
  logits are two [B, B] products (image→text and text→image rows), 3× each; SemCLIP's projection
  Pᵀz of three captions, forward and input gradient. `tests/test_bench.py` checks this formula
  against the matmuls in the traced step.
  """
  b, d, k = batch_size, config.projection_dim, 2
  image = b * image_tower_flops(config)
  if not freeze_image:
    image = 3 * image - b * patch_embedding_flops(config)
  text = 3 * b * text_tower_flops(config, text_length) * 3
  loss = 3 * 2 * (2 * b * b * d) + 2 * 3 * (2 * b * d * k)
  return {"image": image, "text": text, "loss": loss, "total": image + text + loss}


def jaxpr_matmul_flops(jaxpr: Any) -> int:
  """FLOPs of every dot_general and convolution in a (closed) jaxpr, loops counted per trip.

  The program's own count, beside the analytic model: `scan` bodies count `length` times,
  `shard_map` bodies once per device, `cond` its costliest branch.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name, params = eqn.primitive.name, eqn.params
    if name == "dot_general":
      (contract, _), (batch, _) = params["dimension_numbers"]
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      out = int(np.prod(eqn.outvars[0].aval.shape))
      total += 2 * out * int(np.prod([lhs[i] for i in contract]))
      del rhs, batch
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape  # the kernel: its spatial dims × input features per group
      spec = params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
      per_output = int(np.prod([rhs[i] for i in spec[1:]]))
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * per_output
    elif name == "cond":
      total += max(jaxpr_matmul_flops(branch) for branch in params["branches"])
    else:
      repeat = params["length"] if name == "scan" else 1
      if name == "shard_map":
        repeat = int(np.prod(list(params["mesh"].shape.values())))
      for sub in _sub_jaxprs(params):
        total += repeat * jaxpr_matmul_flops(sub)
  return total


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
  subs = []
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns"):
        subs.append(item)
  return subs


# ----------------------------------------------------------------------------------------------
# Peak: the dense matmul rate of this machine, measured in the same run as the step.
# ----------------------------------------------------------------------------------------------
def default_peak_dtype() -> str:
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def matmul_peak(dtype: str | None = None, n: int | None = None, repeats: int = 5) -> dict[str, Any]:
  """FLOP/s of an n×n×n matmul (the best of `repeats`: a peak, not a typical rate)."""
  dtype = dtype or default_peak_dtype()
  n = n or (4096 if jax.default_backend() == "cpu" else 16384)
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.dtype(dtype)) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.dtype(dtype)))
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return {"what": "peak", "dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / min(times),
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}


# ----------------------------------------------------------------------------------------------
# The train step.
# ----------------------------------------------------------------------------------------------
def caption_tokens(batch_size: int, *, path: str | None = None, seed: int = 0,
                   tokenizer: CLIPTokenizer | None = None) -> tuple[np.ndarray, str]:
  """int32 [B, 3, 77] token ids of (caption, paraphrase, negation) triples and where they came from.

  Real triples from the SugarCrepe++ CSV when it exists (real captions are short, which is what
  length bucketing exploits); otherwise templated captions of similar length, said in the source.
  """
  tokenizer = tokenizer or CLIPTokenizer()
  rng = np.random.default_rng(seed)
  path = path if path is not None else SUGARCREPE_CSV
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
                 chunk_size: int | None = None, remat: str = "none") -> Any:
  """The trainer's config for a benchmark step: `preset` from random init, AdamW as the paper."""
  config = config_lib.paper_finetuning(config_lib.base_config())
  config.model.update(preset=preset, init_from="", dtype=dtype, remat=remat)
  config.loss.update(name=loss, paper_compat=paper_compat, chunk_size=chunk_size)
  config.optim.update(freeze=FREEZE_IMAGE if freeze_image else (), grad_accum_steps=1)
  config.data.update(batch_size=batch_size, image_size=get_preset(preset).vision.image_size)
  return config


def make_batch(config: Any, tokens: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking random images [B, H, W, 3] and the given tokens [B, 3, L]."""
  size = config.data.image_size
  images = np.random.default_rng(seed).standard_normal((tokens.shape[0], size, size, 3), np.float32)
  return {"image": images, "tokens": tokens}


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes")


def memory_analysis(compiled: Any) -> dict[str, int]:
  """XLA's per-device buffer sizes of a compiled program, plus `total`: its peak estimate.

  The generated code is left out (it is host memory on every backend). `total` = arguments +
  temporaries + outputs − aliased outputs: an output aliased to a donated argument reuses its
  buffer, so it is counted once.
  """
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  sizes = {f.removesuffix("_in_bytes"): int(getattr(analysis, f, 0)) for f in MEMORY_FIELDS}
  sizes["total"] = (sizes["argument_size"] + sizes["temp_size"] + sizes["output_size"]
                    - sizes["alias_size"])
  return sizes


def emit_json_lines(results: Sequence[dict[str, Any]], stamp: dict[str, Any],
                    json_out: str | None = None) -> None:
  """Prints each record as one JSON line with `stamp` (machine, date, versions) merged in, and
  appends the lines to `json_out` if given: the machine-readable output of every benchmark CLI."""
  lines = [json.dumps({**r, **stamp}) for r in results]
  print("\n".join(lines), flush=True)
  if json_out:
    with open(json_out, "a", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


def _peak_memory_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:  # accelerators: the device allocator's high-water mark
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: the process' max RSS


class StepBench:
  """A compiled train step on a fixed batch, ready to time; `trainee()` is its model before any
  step (bench_peers copies these weights into the peer so both compute the same loss)."""

  def __init__(self, config: Any, tokens: np.ndarray, *, buckets: Sequence[int] = (), seed: int = 0):
    self.config = config
    self.full_length = tokens.shape[-1]
    self.tokens = input_pipeline.trim_to_bucket(tokens, tuple(buckets)) if buckets else tokens
    mesh = train.make_mesh(config)
    train.validate_config(config, mesh.size)
    self.graphdef, self.state, shardings, tx = train.build_train_state(config, mesh)
    self.batch = sharding.global_batch(make_batch(config, self.tokens, seed), mesh)
    step = train_step.make_train_step(self.graphdef, tx, mesh=mesh, state_shardings=shardings)
    self.program_flops = jaxpr_matmul_flops(jax.make_jaxpr(step)(self.state, self.batch))
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


def bench_step(args: argparse.Namespace, peak: dict[str, Any]) -> list[dict[str, Any]]:
  tokens, origin = caption_tokens(args.batch_size, path=args.captions)
  results = []
  for freeze in _freeze_settings(args.towers):
    config = bench_config(args.preset, args.batch_size, freeze_image=freeze, dtype=args.dtype,
                          loss=args.loss, paper_compat=args.paper_compat,
                          chunk_size=args.chunk_size, remat=args.remat)
    bench = StepBench(config, tokens, buckets=() if args.no_buckets else args.buckets)
    bench.run(args.warmup)
    times, metrics = bench.run(args.steps)
    results.append(step_result(bench, times, metrics, peak, freeze_image=freeze, captions=origin))
    if args.profile_dir:
      folder = os.path.join(args.profile_dir, "text" if freeze else "both")
      results += [{**r, "towers": "text" if freeze else "both"} for r in profile_step(bench, folder)]
  return results


def _freeze_settings(towers: str) -> list[bool]:
  return {"text": [True], "both": [False], "all": [True, False]}[towers]


def rate_fields(batch_size: int, times: Sequence[float], flops: dict[str, int],
                peak: dict[str, Any]) -> dict[str, Any]:
  """A step record's timing fields: median and min of `times` (s), samples/s, the model FLOPs
  (`train_step_flops`' parts) and MFU against `peak` (`matmul_peak`)."""
  median = statistics.median(times)
  return {"step_s_median": median, "step_s_min": min(times), "steps_timed": len(times),
          "samples_per_s": batch_size / median, "model_flops": flops["total"],
          "model_flops_parts": flops, "achieved_flops_per_s": flops["total"] / median,
          "peak_flops_per_s": peak["flops_per_s"], "peak_dtype": peak["dtype"],
          "mfu": flops["total"] / median / peak["flops_per_s"]}


def step_result(bench: StepBench, times: list[float], metrics: dict[str, float],
                peak: dict[str, Any], *, freeze_image: bool, captions: str) -> dict[str, Any]:
  config = bench.config
  model_config = get_preset(config.model.preset)
  b, length = config.data.batch_size, bench.tokens.shape[-1]
  flops = train_step_flops(model_config, b, length, freeze_image)
  return {
      "what": "step", "preset": config.model.preset, "batch_size": b, "dtype": config.model.dtype,
      "towers": "text" if freeze_image else "both", "loss": config.loss.name,
      "remat": config.model.remat,
      "text_length": length, "full_length": bench.full_length, "captions": captions,
      **rate_fields(b, times, flops, peak), "program_matmul_flops": bench.program_flops,
      "compile_s": bench.compile_s, "memory": memory_analysis(bench.compiled),
      "peak_memory_bytes": _peak_memory_bytes(), "loss_value": metrics.get("loss"),
      "devices": jax.device_count(), "backend": jax.default_backend(),
  }



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
        rate = records_per_second(source, image_size=args.image_size, batch_size=args.input_batch_size,
                                  workers=workers, batches=args.batches, tokenizer=tokenizer)
        results.append({"what": "input", "dataset": name, "workers": workers,
                        "image_size": args.image_size, "batch_size": args.input_batch_size,
                        "records_per_s": round(rate, 1)})
  return results


def machine() -> str:
  return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}"


def print_table(results: list[dict[str, Any]]) -> None:
  for r in results:
    if r["what"] == "peak":
      print(f"peak   {r['dtype']} {r['n']}³ matmul on {r['device']}: "
            f"{r['flops_per_s'] / 1e9:,.1f} GFLOP/s")
    elif r["what"] == "input":
      print(f"input  {r['dataset']:<14} workers={r['workers']}  {r['records_per_s']:>8.1f} records/s"
            + (f"  ({r['times_step_rate']:.0f}× the step's consumption)"
               if "times_step_rate" in r else ""))
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
            f"{r['achieved_flops_per_s'] / 1e9:,.1f} GFLOP/s = MFU {100 * r['mfu']:.1f}%, "
            f"compile {r['compile_s']:.1f} s, XLA temp {m.get('temp_size', 0) / 2**20:,.0f} MiB, "
            f"peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB, loss {r['loss_value']:.6f}")


def _int_list(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
  """The step benchmark's flags (shared with bench_peers, so both measure the same step)."""
  parser.add_argument("--preset", default="B/32", help="tiny | B/32 | B/16 | L/14")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--towers", choices=["text", "both", "all"], default="all",
                      help="trained towers: text (image frozen, the paper's setting), both, or "
                           "all = one run of each")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--loss", default="semclip")
  parser.add_argument("--paper_compat", action="store_true",
                      help="the official code's contrastive term (as bench_peers' peer computes)")
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


def main(argv: Sequence[str] | None = None) -> int:
  # Imported here: bench_scale builds on this module (its configs, memory and JSON helpers).
  from semclip_jax import bench_scale  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(prog="python -m semclip_jax.bench", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--what", choices=["step", "input", "peak", "all", "loss_memory", "pod"],
                      default="all")
  add_step_arguments(parser)
  bench_scale.add_arguments(parser)
  parser.add_argument("--image_size", type=int, default=None,
                      help="input benchmark's output image side (default: the preset's)")
  parser.add_argument("--input_batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per input measurement")
  parser.add_argument("--workers", type=int, default=2, help="grain worker processes")
  parser.add_argument("--jpeg_files", type=int, default=512, help="JPEGs written for the test")
  parser.add_argument("--shapes_render_size", type=int, default=224,
                      help="side at which shapes are drawn before the crop")
  parser.add_argument("--profile_dir", default=None,
                      help="also trace one step per setting with jax.profiler into this folder")
  parser.add_argument("--json_out", default=None, help="also append the JSON lines to this file")
  args = parser.parse_args(argv)

  results: list[dict[str, Any]] = []
  if args.what in ("step", "peak", "all"):
    peak = matmul_peak()
    results.append(peak)
  if args.what in ("step", "all"):
    results += bench_step(args, peak)
  if args.what in ("input", "all"):
    args.image_size = args.image_size or get_preset(args.preset).vision.image_size
    inputs = bench_input(args)
    step_rates = [r["samples_per_s"] for r in results if r["what"] == "step"]
    for r in inputs:
      if step_rates:  # the fastest step is the one the pipeline must keep up with
        r["times_step_rate"] = r["records_per_s"] / max(step_rates)
    results += inputs
  if args.what in ("loss_memory", "pod"):
    results += bench_scale.measure(args.what, args)

  stamp = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__}
  print(f"# {stamp['machine']}, jax {jax.__version__}, {jax.devices()[0].device_kind}")
  print_table(results)
  bench_scale.print_table(results)
  emit_json_lines(results, stamp, args.json_out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
