"""The two-tower CLIP model with its learned temperature."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from semclip_jax.models.model_config import CLIPConfig
from semclip_jax.models.text import TextTransformer
from semclip_jax.models.vit import VisionTransformer
from semclip_jax.sharding import path_str

NORM_EPS = 1e-6  # as the official SemCLIP code's F.normalize(eps=1e-6)


def l2_normalize(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  """[..., D] -> x / max(|x|, eps) along the last axis (torch's F.normalize).

  The one normalisation of the embedding space: losses, evaluators and `clip_logits` all use it.
  It lives with the model, the lowest layer they share, so no import circle can form.
  """
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CLIP(nnx.Module):
  """Image and text towers mapping into a shared `projection_dim` space.

  Parameters are float32; `dtype` is the compute dtype of matmuls and activations. Embeddings come
  back float32 and unnormalised; losses and metrics L2-normalise them.
  """

  def __init__(self, config: CLIPConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.vision = VisionTransformer(config.vision, config.projection_dim, dtype=dtype, rngs=rngs)
    self.text = TextTransformer(config.text, config.projection_dim, dtype=dtype, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init_value, jnp.float32))

  def encode_image(self, images: jax.Array) -> jax.Array:
    """images: float [B, H, W, C] normalised with CLIP mean/std -> [B, D]."""
    return self.vision(images)

  def encode_text(self, token_ids: jax.Array) -> jax.Array:
    """token_ids: int32 [B, L] -> [B, D]."""
    return self.text(token_ids)

  def __call__(self, images: jax.Array | None = None, texts: jax.Array | None = None
               ) -> tuple[jax.Array | None, jax.Array | None]:
    """Returns (image embeddings or None, text embeddings or None)."""
    zi = None if images is None else self.encode_image(images)
    zt = None if texts is None else self.encode_text(texts)
    return zi, zt


def clip_logits(zi: jax.Array, zt: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """[B, D] x [N, D] -> [B, N] image-to-text logits exp(logit_scale) * cos, as transformers' CLIP."""
  zi, zt = l2_normalize(zi), l2_normalize(zt)  # eps changes nothing above norm 1e-6
  # Scale after the product, in transformers' order, so float32 rounding matches theirs.
  return (zi @ zt.T) * jnp.exp(logit_scale)


def create_clip(config: CLIPConfig, *, seed: int = 0, dtype=jnp.float32) -> CLIP:
  return CLIP(config, dtype=dtype, rngs=nnx.Rngs(seed))


def clip_from_arrays(config: CLIPConfig, arrays: Mapping[str, Any], *, dtype=jnp.float32) -> CLIP:
  """A `CLIP` of `config` whose parameters are `arrays` ({dotted path: array}, every parameter,
  shapes already checked by the caller), as float32; nothing is initialised at random."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: CLIP(config, dtype=dtype, rngs=nnx.Rngs(0))))
  values = [(path, variable.replace(jnp.asarray(arrays[path_str(path)], jnp.float32)))
            for path, variable in nnx.to_flat_state(state)]
  return nnx.merge(graphdef, nnx.from_flat_state(values))
