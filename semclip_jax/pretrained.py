"""Any pretrained CLIP by path: a Hugging Face folder or hub id, or an open_clip / OpenAI-layout
checkpoint (file, or folder with open_clip_config.json), local or `gs://`. The one loader behind
`config.model.init_from` and `python -m semclip_jax.evaluate --model`."""

from __future__ import annotations

import jax.numpy as jnp

from semclip_jax import hf, openclip, storage
from semclip_jax.models.clip import CLIP


def is_openclip(path: str) -> bool:
  """A checkpoint file (.safetensors/.pt/.pth/.bin/.ckpt), or a folder holding open_clip's
  config and no Hugging Face config.json (LAION's hub folders hold both: HF is preferred)."""
  storage.check(path, "pretrained model (model.init_from, --model)")
  if storage.isdir(path):
    return (storage.isfile(storage.join(path, openclip.CONFIG_FILE))
            and not storage.isfile(storage.join(path, hf.CONFIG_FILE)))
  return path.endswith(openclip.SUFFIXES)


def load_pretrained(path: str, arch: str = "", *, dtype=jnp.float32) -> CLIP:
  """Our `CLIP` from `path`; `arch` (an open_clip architecture name or model-config JSON, "" to
  infer) applies to open_clip / OpenAI-layout checkpoints only."""
  if is_openclip(path):
    return openclip.load_openclip(path, arch, dtype=dtype)
  if arch:
    raise ValueError(f"{path}: an architecture ({arch!r}) is given, but this is a Hugging Face "
                     "folder or hub id, whose config.json decides the architecture; architectures "
                     "apply to open_clip / OpenAI-layout checkpoint files")
  return hf.load_hf_clip(path, dtype=dtype)
