"""Real 8-device CPU meshes: sharded losses and the sharded step equal the single-device ones."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from semclip_jax import losses, objective, sharding, train_step
from semclip_jax.models import create_clip, get_preset

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]


def test_eight_devices():
  assert jax.device_count() == 8


def test_make_mesh_sizes_and_errors():
  assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1}
  assert dict(sharding.make_mesh(data=2, fsdp=-1).shape) == {"data": 2, "fsdp": 4}
  assert dict(sharding.make_mesh(1, 1, devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1}
  with pytest.raises(ValueError, match="at most one mesh axis"):
    sharding.make_mesh(-1, -1)
  with pytest.raises(ValueError, match="cannot be split"):
    sharding.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.make_mesh(2, 2)


def test_constrain_to_batch_splits_rows_only_under_a_mesh_context():
  mesh = sharding.make_mesh(2, 4)
  by_feature = jax.sharding.NamedSharding(mesh, P(None, "fsdp"))

  def constrained(x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return sharding.constrain_to_batch(x * 2)

  x = jax.device_put(jnp.ones((16, 8)), by_feature)
  y = jax.jit(constrained)(x)
  assert y.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 2)
  np.testing.assert_array_equal(y, 2 * np.ones((16, 8)))
  # Rows the 8 devices do not divide, and no mesh context: left as they are.
  odd = jax.jit(constrained)(jax.device_put(jnp.ones((6, 8)), by_feature))
  assert odd.sharding.is_equivalent_to(by_feature, 2)
  assert sharding.constrain_to_batch(x) is x


def test_partition_spec_rules_and_fsdp_default():
  big = (512, 2048)
  assert sharding.partition_spec("text.encoder.blocks.0.mlp.fc1.kernel", big, 1) == P()
  assert sharding.partition_spec("text.encoder.blocks.0.mlp.fc1.kernel", big, 4) == P(None, "fsdp")
  assert sharding.partition_spec("text.encoder.blocks.0.mlp.fc1.bias", (2048,), 4) == P()
  assert sharding.partition_spec("odd", (1001, 999), 4) == P()  # nothing divisible: replicate
  rules = ((r"token_embed", ("fsdp", None)), (r"\.fc1\.", None))
  assert sharding.partition_spec("text.token_embed.embedding", (49408, 512), 4, rules) == P("fsdp", None)
  assert sharding.partition_spec("x.fc1.kernel", big, 4, rules) == P()


def _embeddings(seed, b=16, d=12):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(b, d)), jnp.float32) for _ in range(4)]


LOSSES = {
    "clip": lambda zi, zt, zp, zn, s, proj, **kw: losses.clip_loss(zi, zt, s, **kw),
    "siglip": lambda zi, zt, zp, zn, s, proj, **kw: losses.siglip_loss(zi, zt, s, -2.0, **kw),
    "negclip": lambda zi, zt, zp, zn, s, proj, **kw: losses.negclip_loss(zi, zt, zn, s, **kw),
    "semclip": lambda zi, zt, zp, zn, s, proj, **kw: losses.semclip_loss(
        zi, zt, zp, zn, s, proj, image_margin_weight=0.5, **kw),
}


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4)])
@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sharded_loss_equals_single_device(name, mesh_shape, chunk):
  mesh = sharding.make_mesh(*mesh_shape)
  zs, proj = _embeddings(1), losses.make_projection(12, 2)
  fn = LOSSES[name]

  def sharded(*zs):
    spec = P(sharding.BATCH_AXES)
    run = jax.shard_map(functools.partial(fn, axis_name=sharding.BATCH_AXES, chunk_size=chunk),
                        mesh=mesh, in_specs=(spec,) * 4 + (P(), P()), out_specs=P())
    return run(*zs, jnp.float32(2.3), proj)

  single = lambda *zs: fn(*zs, 2.3, proj)
  (loss_1, metrics_1), grads_1 = jax.value_and_grad(single, argnums=(0, 1, 2, 3), has_aux=True)(*zs)
  (loss_n, metrics_n), grads_n = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3),
                                                            has_aux=True))(*zs)
  np.testing.assert_allclose(loss_n, loss_1, rtol=0, atol=1e-5)
  for key in metrics_1:
    np.testing.assert_allclose(metrics_n[key], metrics_1[key], rtol=0, atol=1e-5, err_msg=key)
  for a, b in zip(grads_n, grads_1):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


# ---- the whole step: towers + loss, value and gradients ----
@pytest.fixture(scope="module")
def tiny_setup():
  config = objective.default_config()
  config.image_margin_weight = 0.5
  config.name = "semclip_image_margin"
  trainee = train_step.Trainee(create_clip(get_preset("tiny"), seed=0), objective.Objective(config, 32))
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 49406, size=(16, 3, 77)).astype(np.int32)
  tokens[:, :, 0] = 49406
  tokens[np.arange(16), :, rng.integers(3, 20, size=16)] = 49407
  batch = {"image": rng.normal(size=(16, 32, 32, 3)).astype(np.float32), "tokens": tokens}
  return trainee, batch


def _value_and_grad(trainee, batch, mesh):
  graphdef, params, rest = nnx.split(trainee, nnx.Param, ...)

  @jax.jit
  def run(params, rest, batch):
    loss_fn = lambda p: train_step.forward(nnx.merge(graphdef, p, rest), batch, mesh)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  if mesh is not None:
    batch = sharding.global_batch(batch, mesh)
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  (loss, _), grads = run(params, rest, batch)
  return loss, grads


@pytest.fixture(scope="module")
def single_device_reference(tiny_setup):
  return _value_and_grad(*tiny_setup, None)


def _assert_same(result, reference):
  np.testing.assert_allclose(result[0], reference[0], rtol=0, atol=1e-5)
  flat_a, flat_b = jax.tree.leaves(result[1]), jax.tree.leaves(reference[1])
  assert len(flat_a) == len(flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_step_equals_single_device(tiny_setup, single_device_reference, mesh_shape):
  _assert_same(_value_and_grad(*tiny_setup, sharding.make_mesh(*mesh_shape)), single_device_reference)


@pytest.mark.parametrize("chunk", [3, 5, 16])  # 16 rows: 3 and 5 leave an uneven last chunk
def test_chunked_sharded_step_equals_single_device(tiny_setup, single_device_reference, chunk):
  trainee, batch = tiny_setup
  objective_config = objective.default_config()
  objective_config.update(name="semclip_image_margin", image_margin_weight=0.5, chunk_size=chunk)
  chunked = train_step.Trainee(trainee.model, objective.Objective(objective_config, 32))
  _assert_same(_value_and_grad(chunked, batch, sharding.make_mesh(4, 2)), single_device_reference)
