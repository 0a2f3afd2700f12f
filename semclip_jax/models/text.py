"""CLIP's text tower: a causal transformer pooled at the end-of-text token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semclip_jax.models.layers import Encoder, layer_norm, normal_param
from semclip_jax.models.model_config import TextConfig

# transformers' convention: configs written before its PR #24773 carry eos_token_id=2.
LEGACY_EOS_TOKEN_ID = 2


def eos_positions(token_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """[B, L] int -> [B] index of the token the text embedding is read from.

  Legacy configs pool at the highest token id (EOS is the largest id in CLIP's vocabulary); current
  ones at the first EOS, since the pad token may equal EOS. Exactly transformers' rule.
  """
  if eos_token_id == LEGACY_EOS_TOKEN_ID:
    return jnp.argmax(token_ids, axis=-1)
  return jnp.argmax(token_ids == eos_token_id, axis=-1)


class TextTransformer(nnx.Module):

  def __init__(self, cfg: TextConfig, projection_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.cfg = cfg
    self.token_embed = nnx.Embed(cfg.vocab_size, d, dtype=dtype,
                                 embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.pos_embedding = normal_param(rngs, (cfg.max_position_embeddings, d), 0.01)
    self.encoder = Encoder.from_config(cfg, dtype=dtype, rngs=rngs)
    self.final_ln = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
    self.proj = nnx.Linear(d, projection_dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    """token_ids: int [B, L] with L <= max_position_embeddings -> [B, projection_dim]."""
    length = token_ids.shape[-1]
    if token_ids.ndim != 2 or length > self.cfg.max_position_embeddings:
      raise ValueError(f"token_ids must be [B, L] with L <= {self.cfg.max_position_embeddings}, "
                       f"got {tuple(token_ids.shape)}")
    x = self.token_embed(token_ids)
    x = x + self.pos_embedding[:length].astype(x.dtype)
    x = self.encoder(x, causal=True)
    # LayerNorm is per token, so normalising only the pooled token equals transformers' order.
    pooled = jnp.take_along_axis(x, eos_positions(token_ids, self.cfg.eos_token_id)[:, None, None],
                                 axis=1)[:, 0]
    return self.proj(self.final_ln(pooled)).astype(jnp.float32)
