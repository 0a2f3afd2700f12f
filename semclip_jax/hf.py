"""Hugging Face CLIP interchange: load from and export to the PyTorch `CLIPModel` folder layout.

One table (`_TOP_LEVEL`, `_PER_BLOCK`) pairs each of our parameter paths with its HF tensor name
and a transform; `name_map(config)` expands it for a config and both directions read it. Weights
are read and written as safetensors only: a folder holding nothing but pickles is refused.
Folders may be local or `gs://` (see `storage`): a bucket's folder is read from a temporary local
copy of its safetensors and JSON files (`opened_folder`), and written through a local folder that
is uploaded when complete (`save_hf_clip`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from semclip_jax import atomic_io, storage
from semclip_jax.data.transforms import CLIP_MEAN, CLIP_STD
from semclip_jax.models.clip import CLIP, clip_from_arrays
from semclip_jax.models.model_config import CLIPConfig, TextConfig, VisionConfig
from semclip_jax.sharding import path_str

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Files fetched from the hub (and from a gs:// folder): never the pickled `pytorch_model.bin`.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ----------------------------------------------------------------------------------------------
# The name map.
# ----------------------------------------------------------------------------------------------
class Transform(NamedTuple):
  to_hf: Callable[[np.ndarray], np.ndarray]
  from_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform(lambda x: x, lambda x: x)
# Our Linear kernels are [in, out]; torch.nn.Linear weights are [out, in].
LINEAR = Transform(lambda x: x.T, lambda x: x.T)
# Our patch convolution kernel is HWIO; torch.nn.Conv2d's weight is OIHW.
CONV = Transform(lambda x: x.transpose(3, 2, 0, 1), lambda x: x.transpose(2, 3, 1, 0))


def _layer_norm(ours: str, theirs: str) -> list[tuple[str, str, Transform]]:
  return [(f"{ours}.scale", f"{theirs}.weight", IDENTITY), (f"{ours}.bias", f"{theirs}.bias", IDENTITY)]


def _linear(ours: str, theirs: str, bias: bool = True) -> list[tuple[str, str, Transform]]:
  pairs = [(f"{ours}.kernel", f"{theirs}.weight", LINEAR)]
  return pairs + ([(f"{ours}.bias", f"{theirs}.bias", IDENTITY)] if bias else [])


_TOP_LEVEL: list[tuple[str, str, Transform]] = [
    ("logit_scale", "logit_scale", IDENTITY),
    ("vision.patch_embed.kernel", "vision_model.embeddings.patch_embedding.weight", CONV),
    ("vision.class_embedding", "vision_model.embeddings.class_embedding", IDENTITY),
    ("vision.pos_embedding", "vision_model.embeddings.position_embedding.weight", IDENTITY),
    *_layer_norm("vision.pre_ln", "vision_model.pre_layrnorm"),  # sic: HF's spelling
    *_layer_norm("vision.post_ln", "vision_model.post_layernorm"),
    *_linear("vision.proj", "visual_projection", bias=False),
    ("text.token_embed.embedding", "text_model.embeddings.token_embedding.weight", IDENTITY),
    ("text.pos_embedding", "text_model.embeddings.position_embedding.weight", IDENTITY),
    *_layer_norm("text.final_ln", "text_model.final_layer_norm"),
    *_linear("text.proj", "text_projection", bias=False),
]

_PER_BLOCK: list[tuple[str, str, Transform]] = [
    *_layer_norm("ln1", "layer_norm1"),
    *_linear("attn.q", "self_attn.q_proj"),
    *_linear("attn.k", "self_attn.k_proj"),
    *_linear("attn.v", "self_attn.v_proj"),
    *_linear("attn.out", "self_attn.out_proj"),
    *_layer_norm("ln2", "layer_norm2"),
    *_linear("mlp.fc1", "mlp.fc1"),
    *_linear("mlp.fc2", "mlp.fc2"),
]

# Non-persistent buffers that older transformers versions wrote into checkpoints.
_IGNORED_HF_SUFFIXES = (".position_ids",)


def name_map(config: CLIPConfig) -> dict[str, tuple[str, Transform]]:
  """Our dotted parameter path -> (HF tensor name, transform), for every parameter of `config`."""
  table = {ours: (theirs, t) for ours, theirs, t in _TOP_LEVEL}
  for ours_tower, hf_tower, layers in (("vision", "vision_model", config.vision.num_hidden_layers),
                                       ("text", "text_model", config.text.num_hidden_layers)):
    for i in range(layers):
      for ours, theirs, t in _PER_BLOCK:
        table[f"{ours_tower}.encoder.blocks.{i}.{ours}"] = (f"{hf_tower}.encoder.layers.{i}.{theirs}", t)
  return table


# ----------------------------------------------------------------------------------------------
# Configs.
# ----------------------------------------------------------------------------------------------
def _sub_config(cls, values: Mapping[str, Any]):
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def config_from_hf(hf_config: Mapping[str, Any] | Any, *, source: str = "config") -> CLIPConfig:
  """Our `CLIPConfig` from a HF CLIP config: a `config.json` dict or a `transformers.CLIPConfig`.

  Fields the HF config omits take transformers' defaults (mirrored by our dataclasses).
  """
  values = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
  model_type = values.get("model_type")
  if model_type != "clip":
    raise ValueError(f"{source}: model_type is {model_type!r}, expected 'clip' (a two-tower "
                     "transformers CLIPModel); other model types are not CLIP checkpoints")
  top = {k: values[k] for k in ("projection_dim", "logit_scale_init_value") if k in values}
  return CLIPConfig(text=_sub_config(TextConfig, values.get("text_config") or {}),
                    vision=_sub_config(VisionConfig, values.get("vision_config") or {}), **top)


def config_to_hf(config: CLIPConfig) -> dict[str, Any]:
  """A `config.json` dict that `transformers.CLIPConfig` reads back into the same architecture."""
  text = dict(dataclasses.asdict(config.text), model_type="clip_text_model",
              projection_dim=config.projection_dim)
  vision = dict(dataclasses.asdict(config.vision), model_type="clip_vision_model",
                projection_dim=config.projection_dim)
  return {"architectures": ["CLIPModel"], "model_type": "clip", "initializer_factor": 1.0,
          "projection_dim": config.projection_dim,
          "logit_scale_init_value": config.logit_scale_init_value,
          "text_config": text, "vision_config": vision}


# ----------------------------------------------------------------------------------------------
# Reading a folder.
# ----------------------------------------------------------------------------------------------
def resolve_folder(path_or_repo_id: str, revision: str | None = None) -> str:
  """A local folder as is; otherwise a hub id, downloaded (safetensors and JSON only) to the cache."""
  if os.path.isdir(path_or_repo_id):
    return path_or_repo_id
  if os.path.exists(path_or_repo_id) or path_or_repo_id.count("/") != 1:
    raise FileNotFoundError(f"{path_or_repo_id!r} is not a folder holding a Hugging Face CLIP "
                            "checkpoint, nor a hub id of the form 'org/name'")
  import huggingface_hub  # pylint: disable=import-outside-toplevel

  try:
    return huggingface_hub.snapshot_download(path_or_repo_id, revision=revision,
                                             allow_patterns=HUB_PATTERNS)
  except Exception as e:  # the hub client raises many types; the message names them
    raise FileNotFoundError(f"{path_or_repo_id!r} is not a local folder, and fetching it from "
                            f"the Hugging Face hub failed: {type(e).__name__}: {e}") from e


def _no_weights(folder: str, names: list[str]) -> FileNotFoundError:
  """The error for a folder (whose files are `names`) without safetensors weights."""
  pickles = [n for n in sorted(names) if n.endswith(PICKLE_SUFFIXES)]
  hint = (f" It holds only pickled weights ({', '.join(pickles)}), which semclip_jax never "
          "unpickles; convert them to safetensors first (e.g. load in transformers and "
          "save_pretrained(safe_serialization=True))." if pickles else "")
  return FileNotFoundError(f"{folder}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}.{hint}")


def _naming(error: BaseException, local: str, remote: str) -> BaseException:
  """`error` with the local copy's folder replaced by the remote folder in its message (the same
  type), so that errors name the files the user gave; `error` itself when it cannot be rebuilt."""
  if len(error.args) != 1 or not isinstance(error.args[0], str) or local not in error.args[0]:
    return error
  try:
    return type(error)(error.args[0].replace(local, remote))
  except Exception:  # pylint: disable=broad-except  # an exception type with another signature
    return error


@contextlib.contextmanager
def opened_folder(path_or_repo_id: str, revision: str | None = None) -> Iterator[str]:
  """A local folder holding the checkpoint: `resolve_folder` for a local folder or a hub id; for
  a `gs://` folder a temporary download of its weights, configs and tokenizer files (those of
  HUB_PATTERNS: never pickles), removed afterwards. Errors raised in the block name the gs://
  files, not the temporary ones."""
  storage.check(path_or_repo_id, "Hugging Face CLIP folder")
  if not storage.is_remote(path_or_repo_id):
    yield resolve_folder(path_or_repo_id, revision)
    return
  remote = path_or_repo_id.rstrip("/")
  try:
    names = storage.listdir(remote)
  except FileNotFoundError:
    raise FileNotFoundError(f"{remote!r} is not a folder holding a Hugging Face CLIP checkpoint "
                            "(no objects under it)") from None
  if WEIGHTS_FILE not in names and WEIGHTS_INDEX_FILE not in names:
    raise _no_weights(remote, names)
  with tempfile.TemporaryDirectory(prefix="semclip_hf_") as local:
    for name in names:
      if any(fnmatch.fnmatchcase(name, pattern) for pattern in HUB_PATTERNS):
        with storage.open(storage.join(remote, name), "rb") as src, \
            open(os.path.join(local, name), "wb") as dst:
          shutil.copyfileobj(src, dst, 16 << 20)
    try:
      yield local
    except (OSError, ValueError, KeyError) as e:
      raise _naming(e, local, remote) from e


def read_config(folder: str) -> CLIPConfig:
  """Our `CLIPConfig` of a HF folder's config.json (a local or gs:// folder)."""
  path = storage.join(folder, CONFIG_FILE)
  if not storage.isfile(path):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a Hugging Face model folder")
  with storage.open(path, encoding="utf-8") as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from e
  return config_from_hf(values, source=path)


def _weight_files(folder: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file that holds it (single file or sharded index), in a
  local folder (safetensors opens local files only: see `opened_folder` for gs://)."""
  single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, WEIGHTS_INDEX_FILE)
  if os.path.isfile(single):
    with safetensors.safe_open(single, framework="numpy") as f:
      return {name: single for name in f.keys()}
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: has no 'weight_map' object")
    return {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
  raise _no_weights(folder, os.listdir(folder))


def read_hf_tensors(folder: str, names: list[str]) -> dict[str, tuple[np.ndarray, str]]:
  """Reads `names` from the folder's safetensors; returns name -> (array, file it came from)."""
  where = _weight_files(folder)
  missing = [n for n in names if n not in where]
  if missing:
    files = sorted(set(where.values())) or [folder]
    raise KeyError(f"{', '.join(files)}: missing {len(missing)} CLIP tensor(s): "
                   f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  wanted = set(names)
  unexpected = [n for n in where if n not in wanted and not n.endswith(_IGNORED_HF_SUFFIXES)]
  if unexpected:
    raise KeyError(f"{', '.join(sorted(set(where[n] for n in unexpected)))}: "
                   f"{len(unexpected)} tensor(s) that a CLIPModel of this config does not have: "
                   f"{', '.join(sorted(unexpected)[:8])}{' ...' if len(unexpected) > 8 else ''}")
  out = {}
  for file in sorted(set(where[n] for n in names)):
    with safetensors.safe_open(file, framework="numpy") as f:
      for name in names:
        if where[name] == file:
          out[name] = (f.get_tensor(name), file)
  return out


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------
def load_hf_clip(path_or_repo_id: str, *, dtype=jnp.float32, revision: str | None = None) -> CLIP:
  """Builds our `CLIP` from a HF CLIP folder (config.json + safetensors; local or gs://) or a
  hub id.

  Every parameter is checked (present, right shape, nothing extra) before any is placed, so a bad
  folder raises naming the file and tensor and never yields a half-loaded model. Parameters are
  float32 whatever the file's dtype; `dtype` is the compute dtype.
  """
  with opened_folder(path_or_repo_id, revision) as folder:
    config = read_config(folder)
    abstract = nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))
    table = name_map(config)
    flat = [(path_str(path), variable) for path, variable in nnx.to_flat_state(nnx.state(abstract))]
    tensors = read_hf_tensors(folder, [table[path][0] for path, _ in flat])
    values = {}
    for path, variable in flat:
      hf_name, transform = table[path]
      array, file = tensors[hf_name]
      value = transform.from_hf(array)
      if value.shape != variable.shape:
        raise ValueError(f"{file}: tensor {hf_name} has shape {tuple(array.shape)}, but "
                         f"config.json implies "
                         f"{tuple(transform.to_hf(np.empty(variable.shape)).shape)}")
      if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise ValueError(f"{file}: tensor {hf_name} has non-float dtype {array.dtype}")
      values[path] = value
  return clip_from_arrays(config, values, dtype=dtype)


def hf_state_dict(model: CLIP) -> dict[str, np.ndarray]:
  """Our parameters as HF `CLIPModel` tensors (float32 numpy, torch layout)."""
  table = name_map(model.config)
  out = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    hf_name, transform = table[path_str(path)]
    # np.array, not np.ascontiguousarray: the latter turns the 0-d logit_scale into shape (1,).
    out[hf_name] = np.array(transform.to_hf(np.asarray(variable[...], np.float32)), order="C")
  return out


def preprocessor_config(image_size: int) -> dict[str, Any]:
  """CLIPImageProcessor settings: bicubic shortest-side resize, centre crop, CLIP mean/std."""
  return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
          "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
          "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True}


def save_hf_clip(model: CLIP, out_dir: str, tokenizer=None) -> str:
  """Writes a folder that `transformers.CLIPModel` / `CLIPProcessor.from_pretrained` load as is.

  `tokenizer` is a `semclip_jax.data.tokenizer.CLIPTokenizer`; by default the vendored CLIP BPE
  tokenizer is written, so the folder is always complete. Returns `out_dir`.

  A `gs://` `out_dir` is written to a local temporary folder first, whose files are then uploaded
  (one object each, complete or absent) when every file is written; a save that raises uploads
  nothing.
  """
  from semclip_jax.data.tokenizer import CLIPTokenizer  # pylint: disable=import-outside-toplevel

  storage.check(out_dir, "Hugging Face export folder")
  with storage.writing_folder(out_dir) as folder:
    with atomic_io.replacing(os.path.join(folder, WEIGHTS_FILE)) as tmp:
      safetensors.numpy.save_file(hf_state_dict(model), tmp, metadata={"format": "pt"})
    json_options = dict(indent=2, sort_keys=True)
    atomic_io.write_json(os.path.join(folder, CONFIG_FILE), config_to_hf(model.config),
                         **json_options)
    atomic_io.write_json(os.path.join(folder, PREPROCESSOR_FILE),
                         preprocessor_config(model.config.vision.image_size), **json_options)
    (tokenizer or CLIPTokenizer()).save_pretrained(folder)
  return out_dir
