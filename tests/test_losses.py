"""Losses against straightforward NumPy implementations written here, and their chunked forms."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semclip_jax import losses

from loss_references import np_clip, np_cos, np_negclip, np_semclip, np_siglip, np_unit

B, D = 12, 16


def _embeddings(seed, n=4, b=B, d=D):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(b, d)).astype(np.float32) * rng.uniform(0.5, 3) for _ in range(n)]


def _close(ours, reference, atol=1e-5):
  np.testing.assert_allclose(float(ours), reference, rtol=0, atol=atol)


# ---- tests ----
@pytest.mark.parametrize("seed,log_scale", [(0, np.log(1 / 0.07)), (1, 0.0), (2, 5.0)])
def test_clip_loss(seed, log_scale):
  zi, zt, _, _ = _embeddings(seed)
  loss, metrics = losses.clip_loss(zi, zt, log_scale)
  _close(loss, np_clip(zi, zt, log_scale))  # log_scale 5.0: scale 148, not clamped at 100
  logits = np.exp(log_scale) * np_unit(zi) @ np_unit(zt).T
  _close(metrics["pos_logit_mean"], np.mean(np.diag(logits)), 1e-4)
  _close(metrics["i2t_neg_logit_mean"], (logits.sum() - np.trace(logits)) / (B * (B - 1)), 1e-4)
  _close(metrics["i2t_acc"], np.mean(logits.argmax(1) == np.arange(B)))
  _close(metrics["t2i_acc"], np.mean(logits.T.argmax(1) == np.arange(B)))


@pytest.mark.parametrize("seed", [0, 1])
def test_siglip_loss(seed):
  zi, zt, _, _ = _embeddings(seed)
  loss, _ = losses.siglip_loss(zi, zt, np.log(10.0), -10.0)
  _close(loss, np_siglip(zi, zt, np.log(10.0), -10.0), 1e-4)
  loss, _ = losses.siglip_loss(zi, zt, 1.3, 0.7)
  _close(loss, np_siglip(zi, zt, 1.3, 0.7))


def test_negclip_loss():
  zi, zt, _, zn = _embeddings(3)
  loss, metrics = losses.negclip_loss(zi, zt, zn, 2.0)
  _close(loss, np_negclip(zi, zt, zn, 2.0))
  s = np.exp(2.0)
  i2t = s * np_unit(zi) @ np.concatenate([np_unit(zt), np_unit(zn)]).T
  _close(metrics["i2t_neg_logit_mean"], (i2t.sum() - np.trace(i2t[:, :B])) / (B * (2 * B - 1)), 1e-4)


@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("variant,weights", [
    ("clip", (1.0, 0.0, 0.0)), ("paraphrase_only", (1.0, 1.0, 0.0)),
    ("negation_only", (1.0, 0.0, 1.0)), ("semclip", (1.0, 1.0, 1.0))])
def test_semclip_loss_variants(k, normalize, variant, weights):
  zi, zt, zp, zn = _embeddings(k + 10 * normalize)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    proj = losses.make_projection(D, k, seed=k)
  weights = dict(zip(("alpha", "beta", "gamma"), weights))  # the paper's ablation table, literally
  assert losses.variant_weights(variant) == weights
  assert set(losses.SEMCLIP_VARIANTS) == {"clip", "paraphrase_only", "negation_only", "semclip"}
  loss, metrics = losses.semclip_loss(zi, zt, zp, zn, 2.5, proj, **weights,
                                      normalize_projections=normalize)
  _close(loss, np_semclip(zi, zt, zp, zn, 2.5, proj, **weights))
  pt, pp, pn = (np_unit(z) @ np.float64(proj) for z in (zt, zp, zn))
  _close(metrics["proj_cos_orig_neg"], np.mean(np_cos(pt, pn)))
  _close(metrics["proj_cos_orig_para"], np.mean(np_cos(pt, pp)))
  _close(metrics["cos_orig_neg"], np.mean(np_cos(zt, zn)))
  _close(metrics["img_orig_over_neg_acc"], np.mean(np_cos(zi, zt) > np_cos(zi, zn)))


def test_semclip_custom_weights_image_margin_and_paper_compat():
  zi, zt, zp, zn = _embeddings(7)
  proj = losses.make_projection(D, 3, seed=1)
  loss, metrics = losses.semclip_loss(zi, zt, zp, zn, 1.0, proj, alpha=2.0, beta=0.5, gamma=3.0,
                                      image_margin=0.3, image_margin_weight=1.5)
  _close(loss, np_semclip(zi, zt, zp, zn, 1.0, proj, 2.0, 0.5, 3.0, margin=0.3, delta=1.5))
  _close(metrics["margin_loss"], np.mean(np.maximum(0.3 - (np_cos(zi, zt) - np_cos(zi, zn)), 0)))
  # paper_compat: raw embeddings (scale log 1/0.07 -> 14.3; 5.0 -> 148).
  for log_scale in (np.log(1 / 0.07), 5.0):
    loss, _ = losses.semclip_loss(zi, zt, zp, zn, log_scale, proj, paper_compat=True)
    _close(loss, np_semclip(zi, zt, zp, zn, log_scale, proj, 1, 1, 1, paper_compat=True), 1e-4)


def test_semclip_without_text_terms_is_exactly_clip():
  zi, zt, zp, zn = _embeddings(5)
  proj = losses.make_projection(D, 2)
  semclip, _ = losses.semclip_loss(zi, zt, zp, zn, 2.6592, proj, beta=0.0, gamma=0.0)
  clip, _ = losses.clip_loss(zi, zt, 2.6592)
  assert float(semclip) == float(clip)
  grad_semclip = jax.grad(lambda a: losses.semclip_loss(a, zt, zp, zn, 2.6592, proj, beta=0.0,
                                                        gamma=0.0)[0])(zi)
  np.testing.assert_array_equal(grad_semclip, jax.grad(lambda a: losses.clip_loss(a, zt, 2.6592)[0])(zi))


def test_normalize_projections_changes_nothing_but_eps():
  zi, zt, zp, zn = _embeddings(6)
  proj = losses.make_projection(D, 4)
  fn = lambda flag: losses.semclip_loss(zi, zt, zp, zn, 2.0, proj, normalize_projections=flag)[0]
  np.testing.assert_allclose(fn(True), fn(False), rtol=0, atol=1e-6)


def test_make_projection():
  p = np.asarray(losses.make_projection(512, 2, seed=3))
  assert p.shape == (512, 2) and p.dtype == np.float32
  np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-6)
  np.testing.assert_array_equal(p, losses.make_projection(512, 2, seed=3))
  assert not np.allclose(p, losses.make_projection(512, 2, seed=4))
  with pytest.warns(UserWarning, match="sign tests with zero gradient"):
    losses.make_projection(16, 1)
  with pytest.raises(ValueError, match="num_projection_vectors"):
    losses.make_projection(4, 5)


def test_ties_count_as_failures():
  same = np.ones((4, D), np.float32)
  _, metrics = losses.semclip_loss(same, same, same, same, 2.0, losses.make_projection(D, 2))
  assert float(metrics["i2t_acc"]) == 0.0 and float(metrics["t2i_acc"]) == 0.0
  assert float(metrics["img_orig_over_neg_acc"]) == 0.0


def test_bad_weights():
  zi, zt, zp, zn = _embeddings(0)
  with pytest.raises(ValueError, match="loss weights"):
    losses.semclip_loss(zi, zt, zp, zn, 1.0, losses.make_projection(D, 2), alpha=0, beta=0, gamma=0)


@pytest.mark.parametrize("name", ["clip", "siglip", "negclip", "semclip"])
@pytest.mark.parametrize("chunk", [1, 5, 7, 12, 64])
def test_chunked_equals_full(name, chunk):
  zi, zt, zp, zn = _embeddings(11)
  proj = losses.make_projection(D, 2)
  fns = {
      "clip": lambda a, c: losses.clip_loss(a, zt, 2.0, chunk_size=c),
      "siglip": lambda a, c: losses.siglip_loss(a, zt, 2.0, -1.0, chunk_size=c),
      "negclip": lambda a, c: losses.negclip_loss(a, zt, zn, 2.0, chunk_size=c),
      "semclip": lambda a, c: losses.semclip_loss(a, zt, zp, zn, 2.0, proj, chunk_size=c),
  }
  full_loss, full_metrics = fns[name](zi, None)
  chunk_loss, chunk_metrics = fns[name](zi, chunk)
  _close(chunk_loss, float(full_loss))
  for key in full_metrics:
    _close(chunk_metrics[key], float(full_metrics[key]), 1e-4)
  g_full = jax.grad(lambda a: fns[name](a, None)[0])(jnp.asarray(zi))
  g_chunk = jax.grad(lambda a: fns[name](a, chunk)[0])(jnp.asarray(zi))
  np.testing.assert_allclose(g_chunk, g_full, rtol=0, atol=1e-5)
