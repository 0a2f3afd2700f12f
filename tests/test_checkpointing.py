"""Checkpointer: keep-last-k plus best-by-metric, unfinished saves never restored, exact restore."""

import collections
import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semclip_jax import checkpointing


def _state(step):
  return {"step": jnp.asarray(step, jnp.int32), "w": jnp.arange(6.0).reshape(2, 3) * step}


def test_keeps_latest_and_best(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=2, keep_best=1,
                                            best_metric="ccneg/accuracy", async_save=False)
  accuracy = {2: 0.6, 4: 0.9, 6: 0.7}  # step 4 is the best
  for step in range(1, 9):
    metrics = {"ccneg/accuracy": accuracy[step]} if step in accuracy else None
    checkpointer.save(step, _state(step), {"counts": {"seen": step}}, metrics)
  checkpointer.wait()
  assert checkpointer.all_steps() == [4, 7, 8]
  state, data = checkpointer.restore(4, checkpointing.abstract_like(_state(0)))
  np.testing.assert_array_equal(state["w"], _state(4)["w"])
  assert int(state["step"]) == 4 and data == {"counts": {"seen": 4}}
  checkpointer.close()


def test_unfinished_checkpoint_is_never_restored(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  checkpointer.save(3, _state(3), {})
  checkpointer.wait()
  checkpointer.close()
  # What a save killed mid-write leaves: orbax's temporary folder, never renamed to "5".
  partial = tmp_path / "5.orbax-checkpoint-tmp-1764300000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
  reopened = checkpointing.Checkpointer(str(tmp_path))
  assert reopened.latest_step() == 3
  state, _ = reopened.restore(3, checkpointing.abstract_like(_state(0)))
  assert int(state["step"]) == 3
  reopened.close()


def test_best_needs_a_metric():
  with pytest.raises(ValueError, match="best_metric"):
    checkpointing.Checkpointer("/tmp/unused", keep_best=1)
  with pytest.raises(ValueError, match="best_mode"):
    checkpointing.Checkpointer("/tmp/unused", best_mode="up")


def test_a_flipped_bit_never_restores_silently(tmp_path):
  """Single bits flipped at seeded random places in a checkpoint's array files: each restore
  gives back exactly the bits saved or raises. orbax's compressed chunks decode many flips into
  other finite values without complaint; the saved fingerprint catches them."""
  state = {"step": jnp.asarray(3, jnp.int32),
           "w": jax.random.normal(jax.random.key(0), (64, 64)),
           "h": jax.random.normal(jax.random.key(1), (256,), jnp.bfloat16)}
  checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, state, {})
  checkpointer.close()
  files = sorted(p for p in (tmp_path / "3" / "state").rglob("*") if p.parent.name == "d")
  rng = random.Random(0)
  outcomes = collections.Counter()
  for _ in range(40):
    file = rng.choice(files)
    original = file.read_bytes()
    flipped = bytearray(original)
    bit = rng.randrange(len(flipped) * 8)
    flipped[bit // 8] ^= 1 << (bit % 8)
    file.write_bytes(bytes(flipped))
    reader = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    try:
      restored, _ = reader.restore(3, checkpointing.abstract_like(state))
    except checkpointing.CorruptCheckpointError as e:
      match = re.fullmatch(r"checkpoint 3: (non-finite values|values other than those saved "
                           r"\(fingerprint\)) in (w|h)", str(e))
      assert match, e
      outcomes["non-finite" if match.group(1).startswith("non") else "caught"] += 1
    except Exception:  # pylint: disable=broad-exception-caught
      outcomes["unreadable"] += 1  # orbax's own errors: the trainer falls back on them too
    else:
      assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored),
                                                       jax.tree.leaves(state)))
      outcomes["unchanged"] += 1
    finally:
      reader.close()
      file.write_bytes(original)
  assert outcomes["caught"] >= 3, outcomes  # the flips that used to restore silently


def test_fingerprints_are_the_same_under_any_sharding():
  """The checksums are integer sums of the bits: a state restored onto another mesh compares
  equal to the one saved."""
  x = jax.random.normal(jax.random.key(2), (8, 16))
  mesh = jax.make_mesh((8,), ("d",))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  columns = jax.device_put(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "d")))
  tree = {"x": x, "key": jax.random.key(4), "flag": jnp.asarray(True)}
  saved = checkpointing.fingerprint(tree)
  assert saved == checkpointing.fingerprint({**tree, "x": sharded})
  assert saved == checkpointing.fingerprint({**tree, "x": columns})
  assert checkpointing.state_problem({**tree, "x": sharded}, saved) is None
  one_bit = x.at[3, 5].set(jnp.nextafter(x[3, 5], jnp.inf))
  assert checkpointing.state_problem({**tree, "x": one_bit}, saved) == (
      "values other than those saved (fingerprint) in x")
  swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
  assert checkpointing.state_problem({**tree, "x": swapped}, saved) is not None
  assert checkpointing.state_problem({**tree, "x": x.at[0, 0].set(jnp.nan)}, None) == (
      "non-finite values in x")


def test_a_checkpoint_saved_before_fingerprints_still_restores(tmp_path):
  """Checkpoints written before the fingerprint item existed (state and data only) restore,
  checked for NaN/Inf only."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  old = ocp.CheckpointManager(
      str(tmp_path), item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
  old.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(3)),
                                      data=ocp.args.JsonSave({"at": 3})))
  old.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(
      {**_state(4), "w": _state(4)["w"].at[0, 0].set(jnp.inf)}), data=ocp.args.JsonSave({})))
  old.close()
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  try:
    state, data = checkpointer.restore(3, checkpointing.abstract_like(_state(0)))
    assert data == {"at": 3} and np.array_equal(state["w"], _state(3)["w"])
    with pytest.raises(checkpointing.CorruptCheckpointError,
                       match="checkpoint 4: non-finite values in w"):
      checkpointer.restore(4, checkpointing.abstract_like(_state(0)))
  finally:
    checkpointer.close()
