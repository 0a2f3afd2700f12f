"""The optimizer from config: AdamW, warmup + cosine/constant schedule, clipping, decay mask, freezing.

Defaults are the SemCLIP paper's: AdamW lr 5e-5, weight decay 0.2, betas (0.9, 0.999), 50 warmup
steps then cosine to 0, global-norm clipping at 1.0, image tower frozen when `freeze` says so.

Gradient accumulation (`grad_accum_steps` = k) happens inside the train step: the batch is split
into k micro-batches whose gradients are averaged before one update. For the per-sample terms
(paraphrase, negation, margin) this is exactly the update of one k-times larger batch. The
contrastive term is not: each micro-batch's softmax sees only its own B in-batch negatives, not
k·B, so accumulation saves memory but does not buy the larger batch's harder contrastive task.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import optax
from flax import nnx

from semclip_jax.sharding import path_str

# Parameters that are never weight-decayed: biases, LayerNorm scales, position embeddings, the
# class token, temperatures and biases of the logits, SemCLIP's projection basis.
NO_DECAY = (r"\.bias$", r"_ln\.scale$", r"\.ln\d\.scale$", r"pos_embedding$", r"class_embedding$",
            r"(^|\.)logit_scale$", r"(^|\.)logit_bias$", r"(^|\.)projection$")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.learning_rate = 5e-5  # peak learning rate
  c.schedule = "cosine"  # after warmup: "cosine" (to 0 at the last step) or "constant"
  c.warmup_steps = 50  # linear warmup from 0
  c.weight_decay = 0.2  # AdamW's decoupled decay, masked by NO_DECAY unless decay_all
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.freeze = ()  # regexes over dotted parameter paths, e.g. (r"^model\.vision\.",) (the paper)
  c.decay_compat_temperature = True  # paper_compat: its temperature is decayed, as in the paper
  # paper_compat: decay every trainable tensor (NO_DECAY ignored, temperatures included), as the
  # official code's AdamW over all of self.parameters(); frozen tensors still get no update.
  c.decay_all = False
  c.grad_accum_steps = 1  # micro-batches per update (see module docstring)
  return c


def is_frozen(path: Sequence[Any], patterns: Sequence[str]) -> bool:
  return any(re.search(p, path_str(path)) for p in patterns)


def trainable_filter(patterns: Sequence[str]) -> nnx.filterlib.Filter:
  """nnx filter of the parameters the optimizer updates: every Param not matched by `patterns`."""
  patterns = tuple(patterns)
  return nnx.All(nnx.Param, lambda path, _: not is_frozen(path, patterns))


def decay_mask(params: Any, decay_compat_temperature: bool = True, decay_all: bool = False) -> Any:
  """Tree of bools over `params`: True where weight decay applies.

  `decay_all` overrides both NO_DECAY and `decay_compat_temperature`: the official code hands all
  its parameters to one AdamW group, so nothing trainable escapes the decay.
  """

  def decays(path, _):
    if decay_all:
      return True
    name = path_str(path)
    if name.endswith("compat_logit_scale"):
      return decay_compat_temperature
    return not any(re.search(p, name) for p in NO_DECAY)

  return jax.tree.map_with_path(decays, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, total_steps)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                              max(total_steps, warmup + 1), end_value=0.0)
  if config.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup),
                                 optax.constant_schedule(config.learning_rate)], [warmup])
  raise ValueError(f"unknown schedule {config.schedule!r}; choose 'cosine' or 'constant'")


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with the schedule and the decay mask."""
  adamw = optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay,
                      mask=lambda p: decay_mask(p, config.decay_compat_temperature,
                                                config.decay_all))
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
  return adamw
