"""The train step: overfitting a fixed batch, frozen towers, accumulation, NaN skipping, bf16,
the temperature's clamp."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from semclip_jax import losses, objective, optim, sharding, train_step
from semclip_jax.models import create_clip, get_preset

VISION = r"^model\.vision\."
CAP = np.float32(losses.MAX_LOGIT_SCALE)  # log 100 as the float32 parameter holds it


def _triples(seed=0, batch=16):
  """Originals of 10 random words; paraphrase = two words swapped; negation = one word replaced
  by the same token everywhere (a stand-in for "not")."""
  rng = np.random.default_rng(seed)
  orig = rng.integers(1, 1000, size=(batch, 10))
  para = orig.copy()
  para[:, [2, 3]] = para[:, [3, 2]]
  neg = orig.copy()
  neg[:, 4] = 2653
  tokens = np.zeros((batch, 3, 16), np.int32)
  tokens[:, :, 0], tokens[:, :, 11] = 49406, 49407
  tokens[:, 0, 1:11], tokens[:, 1, 1:11], tokens[:, 2, 1:11] = orig, para, neg
  return {"image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32), "tokens": tokens}


def _setup(loss="semclip", freeze=(), lr=1e-3, dtype=jnp.float32, tx=None, model=None,
           **loss_overrides):
  config = objective.default_config()
  config.update(name=loss, **loss_overrides)
  if model is None:
    model = create_clip(get_preset("tiny"), seed=0, dtype=dtype)
  trainee = train_step.Trainee(model, objective.Objective(config, 32))
  if tx is None:
    opt = optim.default_config()
    opt.update(learning_rate=lr, warmup_steps=10, weight_decay=0.0, schedule="constant", freeze=freeze)
    tx = optim.make_optimizer(opt, 1000)
  graphdef, state = train_step.create_train_state(trainee, tx, freeze)
  return graphdef, state, tx


def _with(tree, path, value):
  """`tree` with its leaf at the dotted `path` set to `value`."""
  return jax.tree.map_with_path(
      lambda p, x: jnp.asarray(value, x.dtype) if sharding.path_str(p) == path else x, tree)


def _leaf(tree, path):
  return next(np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
              if sharding.path_str(p) == path)


class _FixedEmbeddings(nnx.Module):
  """CLIP's interface returning given embeddings whatever the batch: alignment chosen exactly."""

  def __init__(self, zi, zt, logit_scale):
    self.zi, self.zt = nnx.Variable(jnp.asarray(zi)), nnx.Variable(jnp.asarray(zt))
    self.logit_scale = nnx.Param(jnp.asarray(logit_scale, jnp.float32))

  def encode_image(self, images):
    return self.zi[...]

  def encode_text(self, tokens):  # [3B, L] -> [3B, D]; a pair's three captions embed alike
    return jnp.repeat(self.zt[...], 3, axis=0)


def test_overfits_a_fixed_batch():
  graphdef, state, tx = _setup()
  step = train_step.make_train_step(graphdef, tx)
  batch = jax.tree.map(jnp.asarray, _triples())
  first = None
  for _ in range(150):
    state, metrics = step(state, batch)
    first = first if first is not None else float(metrics["loss"])
  assert float(metrics["loss"]) < 0.1 * first, (first, float(metrics["loss"]))
  assert float(metrics["proj_cos_orig_neg"]) <= 0.05
  assert float(metrics["i2t_acc"]) == 1.0 and int(metrics["skipped"]) == 0


def test_frozen_tower_is_bitwise_unchanged_and_has_no_optimizer_state():
  graphdef, state, tx = _setup(freeze=(VISION,))
  before = nnx.merge(graphdef, state.params, state.rest)
  vision_before = jax.tree.map(np.asarray, nnx.state(before.model.vision))
  text_before = jax.tree.map(np.asarray, nnx.state(before.model.text))
  opt_paths = [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  assert opt_paths and not any("vision" in p for p in opt_paths)
  assert any("text.encoder" in p for p in opt_paths)

  step = train_step.make_train_step(graphdef, tx)
  batch = jax.tree.map(jnp.asarray, _triples())
  for _ in range(3):
    state, _ = step(state, batch)
  after = nnx.merge(graphdef, state.params, state.rest)
  for a, b in zip(jax.tree.leaves(vision_before), jax.tree.leaves(nnx.state(after.model.vision))):
    assert np.array_equal(a, np.asarray(b))
  changed = [not np.array_equal(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(text_before), jax.tree.leaves(nnx.state(after.model.text)))]
  assert all(changed)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [None, (4, 2)])
def test_gradient_accumulation_equals_one_large_batch_for_per_sample_terms(mesh_shape):
  # alpha = 0: only the per-sample paraphrase and negation terms (and the margin) remain.
  overrides = dict(alpha=0.0, beta=1.0, gamma=1.0)
  graphdef, state, _ = _setup(loss="semclip_image_margin", tx=optax.sgd(1.0), **overrides)
  tx = optax.sgd(1.0)  # the update is −grad, so equal updates mean equal gradients
  batch = _triples(seed=1)
  mesh = None if mesh_shape is None else sharding.make_mesh(*mesh_shape)
  results = []
  for k in ((1, 4) if mesh is None else (1, 2)):  # micro-batches must fill the 8 devices
    step = train_step.make_train_step(graphdef, tx, mesh=mesh, grad_accum_steps=k, donate=False)
    placed = jax.tree.map(jnp.asarray, batch) if mesh is None else sharding.global_batch(batch, mesh)
    new_state, metrics = step(state, placed)
    results.append((jax.tree.leaves(new_state.params), float(metrics["loss"])))
  # Equal up to float32 sums in another order (about 1e-5 on these O(1) parameters, depending on
  # the CPU's kernels); half the batch lost moves them by up to 1.15.
  for params, loss in results[1:]:
    assert loss == pytest.approx(results[0][1], abs=5e-5)
    for a, b in zip(params, results[0][0]):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-5)
  if mesh is None:
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
      train_step.make_train_step(graphdef, tx, grad_accum_steps=3)(state, jax.tree.map(jnp.asarray, batch))
  else:
    with pytest.raises(ValueError, match="gives 4 rows, not divisible by the 8 devices"):
      train_step.make_train_step(graphdef, tx, mesh=mesh, grad_accum_steps=4)(state, placed)


def test_nan_batch_is_skipped_and_counted():
  graphdef, state, tx = _setup()
  step = train_step.make_train_step(graphdef, tx, donate=False)
  good = _triples()
  bad = dict(good, image=good["image"].copy())
  bad["image"][3, 5, 5, 1] = np.nan
  state, metrics = step(state, jax.tree.map(jnp.asarray, good))
  params_before = jax.tree.map(np.asarray, state.params)
  opt_before = jax.tree.map(np.asarray, state.opt_state)
  for expected in (1, 2):
    state, metrics = step(state, jax.tree.map(jnp.asarray, bad))
    assert not np.isfinite(float(metrics["loss"]))
    assert int(metrics["skipped"]) == expected and int(metrics["consecutive_skipped"]) == expected
  for a, b in zip(jax.tree.leaves(params_before), jax.tree.leaves(state.params)):
    assert np.array_equal(a, np.asarray(b)) and np.isfinite(a).all()
  for a, b in zip(jax.tree.leaves(opt_before), jax.tree.leaves(state.opt_state)):
    assert np.array_equal(a, np.asarray(b))
  train_step.check_skips(metrics, max_consecutive=3)
  with pytest.raises(train_step.NonFiniteLossError, match="2 consecutive steps had a non-finite"):
    train_step.check_skips(metrics, max_consecutive=2)
  state, metrics = step(state, jax.tree.map(jnp.asarray, good))
  assert int(metrics["skipped"]) == 2 and int(metrics["consecutive_skipped"]) == 0
  assert int(state.step) == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize("loss", ["siglip", "negclip", "clip"])
def test_other_objectives_train(loss):
  graphdef, state, tx = _setup(loss=loss)
  step = train_step.make_train_step(graphdef, tx)
  batch = jax.tree.map(jnp.asarray, _triples())
  state, first = step(state, batch)
  for _ in range(20):
    state, metrics = step(state, batch)
  assert float(metrics["loss"]) < float(first["loss"])
  if loss == "siglip":  # SigLIP trains its own scale and bias, initialised log 10 and −10
    trainee = nnx.merge(graphdef, state.params, state.rest)
    assert float(trainee.objective.logit_bias[...]) != -10.0


def test_bfloat16_compute_keeps_float32_parameters():
  graphdef, state, tx = _setup(dtype=jnp.bfloat16)
  step = train_step.make_train_step(graphdef, tx)
  state, metrics = step(state, jax.tree.map(jnp.asarray, _triples()))
  assert np.isfinite(float(metrics["loss"]))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}


def test_learnable_projection_and_paper_compat_temperature_are_trained():
  graphdef, state, tx = _setup(learnable_projection=True, paper_compat=True)
  names = {sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert {"objective.projection", "objective.compat_logit_scale"} <= names
  fixed_graphdef, fixed, _ = _setup()
  rest = {sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(fixed.rest)[0]}
  assert "objective.projection" in rest


def test_unknown_loss_and_bad_token_shape():
  with pytest.raises(ValueError, match="unknown loss 'simclr'"):
    _setup(loss="simclr")
  graphdef, state, tx = _setup()
  batch = _triples()
  batch["tokens"] = batch["tokens"][:, :2]
  with pytest.raises(ValueError, match=r"tokens must be \[B, 3, L\]"):
    train_step.make_train_step(graphdef, tx)(state, jax.tree.map(jnp.asarray, batch))


def test_k1_projection_warns():
  with pytest.warns(UserWarning, match="sign tests"):
    _setup(num_projection_vectors=1)


def test_temperature_gets_its_full_gradient_at_and_above_the_cap():
  # Only the temperature trains, by SGD, so its update is exactly -lr * its gradient.
  lr, name = 1e-3, "model.logit_scale"
  graphdef, state, tx = _setup(loss="clip", freeze=(r"^model\.(vision|text)\.",), tx=optax.sgd(lr))
  step = train_step.make_train_step(graphdef, tx, donate=False)
  batch = jax.tree.map(jnp.asarray, _triples())
  starts = [np.float32(s) for s in (CAP - 1e-3, CAP, CAP + 1e-3, CAP + 1.0)]
  results = [step(state.replace(params=_with(state.params, name, s)), batch) for s in starts]
  after = [_leaf(new.params, name) for new, _ in results]
  # The reference derivative at the cap: the step's own losses on either side, no autodiff.
  (_, below), (_, above) = results[0], results[2]
  slope = (float(above["loss"]) - float(below["loss"])) / float(starts[2] - starts[0])
  assert slope > 0  # random towers, unaligned batch: a softer softmax lowers the loss
  # A clamp in the forward pass would halve the gradient at the cap and zero it above.
  for s0, s1 in zip(starts[:3], after[:3]):
    assert float(s0 - s1) / lr == pytest.approx(slope, rel=2e-3)
  assert after[3] == CAP  # from far above, the update then the clamp


def test_model_temperature_is_clamped_at_the_cap_and_compat_temperature_is_not():
  # Unit embeddings where each positive beats every negative by a cosine of about 0.05: perfectly
  # aligned, yet not saturated at scale 100 (logit gaps of 5), so the loss keeps pushing up.
  b, d = 16, 32
  zi = np.eye(b, d, dtype=np.float32)
  zt = 0.05 * np.eye(b, d, dtype=np.float32)
  zt[:, -1] = 1.0
  zt /= np.linalg.norm(zt, axis=1, keepdims=True)  # raw dots = cosines, for paper_compat too
  assert jax.grad(lambda s: losses.clip_loss(zi, zt, s)[0])(CAP) < 0
  batch = jax.tree.map(jnp.asarray, _triples(batch=b))
  for compat in (False, True):
    # paper_compat trains its own temperature; the model's, frozen above the cap, stays put.
    model = _FixedEmbeddings(zi, zt, CAP + 1 if compat else CAP)
    graphdef, state, tx = _setup(loss="clip", model=model, paper_compat=compat,
                                 freeze=(r"^model\.logit_scale$",) if compat else ())
    name = "objective.compat_logit_scale" if compat else "model.logit_scale"
    state = state.replace(params=_with(state.params, name, CAP))  # compat's init is log(1/0.07)
    step = train_step.make_train_step(graphdef, tx)
    values = []
    for _ in range(8):
      state, _ = step(state, batch)
      values.append(_leaf(state.params, name))
    if compat:
      assert values[-1] > CAP + 1e-3  # Adam pushed it beyond log 100, unclamped
      np.testing.assert_array_equal(_leaf(state.rest, "model.logit_scale"), np.float32(CAP + 1))
    else:
      assert max(values) <= CAP and values[-1] == CAP
