"""Ours against open_clip: `python -m semclip_jax.bench.peers` (needs `pip install -e '.[bench]'`).

Times the same SemCLIP training step in our JAX code and in PyTorch open_clip, in one process,
back to back: same machine, batch (images and caption triples), float32, and thread count.
Both sides compute the official SemCLIP code's loss (`paper_compat`: InfoNCE on raw embeddings
scaled by exp(t) of its own trained, weight-decayed temperature t; the projection terms on unit
embeddings through a fixed orthonormal P), then backward, global-norm clipping at 1.0 and AdamW
with the same learning-rate schedule, weight-decay subset and frozen parameters.

The peer is an `open_clip.model.CLIP` built from our preset's architecture and loaded with our
model's initial weights (through the name map of `semclip_jax.openclip`), so the
first step's loss must agree to float tolerance: that is the proof that both time the same step.
What differs is what each implementation does by design: ours runs the text tower on the
batch's length bucket, open_clip always on all 77 positions.

Per towers setting (`text`: image tower frozen, the paper's setting, its forward under
`torch.no_grad()` on the peer; `both`: everything trained): our first step and the peer's on the
same batch (the loss check), then `--warmup` untimed and `--steps` timed steps on each side, ours
first. Prints a table, one JSON line per (side, towers) and one comparison line per towers
setting with the ratio ours / open_clip of samples/s and the two first-step losses. Exits 1
when a loss check fails.

The only module of the package that imports open_clip, and it imports without torch and
open_clip: nothing else needs the `bench` extra (the test extra carries the same pins).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import nnx

from semclip_jax import losses, openclip, optim
from semclip_jax.bench import flops, peak as peak_lib, results as results_lib, step as step_lib
from semclip_jax.models.model_config import CLIPConfig, get_preset
from semclip_jax.progress import HelpFormatter
from semclip_jax.sharding import path_str

try:  # the `bench` extra (also in `test`); a plain install has neither, and this module imports
  import torch
  import torch.nn.functional as F
except ImportError:
  torch = F = None
try:
  import open_clip
  from open_clip.model import CLIP as OpenCLIP, CLIPTextCfg, CLIPVisionCfg
except ImportError:
  open_clip = None

INSTALL_HINT = "pip install -e '.[bench]'"
BUSY_LOAD = 0.5  # 1-minute load average at start above which the machine was not idle


def require_peers(*, need_open_clip: bool = True) -> None:
  """Raises ImportError naming the install command when torch (or open_clip) is missing."""
  missing = [name for name, module in (("torch", torch), ("open_clip", open_clip))
             if module is None and (name == "torch" or need_open_clip)]
  if missing:
    raise ImportError(f"semclip_jax.bench.peers needs PyTorch and open_clip (missing: "
                      f"{', '.join(missing)}); install them with: {INSTALL_HINT}")


# ----------------------------------------------------------------------------------------------
# The peer model: open_clip's CLIP of our config, with our weights (`semclip_jax.openclip`).
# ----------------------------------------------------------------------------------------------
def openclip_model(config: CLIPConfig) -> "OpenCLIP":
  """A randomly initialised `open_clip.model.CLIP` of our config's architecture."""
  require_peers()
  cfg = openclip.model_cfg_of(config)
  return OpenCLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]),
                  CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=cfg["quick_gelu"])


def load_into_openclip(peer: "OpenCLIP", model) -> None:
  """Copies our model's weights into the peer; strict: every parameter and buffer is set."""
  require_peers()
  peer.load_state_dict({name: torch.from_numpy(value)
                        for name, value in openclip.openclip_arrays(model).items()}, strict=True)


def paper_semclip_loss(zi: "torch.Tensor", zt: "torch.Tensor", zp: "torch.Tensor",
                       zn: "torch.Tensor", temperature_logit: "torch.Tensor",
                       projection: "torch.Tensor", normalize_projections: bool = True, *,
                       alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0
                       ) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
  """The official SemCLIP code's loss, op for op (aaai26-paper12649/SemCLIP, src/custom_loss.py).

  zi, zt, zp, zn: [B, D] raw embeddings; temperature_logit: its own temperature parameter t
  (scale exp(t), not clamped); projection: [D, K] orthonormal columns. The contrastive term is
  open_clip's `ClipLoss` on the raw embeddings; the projection terms are `CosineEmbeddingLoss`
  (margin 0) on projections of F.normalize(eps=1e-6)-ed text embeddings.
  """
  require_peers(need_open_clip=False)
  scale = temperature_logit.exp()
  logits_per_image = scale * zi @ zt.T
  logits_per_text = scale * zt @ zi.T
  labels = torch.arange(zi.shape[0], device=zi.device)
  contrastive = (F.cross_entropy(logits_per_image, labels)
                 + F.cross_entropy(logits_per_text, labels)) / 2
  projections = [F.normalize(z, p=2, dim=-1, eps=1e-6) @ projection for z in (zt, zp, zn)]
  if normalize_projections:
    projections = [F.normalize(p, p=2, dim=-1, eps=1e-6) for p in projections]
  pt, pp, pn = projections
  ones = torch.ones(pt.shape[0], dtype=pt.dtype, device=pt.device)
  paraphrase = F.cosine_embedding_loss(pt, pp, ones, margin=0.0)  # mean(1 − cos)
  negation = F.cosine_embedding_loss(pt, pn, -ones, margin=0.0)  # mean(max(0, cos))
  loss = (alpha * contrastive + beta * paraphrase + gamma * negation) / (alpha + beta + gamma)
  return loss, {"loss": loss, "contrastive_loss": contrastive, "para_loss": paraphrase,
                "neg_loss": negation}


# ----------------------------------------------------------------------------------------------
# The peer's train step.
# ----------------------------------------------------------------------------------------------
class PeerStep:
  """open_clip + the paper's loss + torch AdamW: the same step as a `step.StepBench`.

  Built from the StepBench before its first step (its state is donated by each step): our initial
  weights, the objective's temperature and projection, the optimizer settings, which parameters
  are frozen and which decayed (read from our optimizer's own mask), and the same batch at the
  full 77 tokens.
  """

  def __init__(self, step_bench: step_lib.StepBench, tokens: np.ndarray):
    require_peers()
    if int(np.asarray(step_bench.state.step)) != 0:
      raise ValueError("build the PeerStep before the StepBench's first step: the peer starts "
                       "from the same initial weights")
    config = step_bench.config
    if not config.loss.paper_compat or config.loss.name not in losses.SEMCLIP_VARIANTS:
      raise ValueError("the peer computes the official code's loss: use bench_config(..., "
                       f"paper_compat=True) with a loss in {sorted(losses.SEMCLIP_VARIANTS)}")
    if config.model.dtype != "float32":
      raise ValueError("the comparison is in float32")
    start = time.perf_counter()
    self.model_config = get_preset(config.model.preset)
    trainee = step_bench.trainee()
    torch.manual_seed(config.seed)
    self.model = openclip_model(self.model_config)
    load_into_openclip(self.model, trainee.model)
    self.model.train()

    objective = trainee.objective
    self.loss_weights = dict(objective.weights)
    self.normalize_projections = objective.normalize_projections
    self.temperature = torch.nn.Parameter(
        torch.tensor(float(np.asarray(objective.compat_logit_scale[...]))))
    self.projection = torch.from_numpy(np.array(objective.projection[...], np.float32))

    self.freeze_image, groups = self._parameter_groups(trainee, config)
    self.trainable = [p for group in groups for p in group["params"]]
    oc = config.optim
    self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(oc.b1, oc.b2), eps=oc.eps,
                                       weight_decay=oc.weight_decay)
    self.grad_clip_norm = oc.grad_clip_norm
    # Our optimizer's learning rate at each update (optax counts updates from 0, as here).
    schedule = optim.learning_rate_schedule(oc, config.total_steps)
    self.learning_rates = np.asarray(schedule(jnp.arange(config.total_steps)), np.float64)
    self.steps_done = 0

    images = np.array(step_bench.batch["image"], np.float32)  # NHWC, the batch ours trains on
    self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    b, num_captions, length = tokens.shape
    self.text_length = length
    self.tokens = torch.from_numpy(tokens.reshape(b * num_captions, length).astype(np.int64))
    self.batch_size = b
    self.setup_s = time.perf_counter() - start

  def _parameter_groups(self, trainee, config) -> tuple[bool, list[dict[str, Any]]]:
    """(image tower frozen?, AdamW groups): frozen and decayed sets are read off our optimizer."""
    params = nnx.state(trainee, nnx.Param)
    decay_temperature = config.optim.decay_compat_temperature or config.optim.decay_all
    decay_mask = optim.decay_mask(params, decay_temperature, config.optim.decay_all)
    decayed = {path_str(p) for p, v in jax.tree_util.tree_flatten_with_path(decay_mask)[0] if v}
    decay, no_decay, frozen = [], [], set()
    named = dict(self.model.named_parameters())
    for name, (ours, _) in openclip.name_map(self.model_config).items():
      paths = [f"model.{p}" for p in ours]  # the Trainee's (the optimizer's) names
      is_frozen = {optim.is_frozen(p.split("."), tuple(config.optim.freeze)) for p in paths}
      decays = {p in decayed for p in paths}
      if len(is_frozen) > 1 or len(decays) > 1:
        raise ValueError(f"{name} is made of parameters that train or decay differently: {paths}")
      if is_frozen.pop():
        named[name].requires_grad_(False)
        frozen.add(name)
      else:
        (decay if decays.pop() else no_decay).append(named[name])
    visual = {n for n in named if n.startswith("visual.")}
    if frozen not in (set(), visual):
      raise ValueError("the peer freezes the whole image tower or nothing; the config freezes "
                       f"{sorted(frozen)[:4]} ...")
    (decay if decay_temperature else no_decay).append(self.temperature)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return frozen == visual and bool(visual), groups

  def step(self) -> dict[str, float]:
    """One train step on the fixed batch; returns its loss (before the update) and grad norm."""
    lr = float(self.learning_rates[min(self.steps_done, len(self.learning_rates) - 1)])
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    if self.freeze_image:  # the paper's setting: no graph is kept for the frozen tower
      with torch.no_grad():
        zi = self.model.encode_image(self.images)
    else:
      zi = self.model.encode_image(self.images)
    # The text tower once on all 3B captions, as ours.
    z = self.model.encode_text(self.tokens).reshape(self.batch_size, 3, -1)
    loss, terms = paper_semclip_loss(zi, z[:, 0], z[:, 1], z[:, 2], self.temperature,
                                     self.projection, self.normalize_projections,
                                     **self.loss_weights)
    loss.backward()
    if self.grad_clip_norm:
      grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip_norm)
    else:
      grad_norm = torch.linalg.vector_norm(
          torch.stack([torch.linalg.vector_norm(p.grad) for p in self.trainable if p.grad is not None]))
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.steps_done += 1
    return {**{k: v.detach().item() for k, v in terms.items()}, "grad_norm": grad_norm.item()}

  def run(self, steps: int) -> tuple[list[float], dict[str, float]]:
    """Times `steps` steps, as `StepBench.run` (CPU torch returns when the step is done)."""
    times, metrics = [], {}
    for _ in range(steps):
      start = time.perf_counter()
      metrics = self.step()
      times.append(time.perf_counter() - start)
    return times, metrics


def embedding_gaps(model, peer: "OpenCLIP", images: np.ndarray, tokens: np.ndarray
                   ) -> dict[str, float]:
  """max |ours − peer| / max |peer| of image embeddings (NHWC images) and text ones ([N, 77])."""
  require_peers()
  ours_i = np.asarray(model.encode_image(jnp.asarray(images)))
  ours_t = np.asarray(model.encode_text(jnp.asarray(tokens, jnp.int32)))
  with torch.no_grad():
    peer_i = peer.encode_image(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    peer_t = peer.encode_text(torch.from_numpy(np.asarray(tokens, np.int64)))
  gap = lambda a, b: float(np.max(np.abs(a - b.numpy())) / np.max(np.abs(b.numpy())))
  return {"image": gap(ours_i, peer_i), "text": gap(ours_t, peer_t)}


# ----------------------------------------------------------------------------------------------
# The comparison.
# ----------------------------------------------------------------------------------------------
def torch_matmul_peak(n: int, repeats: int = 5) -> float:
  """FLOP/s of an n×n×n float32 torch matmul (best of `repeats`), beside XLA's
  `peak.matmul_peak`."""
  generator = torch.Generator().manual_seed(0)
  a, b = (torch.randn(n, n, generator=generator) for _ in range(2))
  a @ b
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def thread_counts() -> dict[str, int]:
  """Threads each side computes with. XLA's CPU client sizes its pools to the schedulable cores
  (tsl::port::MaxParallelism) unless NPROC says otherwise; torch's intra-op pool is set by main."""
  xla = int(os.environ.get("NPROC", 0)) or len(os.sched_getaffinity(0))
  return {"xla_cpu_threads": xla, "torch_threads": torch.get_num_threads(),
          "torch_interop_threads": torch.get_num_interop_threads()}


def timed_with_cpu_share(run, steps: int) -> tuple[list[float], dict[str, float], float]:
  """`run(steps)`'s (times, metrics) and the CPU-seconds this process used per wall second: about
  the core count when a side keeps every core busy; less when it idles or others take cores."""
  cpu, wall = time.process_time(), time.perf_counter()
  times, metrics = run(steps)
  return times, metrics, (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)


def rel_diff(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def compare(args: argparse.Namespace, freeze_image: bool, tokens: np.ndarray, captions: str,
            peak: dict[str, Any]) -> list[dict[str, Any]]:
  """Both sides on one towers setting: [ours, open_clip, comparison] result dicts."""
  towers = step_lib.towers_name(freeze_image)
  config = step_lib.bench_config(args.preset, args.batch_size, freeze_image=freeze_image,
                              dtype=args.dtype, loss=args.loss, paper_compat=True,
                              chunk_size=args.chunk_size)
  ours = step_lib.StepBench(config, tokens, buckets=() if args.no_buckets else args.buckets)
  peer = PeerStep(ours, tokens)  # before our first step: it reads our initial weights

  # The loss check: each side's very first step, on the same weights and batch.
  ours_first_times, ours_first = ours.run(1)
  peer_first_times, peer_first = peer.run(1)
  # Timing, ours first, each after its own warm-up.
  ours.run(args.warmup)
  ours_times, ours_last, ours_cpu = timed_with_cpu_share(ours.run, args.steps)
  peer.run(args.warmup)
  peer_times, peer_last, peer_cpu = timed_with_cpu_share(peer.run, args.steps)

  ours_result = step_lib.step_result(ours, ours_times, ours_last, peak, freeze_image=freeze_image,
                                  captions=captions)
  ours_result.update(side="semclip_jax", first_loss=ours_first["loss"],
                     first_grad_norm=ours_first["grad_norm"], first_step_s=ours_first_times[0],
                     process_cpu_per_wall_s=ours_cpu)

  model_config = peer.model_config
  b, length = args.batch_size, peer.text_length
  step_flops = flops.train_step_flops(model_config, b, length, freeze_image)
  peer_result = {
      "what": "step", "side": "open_clip", "preset": args.preset, "batch_size": b,
      "dtype": "float32", "towers": towers, "loss": f"{args.loss} (paper_compat)",
      "text_length": length, "full_length": length, "captions": captions,
      **results_lib.rate_fields(b, peer_times, step_flops, peak),
      "torch_matmul_flops_per_s": peak.get("torch_flops_per_s"), "setup_s": peer.setup_s,
      "loss_value": peer_last["loss"], "first_loss": peer_first["loss"],
      "first_grad_norm": peer_first["grad_norm"], "first_step_s": peer_first_times[0],
      "image_forward": "torch.no_grad (tower frozen)" if peer.freeze_image else "trained",
      "process_cpu_per_wall_s": peer_cpu,
  }
  loss_diff = rel_diff(ours_first["loss"], peer_first["loss"])
  comparison = {
      "what": "peer_ratio", "preset": args.preset, "batch_size": b, "towers": towers,
      "ours_samples_per_s": ours_result["samples_per_s"],
      "open_clip_samples_per_s": peer_result["samples_per_s"],
      "ratio_samples_per_s": ours_result["samples_per_s"] / peer_result["samples_per_s"],
      "ours_text_length": ours_result["text_length"], "open_clip_text_length": length,
      "ours_first_loss": ours_first["loss"], "open_clip_first_loss": peer_first["loss"],
      "first_loss_rel_diff": loss_diff, "loss_rtol": args.loss_rtol,
      "loss_match": loss_diff <= args.loss_rtol,
      "first_grad_norm_rel_diff": rel_diff(ours_first["grad_norm"], peer_first["grad_norm"]),
      "steps_each": 1 + args.warmup + args.steps,
      # The last step's loss (after steps_each − 1 updates): the two sides stayed together.
      "ours_last_loss": ours_last["loss"], "open_clip_last_loss": peer_last["loss"],
      "last_loss_rel_diff": rel_diff(ours_last["loss"], peer_last["loss"]),
  }
  return [ours_result, peer_result, comparison]


def versions() -> dict[str, str]:
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "torch": torch.__version__, "open_clip": open_clip.__version__}


def print_table(peak: dict[str, Any], results: list[dict[str, Any]]) -> None:
  torch_peak = peak.get("torch_flops_per_s")
  print(f"peak   {peak['dtype']} {peak['n']}³ matmul: XLA {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s"
        + (f", torch {torch_peak / 1e9:,.1f} GFLOP/s" if torch_peak else "")
        + " (MFU of both sides is quoted against XLA's)")
  for r in results:
    if r["what"] == "step":
      print(f"{r['side']:<12} {r['preset']} B={r['batch_size']} towers={r['towers']:<4} "
            f"L={r['text_length']:>2}/{r['full_length']}: {r['step_s_median']:8.3f} s/step "
            f"(min {r['step_s_min']:.3f}), {r['samples_per_s']:8.2f} samples/s, "
            f"{r['model_flops'] / 1e9:,.1f} GFLOP/step, {results_lib.mfu_text(r)}, "
            f"{r['process_cpu_per_wall_s']:.2f} CPU-s per s, first-step loss {r['first_loss']:.6f}")
    elif r["what"] == "peer_ratio":
      verdict = "ok" if r["loss_match"] else f"MISMATCH (> {r['loss_rtol']:g})"
      print(f"{'ours/open_clip':<12} towers={r['towers']:<4} samples/s ratio "
            f"{r['ratio_samples_per_s']:.2f}×; first-step losses {r['ours_first_loss']:.6f} vs "
            f"{r['open_clip_first_loss']:.6f}, rel diff {r['first_loss_rel_diff']:.1e} {verdict}; "
            f"grad norm rel diff {r['first_grad_norm_rel_diff']:.1e}; loss of step "
            f"{r['steps_each']} rel diff {r['last_loss_rel_diff']:.1e}")


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.bench.peers", description=__doc__,
                                   formatter_class=HelpFormatter)
  # --paper_compat is implied: both sides compute the paper's loss.
  step_lib.add_step_arguments(parser)
  peak_lib.add_arguments(parser)
  parser.add_argument("--loss_rtol", type=float, default=1e-4,
                      help="largest relative difference of the first-step losses that passes")
  parser.add_argument("--json_out", default=None, help="also append the JSON lines to this file")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = make_parser()
  args = parser.parse_args(argv)
  load_at_start = os.getloadavg()[0]  # before our own work: what other processes were doing
  require_peers()
  if args.dtype != "float32":
    parser.error("the comparison is in float32 (open_clip's step here is float32)")
  if args.loss not in losses.SEMCLIP_VARIANTS:
    parser.error(f"--loss must be one of {sorted(losses.SEMCLIP_VARIANTS)}: the peer computes "
                 "the official SemCLIP loss")
  # XLA's CPU pool uses every core; give torch's intra-op pool as many.
  torch.set_num_threads(os.cpu_count() or 1)

  peak = peak_lib.matmul_peak("float32", n=args.peak_n)
  peak["torch_flops_per_s"] = torch_matmul_peak(peak["n"])
  tokens, captions = step_lib.caption_tokens(args.batch_size, path=args.captions)
  results = []
  for freeze_image in step_lib.freeze_settings(args.towers):
    results += compare(args, freeze_image, tokens, captions, peak)
  results_lib.judge_mfu(results, peak, peak_lib.matmul_peak("float32", n=peak["n"]))

  stamp = {**results_lib.machine_stamp(), **versions(),
           **thread_counts(), "backend": jax.default_backend(),
           "loadavg_1min_at_start": load_at_start}
  print(f"# {stamp['machine']}; jax {stamp['jax']} ({stamp['backend']}, {stamp['xla_cpu_threads']} "
        f"threads), torch {stamp['torch']} ({stamp['torch_threads']} threads), open_clip "
        f"{stamp['open_clip']}")
  if stamp["backend"] != "cpu":
    print(f"WARNING: ours runs on {stamp['backend']}, the peer on this host's CPUs: the ratio "
          "compares hardware, not implementations")
  if load_at_start > BUSY_LOAD:
    print(f"WARNING: load average {load_at_start:.2f} at start: other processes were using the "
          "CPUs, and torch's OpenMP threads slow down far more than XLA's pool when a core is "
          "taken; rerun on an idle machine before quoting the ratio")
  print_table(peak, results)
  results_lib.emit_json_lines(results, stamp, args.json_out)
  failed = [r["towers"] for r in results if r["what"] == "peer_ratio" and not r["loss_match"]]
  if failed:
    print(f"FAILED: first-step losses differ by more than {args.loss_rtol:g} (towers "
          f"{', '.join(failed)}): the two sides do not compute the same step")
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
