"""pretrained.load_pretrained: which loader a path goes to, and what an architecture applies to."""

import pytest

from semclip_jax import hf, openclip, pretrained, storage


def test_checkpoint_files_and_open_clip_folders_go_to_open_clip(tmp_path):
  for name in ("negclip.pth", "model.pt", "open_clip_model.safetensors", "w.bin", "last.ckpt"):
    assert pretrained.is_openclip(str(tmp_path / name)), name
  assert not pretrained.is_openclip("openai/clip-vit-base-patch32")  # a hub id
  folder = tmp_path / "hub"
  folder.mkdir()
  assert not pretrained.is_openclip(str(folder))
  (folder / openclip.CONFIG_FILE).write_text("{}")
  assert pretrained.is_openclip(str(folder))
  (folder / hf.CONFIG_FILE).write_text("{}")  # LAION's folders hold both: HF is preferred
  assert not pretrained.is_openclip(str(folder))


def test_an_architecture_for_a_hugging_face_folder_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="architectures apply to open_clip"):
    pretrained.load_pretrained(str(tmp_path), "ViT-B-32")


def test_bucket_paths_go_to_the_same_loaders(gcs_bucket):
  assert pretrained.is_openclip(f"{gcs_bucket}/ckpts/negclip.pth")
  folder = f"{gcs_bucket}/hub"
  with storage.open(f"{folder}/{openclip.CONFIG_FILE}", "w") as f:
    f.write("{}")
  assert pretrained.is_openclip(folder)
  with storage.open(f"{folder}/{hf.CONFIG_FILE}", "w") as f:
    f.write("{}")
  assert not pretrained.is_openclip(folder)
  with pytest.raises(storage.UnsupportedPathError, match="s3://"):
    pretrained.is_openclip("s3://bucket/model.pt")
