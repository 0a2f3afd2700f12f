"""bench.peers: open_clip built from our config, loaded with our weights, takes the same step.

The name map and the import error need neither torch nor open_clip; the rest runs with the test
extra's torch and open_clip (the bench extra's pins).
"""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from semclip_jax import hf, losses, openclip
from semclip_jax.bench import flops, peers, step
from semclip_jax.models import create_clip
from semclip_jax.models.model_config import get_preset

TINY = get_preset("tiny")


def openclip_shapes(config) -> dict[str, tuple[int, ...]]:
  """open_clip 3.3.0's CLIP parameters for `config`, written out from its model.py/transformer.py."""
  v, t, d = config.vision, config.text, config.projection_dim
  grid = v.image_size // v.patch_size
  shapes = {
      "logit_scale": (), "visual.conv1.weight": (v.hidden_size, 3, v.patch_size, v.patch_size),
      "visual.class_embedding": (v.hidden_size,),
      "visual.positional_embedding": (grid * grid + 1, v.hidden_size),
      "visual.proj": (v.hidden_size, d), "token_embedding.weight": (t.vocab_size, t.hidden_size),
      "positional_embedding": (t.max_position_embeddings, t.hidden_size),
      "text_projection": (t.hidden_size, d),
  }
  for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
    width = t.hidden_size if ln == "ln_final" else v.hidden_size
    shapes.update({f"{ln}.weight": (width,), f"{ln}.bias": (width,)})
  for tower, c in (("visual.transformer", v), ("transformer", t)):
    w, m = c.hidden_size, c.intermediate_size
    for i in range(c.num_hidden_layers):
      block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w),
               "attn.in_proj_bias": (3 * w,), "attn.out_proj.weight": (w, w),
               "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
               "mlp.c_fc.weight": (m, w), "mlp.c_fc.bias": (m,), "mlp.c_proj.weight": (w, m),
               "mlp.c_proj.bias": (w,)}
      shapes.update({f"{tower}.resblocks.{i}.{k}": s for k, s in block.items()})
  return shapes


# ----------------------------------------------------------------------------------------------
# Without torch or open_clip.
# ----------------------------------------------------------------------------------------------
def test_our_parameters_map_onto_every_openclip_parameter_with_its_shape():
  model = create_clip(TINY)
  weights = hf.hf_state_dict(model)
  arrays = openclip.openclip_arrays(model)
  assert {k: v.shape for k, v in arrays.items()} == openclip_shapes(TINY)
  layer = "text_model.encoder.layers.1.self_attn"
  in_proj = arrays["transformer.resblocks.1.attn.in_proj_weight"]
  for i, x in enumerate("qkv"):  # nn.MultiheadAttention's rows: q, then k, then v
    np.testing.assert_array_equal(in_proj[i * 64:(i + 1) * 64], weights[f"{layer}.{x}_proj.weight"])
  np.testing.assert_array_equal(arrays["visual.proj"], weights["visual_projection.weight"].T)
  np.testing.assert_array_equal(arrays["text_projection"], weights["text_projection.weight"].T)


def test_without_open_clip_the_cli_names_the_install_command(monkeypatch):
  monkeypatch.setattr(peers, "open_clip", None)
  with pytest.raises(ImportError, match=re.escape("pip install -e '.[bench]'")):
    peers.main(["--preset=tiny"])


@pytest.mark.parametrize("normalize_projections", [True, False])
def test_the_official_loss_in_torch_equals_ours_with_paper_compat(normalize_projections):
  rng = np.random.default_rng(0)
  zi, zt, zp, zn = (3 * rng.standard_normal((8, 32)).astype(np.float32) for _ in range(4))
  zp, zn = zt + 0.5 * zp, zt + 0.5 * zn  # correlated, so the hinge and cosines are not trivial
  projection = np.array(losses.make_projection(32, 2))
  t = math.log(1 / 0.07)
  ours, metrics = losses.semclip_loss(zi, zt, zp, zn, np.float32(t), projection, paper_compat=True,
                                      normalize_projections=normalize_projections)
  theirs, terms = peers.paper_semclip_loss(
      *(torch.from_numpy(z) for z in (zi, zt, zp, zn)), torch.tensor(t, dtype=torch.float32),
      torch.from_numpy(projection), normalize_projections)
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)
  for name in ("contrastive_loss", "para_loss", "neg_loss"):
    assert float(terms[name]) == pytest.approx(float(metrics[name]), rel=1e-5, abs=1e-6), name


# ----------------------------------------------------------------------------------------------
# With open_clip.
# ----------------------------------------------------------------------------------------------
def test_openclip_loaded_with_our_weights_embeds_as_ours():
  model = create_clip(TINY, seed=3)
  peer = peers.openclip_model(TINY)
  assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == openclip_shapes(TINY)
  peers.load_into_openclip(peer, model)
  tokens, _ = step.caption_tokens(4, path="")
  images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
  gaps = peers.embedding_gaps(model, peer, images, tokens.reshape(-1, 77))
  assert gaps["image"] < 1e-4 and gaps["text"] < 1e-4, gaps


def test_first_step_and_update_agree_with_ours_when_both_towers_train():
  config = step.bench_config("tiny", 8, freeze_image=False, paper_compat=True)
  # A learning rate that moves the weights from the first update (the paper's warms up from 0).
  config.optim.update(learning_rate=1e-3, warmup_steps=0, schedule="constant")
  tokens, _ = step.caption_tokens(8, path="")
  ours = step.StepBench(config, tokens, buckets=(16, 24, 32, 48, 64, 77))
  peer = peers.PeerStep(ours, tokens)
  assert not peer.freeze_image and peer.text_length == 77 > ours.tokens.shape[-1]
  before = {k: v.detach().numpy().copy() for k, v in peer.model.state_dict().items()}

  _, ours_first = ours.run(1)
  first = peer.step()
  assert first["loss"] == pytest.approx(ours_first["loss"], rel=1e-4)
  assert first["grad_norm"] == pytest.approx(ours_first["grad_norm"], rel=1e-3)
  with pytest.raises(ValueError, match="before the StepBench's first step"):
    peers.PeerStep(ours, tokens)

  _, ours_second = ours.run(1)
  second = peer.step()
  assert second["loss"] == pytest.approx(ours_second["loss"], rel=1e-4)
  assert abs(second["loss"] - first["loss"]) > 1e-3 * abs(first["loss"])  # the update did move
  after = openclip.openclip_arrays(ours.trainee().model)
  peer_after = {k: v.detach().numpy() for k, v in peer.model.state_dict().items()}
  assert np.abs(after["visual.conv1.weight"] - before["visual.conv1.weight"]).max() > 1e-3
  for name in after:
    ours_value, peer_value = after[name], peer_after[name]
    if name.endswith("attn.in_proj_bias"):
      # The key bias has an exactly zero gradient (softmax ignores a constant added to every
      # key), so Adam's first steps turn rounding noise into ±lr moves on both sides: skip it.
      width = ours_value.shape[0] // 3
      ours_value, peer_value = (np.delete(x, np.s_[width:2 * width]) for x in (ours_value, peer_value))
    np.testing.assert_allclose(peer_value, ours_value, rtol=0, atol=1e-4, err_msg=name)


def test_cli_on_tiny_reports_both_sides_and_the_same_first_loss(capsys):
  assert peers.main(["--preset=tiny", "--batch_size=8", "--towers=text", "--steps=1",
                     "--warmup=0", "--captions=", "--peak_n=256"]) == 0
  out = capsys.readouterr().out
  ours, theirs, ratio = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert ours["side"] == "semclip_jax" and theirs["side"] == "open_clip"
  assert ours["towers"] == theirs["towers"] == ratio["towers"] == "text"
  assert ours["text_length"] < 77 == theirs["text_length"]
  assert theirs["image_forward"].startswith("torch.no_grad")
  assert ratio["loss_match"] and ratio["first_loss_rel_diff"] < 1e-4
  assert ratio["ratio_samples_per_s"] == pytest.approx(
      ours["samples_per_s"] / theirs["samples_per_s"])
  assert (theirs["mfu"] or theirs["mfu_measured"]) > 0 and theirs["model_flops"] == flops.train_step_flops(TINY, 8, 77, True)["total"]
  for line in (ours, theirs, ratio):
    assert line["torch_threads"] == os.cpu_count() and line["xla_cpu_threads"] >= 1
    assert line["torch"] and line["open_clip"] and line["jax"] and line["date"]
  assert "ours/open_clip" in out and "samples/s ratio" in out
