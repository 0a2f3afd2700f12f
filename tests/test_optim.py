"""Optimizer: schedule shape, weight-decay mask, parity with torch's AdamW, freezing filter."""

import jax
import numpy as np
import optax
import pytest
import torch
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
  everything = optim.decay_mask(params, decay_compat_temperature=False, decay_all=True)
  assert all(jax.tree.leaves(everything))  # overrides NO_DECAY and the temperature switch


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


# Names NO_DECAY matches (bias, LayerNorm scale, position embedding, temperature) beside a kernel,
# an embedding table and paper_compat's own temperature (decayed by decay_compat_temperature).
_EXCLUDED = ("text.fc1.bias", "text.final_ln.scale", "text.pos_embedding", "logit_scale")
_SHAPES = {"text.fc1.kernel": (3, 4), "text.fc1.bias": (4,), "text.final_ln.scale": (4,),
           "text.pos_embedding": (5, 4), "text.token_embed.embedding": (6, 4), "logit_scale": (),
           "objective.compat_logit_scale": ()}


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split(".")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _adamw_steps(decay_all, params, grads, **hyper):
  """Our optimizer's parameters after each of len(grads) steps, in float64, flat by dotted name."""
  config = optim.default_config()
  config.update(warmup_steps=0, schedule="constant", grad_clip_norm=0.0, decay_all=decay_all,
                **hyper)
  tx = optim.make_optimizer(config, 10)

  def steps(tree, grads):
    state, trees = tx.init(tree), []
    for grad in grads:
      updates, state = tx.update(grad, state, tree)
      tree = optax.apply_updates(tree, updates)
      trees.append(tree)
    return trees

  with jax.enable_x64(True):  # float64 throughout, so equality with torch is to rounding
    trees = jax.jit(steps)(_nest(params), [_nest(g) for g in grads])  # one compile, not per op
  return [{sharding.path_str(p): np.asarray(v)
           for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]} for tree in trees]


def _torch_steps(no_decay, params, grads, lr, weight_decay, b1, b2, eps):
  """torch.optim.AdamW's parameters after each step; `no_decay` names get weight_decay 0."""
  tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
  groups = [{"params": [t for k, t in tensors.items() if k not in no_decay]},
            {"params": [t for k, t in tensors.items() if k in no_decay], "weight_decay": 0.0}]
  adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(b1, b2), eps=eps,
                            weight_decay=weight_decay)
  trees = []
  for grad in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(grad[k], dtype=torch.float64)
    adamw.step()
    trees.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
  return trees


def test_decay_all_equals_torch_adamw_over_two_steps():
  # optax adds lr·wd·p (the pre-update p) to the Adam step; torch first scales p by (1 − lr·wd),
  # then subtracts the Adam step: the same p(1 − lr·wd) − lr·adam, differing only in rounding.
  rng = np.random.default_rng(0)
  params = {k: rng.normal(size=s) for k, s in _SHAPES.items()}
  grads = [{k: rng.normal(size=s) for k, s in _SHAPES.items()} for _ in range(2)]
  hyper = dict(weight_decay=0.2, b1=0.9, b2=0.98, eps=1e-6)
  every = _adamw_steps(True, params, grads, learning_rate=1e-2, **hyper)
  # Default: the NO_DECAY tensors form torch's weight_decay=0 group, all else is decayed.
  masked = _adamw_steps(False, params, grads, learning_rate=1e-2, **hyper)
  for ours, no_decay in ((every, ()), (masked, _EXCLUDED)):
    for step, (got, want) in enumerate(zip(ours, _torch_steps(no_decay, params, grads, lr=1e-2,
                                                              **hyper)), 1):
      for name in _SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12,
                                   err_msg=f"{name} after step {step}, no decay for {no_decay}")
  for name in _SHAPES:  # decay moves the excluded tensors by ≈ lr·wd·|p| per step, far above 1e-12
    moved = np.max(np.abs(masked[-1][name] - every[-1][name]))
    assert (moved > 1e-5) if name in _EXCLUDED else (moved < 1e-12), (name, moved)


def test_trainable_filter():
  model = create_clip(get_preset("tiny"))
  trained = nnx.state(model, optim.trainable_filter((r"^vision\.",)))
  names = [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(trained)[0]]
  assert names and not any(n.startswith("vision.") for n in names)
  assert "logit_scale" in names
