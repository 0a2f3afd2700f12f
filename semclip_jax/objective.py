"""Which loss a config asks for, the parameters that belong to it, and its sharded application.

`Objective` owns the loss-side state: SemCLIP's projection P (fixed by default, learnable on
request), SigLIP's own scale and bias, and `paper_compat`'s separate temperature. The CLIP model's
own `logit_scale` is passed in at call time. Only that one is kept within [0, log 100], by the
train step after each update; the Objective's temperatures are never clamped, as in big_vision's
SigLIP and the official SemCLIP code. Every ablation is one config override:
`--config.loss.name=negation_only`.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from semclip_jax import losses
from semclip_jax.sharding import BATCH_AXES

SEMCLIP_FAMILY = (*losses.SEMCLIP_VARIANTS, "semclip_image_margin")
LOSS_NAMES = (*SEMCLIP_FAMILY, "negclip", "siglip")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "semclip"  # one of LOSS_NAMES: clip, paraphrase_only, negation_only, semclip, ...
  # Weights of the contrastive, paraphrase and negation terms; unset = the named variant's.
  c.alpha = ml_collections.config_dict.placeholder(float)
  c.beta = ml_collections.config_dict.placeholder(float)
  c.gamma = ml_collections.config_dict.placeholder(float)
  c.num_projection_vectors = 2  # K, the columns of the projection P (1 warns: no gradient)
  c.normalize_projections = True  # L2-normalise Pᵀz before the cosine (the official flag)
  c.learnable_projection = False  # P is a trained parameter instead of a fixed basis
  c.projection_seed = 0  # seed of the Gaussian that is orthonormalised into P
  c.image_margin = 0.2  # m of semclip_image_margin's hinge on cos(i, t) − cos(i, n)
  c.image_margin_weight = 1.0  # its weight δ (semclip_image_margin only)
  c.paper_compat = False  # the official code's contrastive term: raw embeddings, own temperature
  c.paper_temperature = 0.07  # paper_compat: initial temperature, scale = 1/T, unclamped
  c.siglip_init_logit_scale = math.log(10.0)  # SigLIP's initial log scale
  c.siglip_init_logit_bias = -10.0  # SigLIP's initial bias
  c.chunk_size = ml_collections.config_dict.placeholder(int)  # columns per logits chunk; unset = all
  return c


class ProjectionBasis(nnx.Variable):
  """The fixed projection P: state that is checkpointed but never trained."""


class Objective(nnx.Module):
  """The configured loss and its own parameters. Call inside jit with the model's embeddings."""

  def __init__(self, config: ml_collections.ConfigDict, embed_dim: int):
    if config.name not in LOSS_NAMES:
      raise ValueError(f"unknown loss {config.name!r}; choose one of {list(LOSS_NAMES)}")
    self.name = config.name
    self.chunk_size = config.chunk_size
    if self.name in SEMCLIP_FAMILY:
      self.weights = tuple(losses.configured_weights(config).items())
      self.margin = (config.image_margin,
                     config.image_margin_weight if self.name == "semclip_image_margin" else 0.0)
      self.normalize_projections = config.normalize_projections
      with warnings.catch_warnings():
        warnings.simplefilter("always")  # the K = 1 warning must reach every run that asks for it
        basis = losses.make_projection(embed_dim, config.num_projection_vectors,
                                       config.projection_seed)
      self.projection = (nnx.Param if config.learnable_projection else ProjectionBasis)(basis)
      self.paper_compat = config.paper_compat
      if self.paper_compat:  # trained and weight-decayed, as the official code's temperature
        self.compat_logit_scale = nnx.Param(jnp.asarray(-math.log(config.paper_temperature)))
    elif self.name == "siglip":
      self.logit_scale = nnx.Param(jnp.asarray(config.siglip_init_logit_scale, jnp.float32))
      self.logit_bias = nnx.Param(jnp.asarray(config.siglip_init_logit_bias, jnp.float32))

  def _loss_fn(self, model_logit_scale: jax.Array):
    """(pure loss of zi, zt, zp, zn, *scalars, axis_name) and the scalars it takes."""
    if self.name == "siglip":
      fn = lambda zi, zt, zp, zn, s, b, axis_name: losses.siglip_loss(
          zi, zt, s, b, axis_name=axis_name, chunk_size=self.chunk_size)
      return fn, (self.logit_scale[...], self.logit_bias[...])
    if self.name == "negclip":
      fn = lambda zi, zt, zp, zn, s, axis_name: losses.negclip_loss(
          zi, zt, zn, s, axis_name=axis_name, chunk_size=self.chunk_size)
      return fn, (model_logit_scale,)
    fn = lambda zi, zt, zp, zn, s, proj, axis_name: losses.semclip_loss(
        zi, zt, zp, zn, s, proj, **dict(self.weights), normalize_projections=self.normalize_projections,
        image_margin=self.margin[0], image_margin_weight=self.margin[1],
        paper_compat=self.paper_compat, axis_name=axis_name, chunk_size=self.chunk_size)
    scale = self.compat_logit_scale[...] if self.paper_compat else model_logit_scale
    return fn, (scale, self.projection[...])

  def __call__(self, zi: jax.Array, zt: jax.Array, zp: jax.Array, zn: jax.Array,
               model_logit_scale: jax.Array, mesh: Mesh | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeddings [B, D] (global arrays) -> (loss, metrics), sharded over `mesh` when given."""
    fn, scalars = self._loss_fn(model_logit_scale)
    if mesh is None:
      return fn(zi, zt, zp, zn, *scalars, axis_name=None)
    batch = P(BATCH_AXES)
    sharded = jax.shard_map(functools.partial(fn, axis_name=BATCH_AXES), mesh=mesh,
                            in_specs=(batch,) * 4 + (P(),) * len(scalars), out_specs=P())
    return sharded(zi, zt, zp, zn, *scalars)
