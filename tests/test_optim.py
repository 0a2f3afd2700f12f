"""Optimizer: schedule shape, weight-decay mask, freezing filter."""

import jax
import numpy as np
import pytest
from flax import nnx

from semclip_jax import objective, optim, sharding, train_step
from semclip_jax.models import create_clip, get_preset


def test_warmup_then_cosine_to_zero_and_constant():
  config = optim.default_config()
  schedule = optim.learning_rate_schedule(config, total_steps=1000)
  assert float(schedule(0)) == 0.0
  assert float(schedule(25)) == pytest.approx(2.5e-5)
  assert float(schedule(50)) == pytest.approx(5e-5)
  assert float(schedule(525)) == pytest.approx(2.5e-5, rel=1e-3)
  assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-12)
  config.schedule = "constant"
  constant = optim.learning_rate_schedule(config, total_steps=1000)
  assert float(constant(10)) == pytest.approx(1e-5) and float(constant(900)) == pytest.approx(5e-5)
  config.schedule = "linear"
  with pytest.raises(ValueError, match="unknown schedule 'linear'"):
    optim.learning_rate_schedule(config, 10)


def test_weight_decay_mask():
  config = objective.default_config()
  config.update(learnable_projection=True, paper_compat=True)
  trainee = train_step.Trainee(create_clip(get_preset("tiny")), objective.Objective(config, 32))
  params = nnx.state(trainee, nnx.Param)
  mask = {sharding.path_str(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
  decayed = {k for k, v in mask.items() if v}
  assert "model.text.encoder.blocks.0.mlp.fc1.kernel" in decayed
  assert "model.vision.patch_embed.kernel" in decayed
  assert "model.text.token_embed.embedding" in decayed
  assert "objective.compat_logit_scale" in decayed  # as the official code
  for name in ("model.text.encoder.blocks.0.mlp.fc1.bias", "model.text.encoder.blocks.1.ln2.scale",
               "model.vision.pre_ln.scale", "model.text.final_ln.bias", "model.vision.pos_embedding",
               "model.text.pos_embedding", "model.vision.class_embedding", "model.logit_scale",
               "objective.projection"):
    assert name in mask and not mask[name], name
  undecayed = optim.decay_mask(params, decay_compat_temperature=False)
  assert not undecayed["objective"]["compat_logit_scale"].get_value()


def test_weight_decay_applies_through_the_optimizer():
  config = optim.default_config()
  config.update(learning_rate=0.1, warmup_steps=0, schedule="constant", grad_clip_norm=0.0,
                weight_decay=0.5)
  tx = optim.make_optimizer(config, 10)
  params = {"w": {"kernel": np.ones(3, np.float32)}, "b": {"bias": np.ones(3, np.float32)}}
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["w"]["kernel"], -0.05)  # −lr·wd·w with zero gradient
  np.testing.assert_allclose(updates["b"]["bias"], 0.0)


def test_trainable_filter():
  model = create_clip(get_preset("tiny"))
  trained = nnx.state(model, optim.trainable_filter((r"^vision\.",)))
  names = [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(trained)[0]]
  assert names and not any(n.startswith("vision.") for n in names)
  assert "logit_scale" in names
