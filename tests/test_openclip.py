"""open_clip / OpenAI-layout checkpoints in and out, with open_clip 3.3.0 as the parity oracle."""

import argparse
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import open_clip
import pytest
import safetensors.torch
import torch
from flax import nnx
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from semclip_jax import openclip, pretrained, storage
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.models import create_clip, get_preset

CAPTIONS = ["a photo of a cat", "There is no dog on the grass, only a red ball.", "",
            "Un café très chaud — “quoted” text 😀"]
# 64-wide heads and a 4x MLP: the shapes alone describe it (OpenAI's rule), quick_gelu as OpenAI.
TINY_OPENAI = {"embed_dim": 48, "quick_gelu": True,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2,
                            "layers": 2}}
# 32-wide heads, exact gelu, a 2x MLP: only a config says so.
TINY_GELU = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                            "mlp_ratio": 2.0, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                          "layers": 2, "mlp_ratio": 2.0}}


def build_openclip(model_cfg, seed=0):
  """A random open_clip CLIP with every parameter (LayerNorms and biases too) off its init."""
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]),
                               CLIPTextCfg(**model_cfg["text_cfg"]),
                               quick_gelu=model_cfg.get("quick_gelu", False))
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.05 * torch.randn_like(parameter))
  return model.eval()


def inputs(image_size, seed=0):
  images = np.random.default_rng(seed).normal(size=(3, image_size, image_size, 3)).astype(np.float32)
  return images, CLIPTokenizer()(CAPTIONS)


def openclip_embeddings(model, images, tokens):
  with torch.no_grad():
    zi = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    zt = model.encode_text(torch.from_numpy(np.asarray(tokens, np.int64)))
  return zi.numpy(), zt.numpy()


@nnx.jit
def _embed(model, images, tokens):
  return model.encode_image(images), model.encode_text(tokens)


def our_embeddings(model, images, tokens):
  return tuple(np.asarray(z) for z in _embed(model, jnp.asarray(images), jnp.asarray(tokens)))


def assert_parity(ours, theirs):
  for a, b, what in zip(ours, theirs, ("image", "text")):
    assert np.abs(b).max() > 1e-2, what  # a degenerate oracle would make parity vacuous
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=what)


@pytest.fixture(scope="module")
def openai_like():
  """(open_clip model, its state dict, inputs, open_clip's embeddings) for TINY_OPENAI."""
  model = build_openclip(TINY_OPENAI)
  images, tokens = inputs(32)
  return model, model.state_dict(), (images, tokens), openclip_embeddings(model, images, tokens)


def _save(kind, state, folder):
  """The layouts and wrappers in which the field's checkpoints come."""
  if kind == "safetensors":  # open_clip's hub format
    path = os.path.join(folder, "open_clip_model.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
  elif kind == "pt":  # a bare state dict, as OpenAI's `clip` package or open_clip save it
    path = os.path.join(folder, "model.pt")
    torch.save(state, path)
  elif kind == "ddp_pth":  # open_clip's training checkpoints: {"state_dict": module.*, ...}
    path = os.path.join(folder, "epoch_3.pth")
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}, path)
  elif kind == "lightning_ckpt":  # Lightning: model.* beside a loss's own tensor
    path = os.path.join(folder, "last.ckpt")
    torch.save({"epoch": 1, "global_step": 10,
                "state_dict": {**{f"model.{k}": v for k, v in state.items()},
                               "loss.projection": torch.zeros(4, 2)}}, path)
  elif kind == "model_bin":  # {"model": ...} with a half-precision copy, OpenAI's JIT extras
    path = os.path.join(folder, "open_clip_pytorch_model.bin")
    torch.save({"model": {**{k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                          "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
                          "vocab_size": torch.tensor(49408)}}, path)
  return path


@pytest.mark.parametrize("kind", ["safetensors", "pt", "ddp_pth", "lightning_ckpt", "model_bin"])
def test_openai_layout_checkpoints_load_with_open_clips_embeddings(tmp_path, openai_like, kind,
                                                                   caplog):
  oracle, state, (images, tokens), expected = openai_like
  if kind == "model_bin":  # the file holds float16: compare with open_clip on the same weights
    oracle = build_openclip(TINY_OPENAI)
    oracle.load_state_dict({k: v.half().float() for k, v in state.items()})
    expected = openclip_embeddings(oracle, images, tokens)
  path = _save(kind, state, tmp_path)
  model = openclip.load_openclip(path)  # architecture inferred from shapes
  assert "quick_gelu, as OpenAI's weights" in caplog.text  # the one guess is said
  assert model.config.vision.hidden_act == model.config.text.hidden_act == "quick_gelu"
  assert model.config.vision.num_attention_heads == 2 and model.config.vision.image_size == 32
  assert_parity(our_embeddings(model, images, tokens), expected)
  assert float(model.logit_scale[...]) == pytest.approx(float(oracle.logit_scale.detach()), rel=1e-3)


def test_the_architecture_comes_from_a_config_json_or_the_folder(tmp_path):
  oracle = build_openclip(TINY_GELU, seed=1)
  images, tokens = inputs(32, seed=1)
  expected = openclip_embeddings(oracle, images, tokens)
  path = _save("pt", oracle.state_dict(), tmp_path)
  arch = tmp_path / "tiny-gelu.json"
  arch.write_text(json.dumps(TINY_GELU))
  model = openclip.load_openclip(path, str(arch))
  assert model.config.vision.hidden_act == "gelu" and model.config.vision.num_attention_heads == 2
  assert_parity(our_embeddings(model, images, tokens), expected)
  # An open_clip folder: open_clip_config.json beside the weights decides.
  folder = tmp_path / "hub"
  folder.mkdir()
  _save("safetensors", oracle.state_dict(), folder)
  (folder / openclip.CONFIG_FILE).write_text(json.dumps({"model_cfg": TINY_GELU}))
  assert_parity(our_embeddings(openclip.load_openclip(str(folder)), images, tokens), expected)


@pytest.mark.parametrize("name", sorted(openclip.ARCHS))
def test_named_architectures_are_open_clips_own(name):
  assert openclip.ARCHS[name] == open_clip.get_model_config(name)
  config = openclip.config_from_model_cfg(openclip.ARCHS[name], name)
  assert openclip.model_cfg_of(config)["quick_gelu"] == name.endswith("-quickgelu")


def test_vit_b_32_maps_onto_open_clips_own_tensors():
  """The full-size architecture, by shapes alone (a forward of it is the tiny tests' job)."""
  config = openclip.config_from_model_cfg(openclip.ARCHS["ViT-B-32-quickgelu"], "ViT-B-32-quickgelu")
  peer = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
  assert {k: tuple(v.shape) for k, v in peer.state_dict().items()} == openclip.openclip_shapes(config)


def test_export_loads_in_open_clip_with_our_embeddings(tmp_path):
  model = create_clip(get_preset("tiny"), seed=5)
  images, tokens = inputs(32, seed=2)
  ours = our_embeddings(model, images, tokens)
  folder = openclip.save_openclip(model, str(tmp_path / "export"))
  peer, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
  assert_parity(ours, openclip_embeddings(peer.eval(), images, tokens))
  normalize = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
  np.testing.assert_allclose(normalize.mean, (0.48145466, 0.4578275, 0.40821073))
  # A named architecture + pretrained=<file>, as NegBench's and CLIP_benchmark's scripts load.
  config_file = tmp_path / "semclip-tiny.json"
  config_file.write_text(json.dumps(openclip.model_cfg_of(model.config)))
  open_clip.add_model_config(str(config_file))
  peer, _, _ = open_clip.create_model_and_transforms(
      "semclip-tiny", pretrained=os.path.join(folder, openclip.WEIGHTS_FILE))
  assert_parity(ours, openclip_embeddings(peer.eval(), images, tokens))
  # And back: the same parameters.
  again = openclip.load_openclip(folder)
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                               nnx.to_flat_state(nnx.state(again, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))


# ----------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and the tensor, before any parameter is placed.
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_placement(monkeypatch):
  def placed(*args, **kwargs):
    raise AssertionError("a parameter was placed before the checkpoint was validated")
  monkeypatch.setattr(openclip, "clip_from_arrays", placed)


def _edited(state, drop=(), add=None, replace=None):
  out = {k: v for k, v in state.items() if k not in drop}
  return {**out, **(add or {}), **(replace or {})}


BAD_STATES = {
    "missing": (dict(drop=("transformer.resblocks.1.mlp.c_proj.bias",)),
                r"missing 1 tensor\(s\): transformer.resblocks.1.mlp.c_proj.bias"),
    "unexpected": (dict(add={"visual.extra_head.weight": torch.zeros(3)}),
                   r"1 unexpected tensor\(s\): visual.extra_head.weight"),
    "wrong_shape": (dict(replace={"visual.transformer.resblocks.0.attn.in_proj_weight":
                                  torch.zeros(3 * 128, 64)}),
                    r"tensor visual.transformer.resblocks.0.attn.in_proj_weight has shape "
                    r"\(384, 64\), but the architecture .* needs \(384, 128\)"),
    "integer": (dict(replace={"ln_final.bias": torch.zeros(128, dtype=torch.int64)}),
                "tensor ln_final.bias has non-float dtype int64"),
    "hf_layout": (dict(drop=("visual.conv1.weight",),
                       add={"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}),
                  "looks like a Hugging Face CLIPModel state dict"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_a_bad_state_dict_names_file_and_tensor(tmp_path, openai_like, no_placement, case):
  edits, message = BAD_STATES[case]
  path = _save("pt", _edited(openai_like[1], **edits), tmp_path)
  with pytest.raises(openclip.CheckpointError, match=message) as error:
    openclip.load_openclip(path)
  assert str(error.value).startswith(path)


def test_a_wrong_architecture_names_the_tensor_that_does_not_fit(tmp_path, openai_like, no_placement):
  path = _save("pt", openai_like[1], tmp_path)
  with pytest.raises(openclip.CheckpointError,
                     match=r"model.pt: does not fit the architecture \(open_clip architecture "
                     r"ViT-B-32\): missing 240 tensor\(s\): visual.transformer.resblocks.2"):
    openclip.load_openclip(path, "ViT-B-32")
  with pytest.raises(openclip.CheckpointError, match="unknown architecture 'ViT-B/32'"):
    openclip.load_openclip(path, "ViT-B/32")


def test_an_uninferable_architecture_asks_for_it(tmp_path, no_placement):
  state = build_openclip(TINY_GELU).state_dict()
  state["ln_final.weight"] = torch.zeros(96)  # no 64-wide head divides a 96-wide text tower
  path = _save("pt", state, tmp_path)
  with pytest.raises(openclip.CheckpointError, match="cannot infer the architecture: the text "
                     "width 96 is not a multiple of 64.*ViT-B-32"):
    openclip.load_openclip(path)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_unsafe_pickles_and_torchscript_are_refused(tmp_path, no_placement):
  pickle_path = str(tmp_path / "evil.pt")
  torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, pickle_path)
  with pytest.raises(openclip.CheckpointError, match=r"evil.pt: torch.load\(weights_only=True\) refused"):
    openclip.load_openclip(pickle_path)
  jit_path = str(tmp_path / "ViT-B-32.pt")
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), jit_path)
  with pytest.raises(openclip.CheckpointError, match="TorchScript archive.*open_clip.create_model"):
    openclip.load_openclip(jit_path)
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(openclip.CheckpointError, match="weights.npz: unknown checkpoint format"):
    openclip.load_openclip(str(tmp_path / "weights.npz"))


def test_export_refuses_what_open_clip_cannot_build():
  config = get_preset("tiny")
  config = config.replace(text=dataclasses.replace(config.text, hidden_act="relu"))
  with pytest.raises(ValueError, match="one of \\['gelu', 'quick_gelu'\\]"):
    openclip.model_cfg_of(config)


def test_export_to_and_checkpoints_from_a_bucket(tmp_path, gcs_bucket, openai_like):
  """save_openclip into gs://, read back as a folder and as a file (its config beside it, in the
  bucket), and a torch checkpoint read from the bucket as from the disk."""
  model = create_clip(get_preset("tiny"), seed=2)
  remote = f"{gcs_bucket}/run/open_clip"
  assert openclip.save_openclip(model, remote) == remote
  local = openclip.save_openclip(model, str(tmp_path / "open_clip"))
  assert storage.listdir(remote) == sorted(os.listdir(local))
  for name in os.listdir(local):
    with open(os.path.join(local, name), "rb") as f:
      assert storage.read_bytes(storage.join(remote, name)) == f.read(), name
  expected = nnx.to_flat_state(nnx.state(model, nnx.Param))
  config = openclip.config_from_model_cfg(openclip.model_cfg_of(model.config))
  for path in (remote, storage.join(remote, openclip.WEIGHTS_FILE)):
    assert pretrained.is_openclip(path)
    loaded = pretrained.load_pretrained(path)
    assert loaded.config == config
    got = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
    for key, value in expected:
      assert np.array_equal(np.asarray(value[...]), np.asarray(got[key][...])), key
  _, state, _, _ = openai_like
  checkpoint = _save("ddp_pth", state, tmp_path)
  storage.upload(checkpoint, f"{gcs_bucket}/ckpts/epoch_3.pth")
  from_disk = openclip.load_openclip(checkpoint)
  from_bucket = openclip.load_openclip(f"{gcs_bucket}/ckpts/epoch_3.pth")
  got = dict(nnx.to_flat_state(nnx.state(from_bucket, nnx.Param)))
  for key, value in nnx.to_flat_state(nnx.state(from_disk, nnx.Param)):
    assert np.array_equal(np.asarray(value[...]), np.asarray(got[key][...])), key
  with pytest.raises(FileNotFoundError, match=f"{gcs_bucket}/ckpts/none.pt: no such checkpoint"):
    openclip.load_openclip(f"{gcs_bucket}/ckpts/none.pt")
