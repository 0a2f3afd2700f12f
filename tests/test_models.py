"""CLIP towers: presets equal to transformers' architectures, pooling rule, dtypes, input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from semclip_jax import hf
from semclip_jax.models import PRESETS, create_clip, get_preset, layers
from semclip_jax.models.text import eos_positions


def _num_params(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _torch_num_params(hf_config) -> int:
  with torch.device("meta"):  # architecture only: no memory, no init
    model = transformers.CLIPModel(hf_config)
  return sum(p.numel() for p in model.parameters())


def test_b32_preset_has_transformers_default_parameter_count():
  ours = _num_params(nnx.eval_shape(lambda: create_clip(get_preset("B/32"))))
  assert ours == _torch_num_params(transformers.CLIPConfig()) == 151_277_313


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_matches_its_transformers_architecture(name):
  config = get_preset(name)
  ours = _num_params(nnx.eval_shape(lambda: create_clip(config)))
  assert ours == _torch_num_params(transformers.CLIPConfig(**hf.config_to_hf(config)))


def test_eos_pooling_rules():
  ids = jnp.array([[49406, 320, 49407, 49407, 49407],   # padded with EOS
                   [49406, 49407, 0, 0, 0],
                   [49406, 5, 7, 49407, 49407]])
  np.testing.assert_array_equal(eos_positions(ids, 49407), [2, 1, 3])   # first EOS
  np.testing.assert_array_equal(eos_positions(ids, 2), [2, 1, 3])       # legacy: highest id
  custom = jnp.array([[49406, 49407, 500, 49410, 0]])                   # a token added after EOS
  assert int(eos_positions(custom, 49407)[0]) == 1
  assert int(eos_positions(custom, 2)[0]) == 3


def test_output_shapes_and_bfloat16_compute():
  config = get_preset("tiny")
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  ids = jnp.array([[49406, 320, 1929, 49407] + [0] * 73] * 3, jnp.int32)
  f32 = create_clip(config, seed=1)
  bf16 = create_clip(config, seed=1, dtype=jnp.bfloat16)
  zi, zt = f32(images, ids)
  zi16, zt16 = bf16(images, ids)
  assert zi.shape == zi16.shape == (3, 32) and zt.shape == (3, 32)
  assert zi16.dtype == zt16.dtype == jnp.float32
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  for a, b in ((zi, zi16), (zt, zt16)):
    cos = jnp.sum(a * b, -1) / jnp.linalg.norm(a, axis=-1) / jnp.linalg.norm(b, axis=-1)
    assert float(cos.min()) > 0.99
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # bf16 really computed in bf16
  assert f32(images=images)[1] is None and f32(texts=ids)[0] is None


def test_scanned_layers_equal_the_python_loop_forward_and_backward():
  # 3 layers: the scan path (the default) against the same blocks applied one by one.
  model = create_clip(get_preset("tiny").replace(
      text=dataclasses.replace(get_preset("tiny").text, num_hidden_layers=3)), seed=4)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ids = jnp.array([[49406, 320, 1929, 49407] + [0] * 4] * 2, jnp.int32)

  def loss(m):
    zi, zt = m(images, ids)
    return jnp.sum(zi**2) + jnp.sum(jnp.sin(zt))

  scanned_loss, scanned_grads = nnx.value_and_grad(loss)(model)
  for encoder in (model.text.encoder, model.vision.encoder):
    assert encoder.scan and len(encoder.blocks) >= 2
    encoder.scan = False
  looped_loss, looped_grads = nnx.value_and_grad(loss)(model)
  np.testing.assert_allclose(scanned_loss, looped_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               nnx.state(scanned_grads), nnx.state(looped_grads))


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_change_memory_not_values(policy):
  # Same loss and gradients as keeping every activation, and the backward really recomputes.
  config = get_preset("tiny").replace(
      text=dataclasses.replace(get_preset("tiny").text, num_hidden_layers=3))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ids = jnp.array([[49406, 320, 1929, 49407] + [0] * 4] * 2, jnp.int32)

  def loss(m):
    zi, zt = m(images, ids)
    return jnp.sum(zi**2) + jnp.sum(jnp.sin(zt))

  def value_and_grads(model):
    graphdef, state = nnx.split(model)
    fn = jax.value_and_grad(lambda s: loss(nnx.merge(graphdef, s)))
    return fn(state), str(jax.make_jaxpr(fn)(state))

  (base_loss, base_grads), base_jaxpr = value_and_grads(create_clip(config, seed=4))
  model = layers.set_remat(create_clip(config, seed=4), policy)
  assert model.text.encoder.remat == model.vision.encoder.remat == policy
  (remat_loss, remat_grads), remat_jaxpr = value_and_grads(model)
  assert "remat" in remat_jaxpr and "remat" not in base_jaxpr  # jax.checkpoint's primitive
  np.testing.assert_allclose(remat_loss, base_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               remat_grads, base_grads)
  with pytest.raises(ValueError, match="remat policy 'some'"):
    layers.set_remat(model, "some")


def test_shorter_context_gives_same_embedding():
  model = create_clip(get_preset("tiny"), seed=2)
  ids = jnp.array([[49406, 320, 1929, 49407] + [0] * 73], jnp.int32)
  np.testing.assert_allclose(model.encode_text(ids[:, :8]), model.encode_text(ids), atol=1e-6)


def test_bad_inputs_are_named():
  model = create_clip(get_preset("tiny"))
  with pytest.raises(ValueError, match=r"images must be \[B, 32, 32, 3\] \(NHWC\)"):
    model.encode_image(jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="L <= 77"):
    model.encode_text(jnp.zeros((1, 78), jnp.int32))
  with pytest.raises(ValueError, match="unknown CLIP preset 'B/99'"):
    get_preset("B/99")
  tiny = get_preset("tiny")
  with pytest.raises(ValueError, match="unsupported hidden_act 'swish'"):
    create_clip(tiny.replace(text=dataclasses.replace(tiny.text, hidden_act="swish")))
