"""Checkpointer: keep-last-k plus best-by-metric, unfinished saves never restored, exact restore."""

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
