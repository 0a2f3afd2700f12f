"""The objective family: CLIP, SigLIP, NegCLIP and SemCLIP (with its ablations), as pure functions.

Every loss takes *unnormalised* embeddings (as the towers return them), normalises them itself and
returns `(loss, metrics)`. Definitions are DESIGN.md section 1.

Sharding. Called with `axis_name=None` a loss sees the whole batch. Called inside `shard_map` with
`axis_name` (the mesh's batch axes) each device passes its local rows; the loss all-gathers the
columns (gradients flow back through the gather), computes its local rows against all columns in
both directions, and averages over the *global* batch with `psum`, so the value equals the
single-device loss. `chunk_size` walks the gathered columns in chunks with an online log-sum-exp,
recomputed in the backward pass, which bounds the logits memory to (local batch × chunk_size).

Temperature. Every loss scales by exp(logit_scale) as is. CLIP's cap of 100 is not a clamp here:
min(logit_scale, log 100) in the forward pass halves the gradient at the cap (where pretrained
weights start) and zeroes it above, so once an update crosses the cap the temperature freezes.
As CLIP and open_clip, the train step clamps the model's parameter to [0, MAX_LOGIT_SCALE] after
each update instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from semclip_jax.models.clip import NORM_EPS, l2_normalize

Array = jax.Array
AxisName = str | Sequence[str] | None
Metrics = dict[str, Array]

MAX_LOGIT_SCALE = math.log(100.0)  # the train step's cap on the model's logit_scale
_MASKED = float(np.finfo(np.float32).min)  # a finite -inf: keeps exp/max gradients NaN-free


# ----------------------------------------------------------------------------------------------
# Small pieces.
# ----------------------------------------------------------------------------------------------
def make_projection(dim: int, k: int, seed: int = 0) -> Array:
  """[dim, k] with orthonormal columns, from a seeded Gaussian orthonormalised by QR."""
  if not 1 <= k <= dim:
    raise ValueError(f"num_projection_vectors must be in [1, {dim}], got {k}")
  if k == 1:
    warnings.warn("num_projection_vectors=1 turns the paraphrase and negation terms into sign "
                  "tests with zero gradient almost everywhere; use 2 or more", stacklevel=2)
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
  return jnp.asarray(q * np.sign(np.diag(r)), jnp.float32)  # sign fix: unique for a given seed


def _gather(x: Array, axis_name: AxisName) -> Array:
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def _global_mean(local_values: Array, axis_name: AxisName) -> Array:
  """Mean over the global batch of a per-row quantity held as local rows."""
  total, count = jnp.sum(local_values), jnp.asarray(local_values.shape[0], jnp.float32)
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / count


def _global_labels(local_batch: int, axis_name: AxisName) -> Array:
  """Global column index of each local row's positive: rows are gathered in device order."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  return offset + jnp.arange(local_batch)


def _cosine(a: Array, b: Array) -> Array:
  """Row-wise cosine; scale-invariant, so normalising a or b first changes only the eps."""
  return jnp.sum(a * b, -1) / jnp.maximum(jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1),
                                          NORM_EPS ** 2)


# ----------------------------------------------------------------------------------------------
# Rows against (gathered) columns, whole or in chunks.
# ----------------------------------------------------------------------------------------------
class RowStats(NamedTuple):
  """Per local row: the row's loss, its positive logit, its largest negative logit, Σ logits."""
  loss: Array
  pos: Array
  max_neg: Array
  logit_sum: Array


def _row_stats(rows: Array, cols: Array, labels: Array, scale: Array, bias: Array | None,
               chunk_size: int | None, axis_name: AxisName = None) -> RowStats:
  """Softmax cross-entropy (bias None) or summed pairwise sigmoid loss of each row over columns.

  rows [b, D], cols [N, D], labels [b] (index of each row's positive column).
  """
  sigmoid = bias is not None
  n, c = cols.shape[0], min(chunk_size or cols.shape[0], cols.shape[0])
  num_chunks = -(-n // c)
  cols = jnp.pad(cols, ((0, num_chunks * c - n), (0, 0))).reshape(num_chunks, c, -1)
  b = rows.shape[0]

  def chunk(carry, xs):
    m, acc, pos, max_neg, logit_sum = carry
    cols_c, start = xs
    col = start + jnp.arange(c)
    logits = scale * rows @ cols_c.T + (bias if sigmoid else 0.0)  # [b, c]
    valid = (col < n)[None, :]
    is_pos = col[None, :] == labels[:, None]
    pos = pos + jnp.sum(jnp.where(is_pos, logits, 0.0), -1)
    max_neg = jnp.maximum(max_neg, jnp.max(jnp.where(valid & ~is_pos, logits, _MASKED), -1))
    logit_sum = logit_sum + jnp.sum(jnp.where(valid, logits, 0.0), -1)
    if sigmoid:  # −log σ(±logit), + for the positive pair
      acc = acc + jnp.sum(jnp.where(valid, -jax.nn.log_sigmoid(jnp.where(is_pos, logits, -logits)),
                                    0.0), -1)
    else:  # online log-sum-exp
      m_new = jnp.maximum(m, jnp.max(jnp.where(valid, logits, _MASKED), -1))
      acc = acc * jnp.exp(m - m_new) + jnp.sum(jnp.where(valid, jnp.exp(logits - m_new[:, None]),
                                                         0.0), -1)
      m = m_new
    return (m, acc, pos, max_neg, logit_sum), None

  zeros = jnp.zeros((b,), jnp.float32)
  init = (jnp.full((b,), _MASKED), zeros, zeros, jnp.full((b,), _MASKED), zeros)
  if axis_name is not None:  # inside shard_map the carry holds per-device rows
    init = jax.lax.pcast(init, axis_name, to="varying")
  starts = jnp.arange(num_chunks) * c
  if num_chunks == 1:
    (m, acc, pos, max_neg, logit_sum), _ = chunk(init, (cols[0], starts[0]))
  else:  # remat: the backward pass recomputes each chunk's logits instead of storing them all
    (m, acc, pos, max_neg, logit_sum), _ = jax.lax.scan(jax.checkpoint(chunk), init, (cols, starts))
  loss = acc if sigmoid else m + jnp.log(acc) - pos
  return RowStats(loss, pos, max_neg, logit_sum)


def _contrastive_metrics(prefix: str, stats: RowStats, num_cols: int, axis_name: AxisName
                         ) -> Metrics:
  return {
      f"{prefix}_loss": _global_mean(stats.loss, axis_name),
      # A tie with a negative counts as a failure.
      f"{prefix}_acc": _global_mean((stats.pos > stats.max_neg).astype(jnp.float32), axis_name),
      f"{prefix}_neg_logit_mean": _global_mean((stats.logit_sum - stats.pos) / (num_cols - 1),
                                               axis_name),
  }


def _infonce(zi: Array, zt: Array, scale: Array, axis_name: AxisName, chunk_size: int | None,
             extra_text_cols: Array | None = None) -> tuple[Array, Metrics]:
  """Symmetric InfoNCE on (already normalised or deliberately raw) embeddings."""
  labels = _global_labels(zi.shape[0], axis_name)
  text_cols, image_cols = _gather(zt, axis_name), _gather(zi, axis_name)
  if extra_text_cols is not None:
    text_cols = jnp.concatenate([text_cols, _gather(extra_text_cols, axis_name)])
  i2t = _row_stats(zi, text_cols, labels, scale, None, chunk_size, axis_name)
  t2i = _row_stats(zt, image_cols, labels, scale, None, chunk_size, axis_name)
  metrics = {**_contrastive_metrics("i2t", i2t, text_cols.shape[0], axis_name),
             **_contrastive_metrics("t2i", t2i, image_cols.shape[0], axis_name),
             "pos_logit_mean": _global_mean(i2t.pos, axis_name), "logit_scale": scale}
  loss = 0.5 * (metrics["i2t_loss"] + metrics["t2i_loss"])
  return loss, {**metrics, "contrastive_loss": loss}


# ----------------------------------------------------------------------------------------------
# The losses.
# ----------------------------------------------------------------------------------------------
def clip_loss(zi: Array, zt: Array, logit_scale: Array, *, axis_name: AxisName = None,
              chunk_size: int | None = None) -> tuple[Array, Metrics]:
  """CLIP's symmetric InfoNCE. zi, zt: [b, D] (local rows); logit_scale: scalar (log of scale)."""
  loss, metrics = _infonce(l2_normalize(zi), l2_normalize(zt), jnp.exp(logit_scale), axis_name,
                           chunk_size)
  return loss, {**metrics, "loss": loss}


def negclip_loss(zi: Array, zt: Array, zn: Array, logit_scale: Array, *,
                 axis_name: AxisName = None, chunk_size: int | None = None
                 ) -> tuple[Array, Metrics]:
  """NegCLIP: negated captions as extra hard-negative columns of the image->text softmax."""
  loss, metrics = _infonce(l2_normalize(zi), l2_normalize(zt), jnp.exp(logit_scale), axis_name,
                           chunk_size, extra_text_cols=l2_normalize(zn))
  return loss, {**metrics, "loss": loss}


def siglip_loss(zi: Array, zt: Array, logit_scale: Array, logit_bias: Array, *,
                axis_name: AxisName = None, chunk_size: int | None = None
                ) -> tuple[Array, Metrics]:
  """SigLIP: Σ_j −log σ(±(s·cos(i, j) + bias)) per image, averaged over the global batch."""
  scale = jnp.exp(logit_scale)
  zi, zt = l2_normalize(zi), l2_normalize(zt)
  cols = _gather(zt, axis_name)
  stats = _row_stats(zi, cols, _global_labels(zi.shape[0], axis_name), scale, logit_bias,
                     chunk_size, axis_name)
  metrics = _contrastive_metrics("i2t", stats, cols.shape[0], axis_name)
  loss = metrics.pop("i2t_loss")
  return loss, {**metrics, "loss": loss, "pos_logit_mean": _global_mean(stats.pos, axis_name),
                "logit_scale": scale, "logit_bias": logit_bias}


def semclip_loss(zi: Array, zt: Array, zp: Array, zn: Array, logit_scale: Array, projection: Array,
                 *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                 normalize_projections: bool = True, image_margin: float = 0.0,
                 image_margin_weight: float = 0.0, paper_compat: bool = False,
                 axis_name: AxisName = None, chunk_size: int | None = None
                 ) -> tuple[Array, Metrics]:
  """SemCLIP: L = (α·L_clip + β·L_para + γ·L_neg [+ δ·L_margin]) / (α + β + γ [+ δ]).

  zi, zt, zp, zn: [b, D] image, original, paraphrase, negation embeddings (local rows).
  projection: [D, K] orthonormal columns P; the text terms compare p(z) = Pᵀz of unit z.
  image_margin_weight δ > 0 adds mean(max(0, m − (cos(zi, zt) − cos(zi, zn)))) with m =
  `image_margin` (ours, beyond the paper). `paper_compat` reproduces the official code's
  contrastive term: raw (unnormalised) embeddings, where the caller passes its separate
  temperature parameter as `logit_scale`.
  """
  weights = {"contrastive_loss": alpha, "para_loss": beta, "neg_loss": gamma,
             "margin_loss": image_margin_weight}
  if min(weights.values()) < 0 or sum(weights.values()) <= 0:
    raise ValueError(f"loss weights must be >= 0 with a positive sum, got {weights}")
  ni, nt, npara, nneg = (l2_normalize(z) for z in (zi, zt, zp, zn))
  contrastive, metrics = _infonce(*((zi, zt) if paper_compat else (ni, nt)), jnp.exp(logit_scale),
                                  axis_name, chunk_size)

  project = lambda z: l2_normalize(z @ projection) if normalize_projections else z @ projection
  pt, pp, pn = project(nt), project(npara), project(nneg)
  proj_cos_para, proj_cos_neg = _cosine(pt, pp), _cosine(pt, pn)
  img_orig, img_neg = jnp.sum(ni * nt, -1), jnp.sum(ni * nneg, -1)
  terms = {
      "contrastive_loss": contrastive,
      "para_loss": _global_mean(1.0 - proj_cos_para, axis_name),
      "neg_loss": _global_mean(jnp.maximum(proj_cos_neg, 0.0), axis_name),
      "margin_loss": _global_mean(jnp.maximum(image_margin - (img_orig - img_neg), 0.0),
                                  axis_name),
  }
  total = sum(weights.values())
  # Terms of weight 0 are left out, so beta = gamma = 0 gives clip_loss's value exactly.
  loss = sum((w / total) * terms[k] for k, w in weights.items() if w > 0)
  metrics.update(terms)
  metrics.update({
      "loss": loss,
      "proj_cos_orig_para": _global_mean(proj_cos_para, axis_name),
      "proj_cos_orig_neg": _global_mean(proj_cos_neg, axis_name),
      "cos_orig_para": _global_mean(jnp.sum(nt * npara, -1), axis_name),
      "cos_orig_neg": _global_mean(jnp.sum(nt * nneg, -1), axis_name),
      # The CC-Neg criterion on this batch: cos(image, original) > cos(image, negation).
      "img_orig_over_neg_acc": _global_mean((img_orig > img_neg).astype(jnp.float32), axis_name),
  })
  return loss, metrics


# The paper's named ablations: (alpha, beta, gamma).
SEMCLIP_VARIANTS: dict[str, tuple[float, float, float]] = {
    "clip": (1.0, 0.0, 0.0),
    "paraphrase_only": (1.0, 1.0, 0.0),
    "negation_only": (1.0, 0.0, 1.0),
    "semclip": (1.0, 1.0, 1.0),
}


def variant_weights(name: str) -> dict[str, Any]:
  """alpha/beta/gamma keyword arguments of `semclip_loss` for a named variant."""
  if name not in SEMCLIP_VARIANTS:
    raise ValueError(f"unknown SemCLIP variant {name!r}; choose one of {sorted(SEMCLIP_VARIANTS)}")
  return dict(zip(("alpha", "beta", "gamma"), SEMCLIP_VARIANTS[name]))


def configured_weights(loss_config: Mapping[str, Any]) -> dict[str, float]:
  """alpha/beta/gamma a SemCLIP-family loss config trains with: its variant's (for
  semclip_image_margin, semclip's) with the config's set fields over them."""
  name = loss_config["name"]
  weights = variant_weights("semclip" if name == "semclip_image_margin" else name)
  weights.update({k: loss_config[k] for k in weights if loss_config.get(k) is not None})
  return weights
