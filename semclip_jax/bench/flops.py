"""FLOPs of a SemCLIP train step: counted analytically, and read off a traced program.

Multiply-add = 2 FLOPs; matmuls only: norms, softmax, GELU and the loss are < 1% for these
shapes. `tests/test_bench.py` checks `train_step_flops` against `jaxpr_matmul_flops` of the
trainer's traced step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semclip_jax.models.model_config import CLIPConfig


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
  """Forward FLOPs per image of the patch embedding (a convolution with stride = kernel)."""
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
  Pᵀz of three captions, forward and input gradient. Returns the parts: image, text, loss, total.
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
      (contract, _), _ = params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = int(np.prod(eqn.outvars[0].aval.shape))
      total += 2 * out * int(np.prod([lhs[i] for i in contract]))
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
  """The jaxprs among an equation's parameters (pjit, remat, custom_vjp, scan bodies ...)."""
  subs = []
  for value in params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns"):
        subs.append(item)
  return subs
