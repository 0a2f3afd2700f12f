"""Hugging Face interchange: parity with transformers' PyTorch CLIPModel, round trips, bad folders."""

import json
import logging
import os
import re
import shutil
import stat

import huggingface_hub
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers
from flax import nnx

from hf_oracle import ORACLE_CONFIGS, make_oracle, torch_embeddings
from semclip_jax import hf, openclip, storage
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.models import clip_logits, create_clip, get_preset

CAPTIONS = [
    "A man riding a horse on a beach.",
    "Two dogs are not playing with a red ball",
    "a photo of a cat",
    "",
    "There is no bicycle leaning against the old brick wall, only a scooter.",
    "Un café très chaud — “quoted” text &amp; emoji 😀",
    " ".join(["long"] * 90),
    "the quick brown fox jumps over the lazy dog " * 2,
]


def _inputs(model_config, seed=0):
  rng = np.random.default_rng(seed)
  size = model_config.vision.image_size
  pixels = rng.normal(size=(len(CAPTIONS), size, size, 3)).astype(np.float32)
  return pixels, CLIPTokenizer()(CAPTIONS)


def _ours(model, pixels, ids):
  zi, zt = model(jnp.asarray(pixels), jnp.asarray(ids))
  return np.asarray(zi), np.asarray(zt), np.asarray(clip_logits(zi, zt, model.logit_scale[...]))


def _assert_same_embeddings(a, b, atol=1e-5):
  for x, y, what in zip(a, b, ("image embeddings", "text embeddings", "logits")):
    np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=what)


@pytest.mark.parametrize("name", sorted(ORACLE_CONFIGS))
def test_load_hf_clip_matches_transformers(tmp_path, name):
  oracle = make_oracle(name, tmp_path)
  model = hf.load_hf_clip(str(tmp_path))
  pixels, ids = _inputs(model.config)
  expected = torch_embeddings(oracle, pixels, ids)
  assert np.abs(expected[1]).max() > 1e-2  # a degenerate oracle would make parity vacuous
  _assert_same_embeddings(_ours(model, pixels, ids), expected)


@pytest.mark.parametrize("name", sorted(ORACLE_CONFIGS))
def test_save_hf_clip_loads_in_transformers(tmp_path, name):
  config = hf.config_from_hf(transformers.CLIPConfig(**ORACLE_CONFIGS[name]))
  model = create_clip(config, seed=3)
  out = hf.save_hf_clip(model, str(tmp_path / "export"))

  torch_model, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
  pixels, ids = _inputs(config)
  _assert_same_embeddings(_ours(model, pixels, ids), torch_embeddings(torch_model.eval(), pixels, ids))

  processor = transformers.CLIPProcessor.from_pretrained(out)
  batch = processor(text=CAPTIONS[:3], images=[np.zeros((50, 70, 3), np.uint8)])
  assert np.asarray(batch["pixel_values"]).shape == (1, 3) + (config.vision.image_size,) * 2
  ours = CLIPTokenizer()(CAPTIONS[:3])
  for row, hf_ids in enumerate(batch["input_ids"]):
    np.testing.assert_array_equal(ours[row, :len(hf_ids)], hf_ids)
    assert not ours[row, len(hf_ids):].any()


def test_load_save_load_is_bit_identical(tmp_path):
  make_oracle("gelu_first_eos", tmp_path / "a")
  first = hf.load_hf_clip(str(tmp_path / "a"))
  hf.save_hf_clip(first, str(tmp_path / "b"))
  second = hf.load_hf_clip(str(tmp_path / "b"))
  assert second.config == first.config
  a, b = nnx.state(first, nnx.Param), nnx.state(second, nnx.Param)
  for (path, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    assert np.array_equal(np.asarray(x[...]), np.asarray(y[...])), path
  original = safetensors.numpy.load_file(str(tmp_path / "a" / "model.safetensors"))
  exported = safetensors.numpy.load_file(str(tmp_path / "b" / "model.safetensors"))
  assert original.keys() == exported.keys()
  for key in original:
    assert np.array_equal(original[key], exported[key]), key


def test_exported_files_are_readable_by_others_as_the_umask_allows(tmp_path):
  """Teammates on a shared filesystem read exports: every file of the HF and open_clip folders
  gets 0o644 under umask 022 (safetensors alone used to leave model.safetensors 0o600)."""
  model = create_clip(get_preset("tiny"))
  old = os.umask(0o022)
  try:
    folders = [hf.save_hf_clip(model, str(tmp_path / "hf")),
               openclip.save_openclip(model, str(tmp_path / "open_clip"))]
  finally:
    os.umask(old)
  modes = {f"{os.path.basename(folder)}/{name}":
           stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
           for folder in folders for name in os.listdir(folder)}
  assert "hf/model.safetensors" in modes and "open_clip/open_clip_model.safetensors" in modes
  assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


def test_config_from_transformers_object_equals_config_json(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  from_file = hf.read_config(str(tmp_path))
  from_object = hf.config_from_hf(transformers.CLIPConfig.from_pretrained(str(tmp_path)))
  assert from_file == from_object
  assert from_file.text.eos_token_id == 2 and from_file.vision.patch_size == 8


def test_half_precision_weights_load_as_float32(tmp_path):
  oracle = make_oracle("gelu_first_eos", tmp_path)
  oracle.half().save_pretrained(tmp_path)
  model = hf.load_hf_clip(str(tmp_path))
  dtypes = {np.asarray(v[...]).dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert dtypes == {np.dtype(np.float32)}


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file and tensor, never a half-loaded model.
# ---------------------------------------------------------------------------------------------
def _rewrite_weights(folder, edit):
  path = os.path.join(folder, "model.safetensors")
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
  return path


def test_folder_without_weights(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
    hf.load_hf_clip(str(tmp_path))


def test_folder_with_only_pickled_weights_is_refused(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  os.rename(tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*never unpickles"):
    hf.load_hf_clip(str(tmp_path))


def test_config_of_another_model_type(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  config_path = tmp_path / "config.json"
  values = json.loads(config_path.read_text())
  values["model_type"] = "siglip"
  config_path.write_text(json.dumps(values))
  with pytest.raises(ValueError, match=r"config\.json: model_type is 'siglip'"):
    hf.load_hf_clip(str(tmp_path))


def test_tensor_of_wrong_shape(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  name = "text_model.encoder.layers.1.mlp.fc1.weight"
  path = _rewrite_weights(tmp_path, lambda t: t.update({name: t[name][:-1]}))
  with pytest.raises(ValueError, match=rf"{path}: tensor {name} has shape \(255, 64\).*\(256, 64\)"):
    hf.load_hf_clip(str(tmp_path))


def test_missing_and_unexpected_tensors(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  shutil.copytree(tmp_path, tmp_path / "extra", ignore=shutil.ignore_patterns("extra"))
  _rewrite_weights(tmp_path, lambda t: t.pop("vision_model.post_layernorm.bias"))
  with pytest.raises(KeyError, match=r"model\.safetensors: missing 1 CLIP tensor.*post_layernorm\.bias"):
    hf.load_hf_clip(str(tmp_path))
  _rewrite_weights(tmp_path / "extra", lambda t: t.update({"classifier.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(KeyError, match=r"model\.safetensors: 1 tensor\(s\).*classifier\.weight"):
    hf.load_hf_clip(str(tmp_path / "extra"))


def test_not_a_folder_nor_hub_id(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a folder"):
    hf.load_hf_clip(str(tmp_path / "does" / "not" / "exist"))


def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path):
  make_oracle("quick_gelu_legacy_eos", tmp_path)
  name = "vision_model.encoder.layers.1.mlp.fc2.bias"

  def poison(tensors):
    tensors[name] = tensors[name].copy()
    tensors[name][[3, 5]] = [np.nan, -np.inf]

  path = _rewrite_weights(tmp_path, poison)
  with pytest.raises(ValueError, match=re.escape(f"{path}: tensor {name} holds 2 non-finite")):
    hf.load_hf_clip(str(tmp_path))


def _shard_weights(folder):
  """Splits the folder's model.safetensors into two shards and their index, as transformers saves
  a large model; returns (index path, weight_map)."""
  single = os.path.join(folder, "model.safetensors")
  tensors = safetensors.numpy.load_file(single)
  os.remove(single)
  names, weight_map = sorted(tensors), {}
  for i, part in enumerate((names[::2], names[1::2]), 1):
    shard = f"model-0000{i}-of-00002.safetensors"
    safetensors.numpy.save_file({n: tensors[n] for n in part}, os.path.join(folder, shard),
                                metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(part, shard))
  index = os.path.join(folder, "model.safetensors.index.json")
  with open(index, "w", encoding="utf-8") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return index, weight_map


def test_sharded_index_names_only_shards_beside_it(tmp_path):
  folder = tmp_path / "hf"
  make_oracle("quick_gelu_legacy_eos", folder)
  index, weight_map = _shard_weights(folder)
  hf.load_hf_clip(str(folder))  # a sharded folder loads
  # A copy of the first shard outside the folder: an index naming it must not reach it.
  shutil.copy(folder / "model-00001-of-00002.safetensors", tmp_path / "outside.safetensors")
  name = sorted(weight_map)[0]
  for shard in ("../outside.safetensors", str(tmp_path / "outside.safetensors"),
                "sub/x.safetensors"):
    with open(index, "w", encoding="utf-8") as f:
      json.dump({"weight_map": {**weight_map, name: shard}}, f)
    message = f"{index}: weight_map entry {name!r} names {shard!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
      hf.load_hf_clip(str(folder))
  with open(index, "w", encoding="utf-8") as f:
    json.dump({"weight_map": {**weight_map, name: "model-00003-of-00003.safetensors"}}, f)
  with pytest.raises(FileNotFoundError, match=re.escape(f"{index}: weight_map names the shard "
                                                         "model-00003-of-00003.safetensors")):
    hf.load_hf_clip(str(folder))


def test_unreadable_files_are_named(tmp_path):
  """A truncated safetensors file, config.json or index that is not JSON (or not an object): one
  ValueError naming the file, not safetensors' or json's message alone."""
  folder = tmp_path / "hf"
  make_oracle("quick_gelu_legacy_eos", folder)
  weights = folder / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
  with pytest.raises(ValueError, match=re.escape(f"{weights}: not a readable safetensors file")):
    hf.load_hf_clip(str(folder))

  make_oracle("quick_gelu_legacy_eos", folder)
  config = folder / "config.json"
  good_config = config.read_bytes()
  for content, message in ((b"\xff\xfe{ not json", "not valid JSON"), (b"[1, 2]", "not an object")):
    config.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{config}: ") + ".*" + message):
      hf.load_hf_clip(str(folder))
  config.write_bytes(good_config)

  index, _ = _shard_weights(folder)
  second = folder / "model-00002-of-00002.safetensors"
  second.write_bytes(b"\x10")
  with pytest.raises(ValueError, match=re.escape(f"{second}: not a readable safetensors file")):
    hf.load_hf_clip(str(folder))
  with open(index, "w", encoding="utf-8") as f:
    f.write('{"weight_map": ')
  with pytest.raises(ValueError, match=re.escape(f"{index}: not valid JSON")):
    hf.load_hf_clip(str(folder))


def test_a_missing_local_path_is_never_a_hub_lookup(tmp_path, monkeypatch, caplog):
  """A name is a hub id only as 'org/name' not starting with '.', '/' or '~', whose 'org' is no
  local folder; any other missing path is one error saying so, without asking the hub."""
  monkeypatch.chdir(tmp_path)
  os.mkdir("runs")
  for path in ("runs/model", "./model", "~/model", "a/b/c", "model"):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path!r} is not a folder holding a "
                                                          "Hugging Face CLIP checkpoint: the local "
                                                          "path does not exist")):
      hf.load_hf_clip(path)
  assert not caplog.records  # no word of the hub


def test_a_hub_id_is_loaded_with_one_line_naming_the_folder_not_found(tmp_path, monkeypatch,
                                                                      caplog):
  """'nope/model' may be a mistyped local path: taking it as a hub id is said, once, and when the
  hub cannot give it the one-line error names both readings."""
  monkeypatch.chdir(tmp_path)
  local = f"'nope/model': no local folder {tmp_path.resolve() / 'nope' / 'model'}"
  # Offline (HF_HUB_OFFLINE, as in every test) and not in the cache.
  with caplog.at_level(logging.INFO), pytest.raises(FileNotFoundError) as error:
    hf.load_hf_clip("nope/model")
  assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
      (logging.WARNING, f"{local}; loading the Hugging Face hub model nope/model")]
  assert str(error.value) == (f"{local}, and the Hugging Face hub model nope/model could not be "
                              "loaded: the hub is off (HF_HUB_OFFLINE) and the local Hugging Face "
                              "cache does not hold it")
  # Online, the client's (multi-line) reason, on the same line.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

  def unreachable(*_, **__):
    raise OSError("Name or service not known\nCheck your connection.")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
  with pytest.raises(FileNotFoundError) as error:
    hf.load_hf_clip("nope/model")
  assert str(error.value) == (f"{local}, and the Hugging Face hub model nope/model could not be "
                              "loaded: the hub has no such model or could not be reached "
                              "(OSError: Name or service not known Check your connection.)")


# ---------------------------------------------------------------------------------------------
# A gs:// export folder (the GCS emulator of conftest.py).
# ---------------------------------------------------------------------------------------------
def _assert_same_params(a, b):
  flat_a = nnx.to_flat_state(nnx.state(a, nnx.Param))
  flat_b = dict(nnx.to_flat_state(nnx.state(b, nnx.Param)))
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    assert np.array_equal(np.asarray(x[...]), np.asarray(flat_b[path][...])), path


def test_export_replaces_an_earlier_export_and_never_writes_through_a_link(tmp_path):
  """An export into a folder holding an earlier one (sharded, with a vocabulary file of another
  tokenizer) leaves exactly the new export's files and the files that are no export's; a symlink
  named like an export file is replaced, its target outside the folder untouched."""
  model = create_clip(get_preset("tiny"), seed=1)
  fresh = tmp_path / "fresh"
  names = sorted(os.listdir(hf.save_hf_clip(model, str(fresh))))
  folder = tmp_path / "hf"
  hf.save_hf_clip(create_clip(get_preset("tiny"), seed=2), str(folder))
  _shard_weights(folder)
  (folder / "chat_template.jinja").write_text("an earlier tokenizer's")
  kept = {"README.md": "a model card", "notes.txt": "mine", "pytorch_model.bin": "not ours"}
  for name, text in kept.items():
    (folder / name).write_text(text)
  outside = tmp_path / "outside.json"
  outside.write_text("not the export's")
  for name in ("tokenizer.json", "config.json"):
    os.remove(folder / name)
    os.symlink(outside, folder / name)

  hf.save_hf_clip(model, str(folder))
  assert outside.read_text() == "not the export's"
  assert sorted(os.listdir(folder)) == sorted(names + list(kept))
  for name in names:
    assert not os.path.islink(folder / name), name
    assert (folder / name).read_bytes() == (fresh / name).read_bytes(), name
  for name, text in kept.items():
    assert (folder / name).read_text() == text
  _assert_same_params(model, hf.load_hf_clip(str(folder)))


def test_export_to_a_bucket_removes_an_earlier_exports_objects(tmp_path, gcs_bucket):
  model = create_clip(get_preset("tiny"), seed=1)
  names = sorted(os.listdir(hf.save_hf_clip(model, str(tmp_path / "fresh"))))
  remote = f"{gcs_bucket}/run/hf"
  for name in ("model.safetensors.index.json", "model-00001-of-00002.safetensors", "notes.txt"):
    with storage.open(storage.join(remote, name), "wb") as f:
      f.write(b"earlier")
  hf.save_hf_clip(model, remote)
  assert storage.listdir(remote) == sorted(names + ["notes.txt"])
  _assert_same_params(model, hf.load_hf_clip(remote))


def test_export_to_a_bucket_loads_back_and_holds_the_local_files(tmp_path, gcs_bucket):
  model = create_clip(get_preset("tiny"), seed=1)
  remote = f"{gcs_bucket}/run/hf"
  assert hf.save_hf_clip(model, remote) == remote
  local = hf.save_hf_clip(model, str(tmp_path / "hf"))
  names = sorted(os.listdir(local))
  assert "model.safetensors" in names and "tokenizer.json" in names
  assert storage.listdir(remote) == names  # the same files, nothing else (no temporary files)
  for name in names:
    with open(os.path.join(local, name), "rb") as f:
      assert storage.read_bytes(storage.join(remote, name)) == f.read(), name
  loaded = hf.load_hf_clip(remote)
  assert loaded.config == model.config
  _assert_same_params(model, loaded)

  class Broken:
    def save_pretrained(self, folder):
      raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):  # a failed save uploads nothing
    hf.save_hf_clip(model, f"{gcs_bucket}/failed/hf", tokenizer=Broken())
  assert not storage.exists(f"{gcs_bucket}/failed/hf/model.safetensors")
  # Errors name the bucket's objects, not the temporary local copy.
  storage.remove(storage.join(remote, "config.json"))
  with pytest.raises(FileNotFoundError, match=re.escape(f"{remote}/config.json: no config.json")):
    hf.load_hf_clip(remote)
  storage.remove(storage.join(remote, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match=re.escape(f"{remote}: no model.safetensors")):
    hf.load_hf_clip(remote)
  with pytest.raises(FileNotFoundError, match="not a folder holding a Hugging Face CLIP"):
    hf.load_hf_clip(f"{gcs_bucket}/nothing/here")
  with pytest.raises(storage.UnsupportedPathError, match="s3://"):
    hf.load_hf_clip("s3://bucket/hf")
