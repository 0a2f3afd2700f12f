"""objective.Objective: every loss name pinned to its weights and own parameters, and the loss it
computes against the float64 references of tests/loss_references.py."""

import math
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semclip_jax import objective

from loss_references import np_negclip, np_semclip, np_siglip

B, D = 16, 32
LOG_SCALE = math.log(1 / 0.07)  # the model's logit_scale passed in at call time

# (alpha, beta, gamma, image-margin weight δ) of every SemCLIP-family name, written out literally:
# the paper's ablation table (CLIP; paraphrase only; negation only; SemCLIP) and our margin variant.
SEMCLIP_WEIGHTS = {
    "clip": (1.0, 0.0, 0.0, 0.0),
    "paraphrase_only": (1.0, 1.0, 0.0, 0.0),
    "negation_only": (1.0, 0.0, 1.0, 0.0),
    "semclip": (1.0, 1.0, 1.0, 0.0),
    "semclip_image_margin": (1.0, 1.0, 1.0, 1.0),
}
OTHER_LOSSES = ("negclip", "siglip")


def _objective(name, **changes):
  config = objective.default_config()
  config.name = name
  config.update(changes)
  return objective.Objective(config, D)


def _embeddings(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(B, D)).astype(np.float32) * rng.uniform(0.5, 3) for _ in range(4)]


def _params(module):
  return {"/".join(map(str, path)): v for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_every_loss_name_is_pinned():
  assert set(objective.LOSS_NAMES) == set(SEMCLIP_WEIGHTS) | set(OTHER_LOSSES)


@pytest.mark.parametrize("name", sorted(SEMCLIP_WEIGHTS))
def test_semclip_family_weights_margin_and_parameters(name):
  alpha, beta, gamma, delta = SEMCLIP_WEIGHTS[name]
  obj = _objective(name)
  assert dict(obj.weights) == {"alpha": alpha, "beta": beta, "gamma": gamma}
  assert obj.margin == (0.2, delta)  # default m = 0.2, used only when δ > 0
  assert obj.projection[...].shape == (D, 2)  # K = 2 by default
  assert _params(obj) == {}  # P fixed by default; the model's logit_scale is not the loss's


@pytest.mark.parametrize("name", sorted(SEMCLIP_WEIGHTS))
def test_semclip_family_loss_equals_the_reference_with_literal_weights(name):
  alpha, beta, gamma, delta = SEMCLIP_WEIGHTS[name]
  zi, zt, zp, zn = _embeddings(1)
  obj = _objective(name)
  loss, metrics = obj(zi, zt, zp, zn, jnp.float32(LOG_SCALE))
  reference = np_semclip(zi, zt, zp, zn, LOG_SCALE, np.asarray(obj.projection[...]), alpha, beta,
                         gamma, margin=0.2, delta=delta)
  np.testing.assert_allclose(float(loss), reference, rtol=0, atol=1e-5)
  assert {"contrastive_loss", "para_loss", "neg_loss"} <= set(metrics)


def test_config_weights_override_only_what_they_set():
  obj = _objective("negation_only", alpha=2.0, beta=0.5)
  assert dict(obj.weights) == {"alpha": 2.0, "beta": 0.5, "gamma": 1.0}
  obj = _objective("semclip_image_margin", image_margin=0.3, image_margin_weight=0.25)
  assert obj.margin == (0.3, 0.25)
  assert _objective("semclip", image_margin_weight=0.25).margin == (0.2, 0.0)  # only the margin variant


def test_negclip_uses_the_model_scale_and_has_no_parameters():
  zi, zt, zp, zn = _embeddings(2)
  obj = _objective("negclip")
  assert _params(obj) == {}
  loss, _ = obj(zi, zt, zp, zn, jnp.float32(LOG_SCALE))
  np.testing.assert_allclose(float(loss), np_negclip(zi, zt, zn, LOG_SCALE), rtol=0, atol=1e-5)


def test_siglip_has_its_own_scale_and_bias():
  zi, zt, zp, zn = _embeddings(3)
  obj = _objective("siglip")
  params = _params(obj)
  assert set(params) == {"logit_scale", "logit_bias"}
  assert float(params["logit_scale"][...]) == pytest.approx(math.log(10.0))
  assert float(params["logit_bias"][...]) == -10.0
  loss, _ = obj(zi, zt, zp, zn, jnp.float32(123.0))  # the model's scale must not matter
  np.testing.assert_allclose(float(loss), np_siglip(zi, zt, math.log(10.0), -10.0), rtol=0, atol=1e-4)


def test_paper_compat_trains_its_own_unclamped_temperature():
  zi, zt, zp, zn = _embeddings(4)
  obj = _objective("semclip", paper_compat=True)
  params = _params(obj)
  assert set(params) == {"compat_logit_scale"}
  assert float(params["compat_logit_scale"][...]) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
  loss, _ = obj(zi, zt, zp, zn, jnp.float32(0.0))  # the model's logit_scale is ignored
  reference = np_semclip(zi, zt, zp, zn, math.log(1 / 0.07), np.asarray(obj.projection[...]),
                         1.0, 1.0, 1.0, paper_compat=True)
  np.testing.assert_allclose(float(loss), reference, rtol=1e-5)


def test_learnable_projection_is_a_parameter_and_k1_warns():
  assert set(_params(_objective("semclip", learnable_projection=True))) == {"projection"}
  with pytest.warns(UserWarning):
    obj = _objective("semclip", num_projection_vectors=1)
  assert obj.projection[...].shape == (D, 1)


def test_unknown_loss_name_is_refused():
  with pytest.raises(ValueError, match="unknown loss 'semclipp'"):
    _objective("semclipp")
