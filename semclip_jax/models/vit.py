"""CLIP's image tower: a ViT with class token, pre-LN and a linear projection of the class token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semclip_jax.models.layers import Encoder, layer_norm, normal_param
from semclip_jax.models.model_config import VisionConfig


class VisionTransformer(nnx.Module):

  def __init__(self, cfg: VisionConfig, projection_dim: int, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    d, p = cfg.hidden_size, cfg.patch_size
    if cfg.image_size % p:
      raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {p}")
    self.cfg = cfg
    self.dtype = dtype
    num_positions = (cfg.image_size // p) ** 2 + 1
    # A stride-p convolution is the patch embedding; its kernel is HWIO (HF's is OIHW).
    self.patch_embed = nnx.Conv(cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID",
                                use_bias=False, dtype=dtype, rngs=rngs)
    self.class_embedding = normal_param(rngs, (d,), d**-0.5)
    self.pos_embedding = normal_param(rngs, (num_positions, d), 0.02)
    self.pre_ln = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
    self.encoder = Encoder.from_config(cfg, dtype=dtype, rngs=rngs)
    self.post_ln = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
    self.proj = nnx.Linear(d, projection_dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images: float [B, H, W, C], already normalised -> [B, projection_dim] (not L2-normalised)."""
    expected = (self.cfg.image_size, self.cfg.image_size, self.cfg.num_channels)
    if tuple(images.shape[1:]) != expected:
      raise ValueError(f"images must be [B, {expected[0]}, {expected[1]}, {expected[2]}] (NHWC), "
                       f"got {tuple(images.shape)}")
    x = self.patch_embed(images.astype(self.dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...].astype(x.dtype)
    x = self.encoder(self.pre_ln(x))
    return self.proj(self.post_ln(x[:, 0])).astype(jnp.float32)
