"""Hugging Face CLIP interchange: load from and export to the PyTorch `CLIPModel` folder layout.

One table (`_TOP_LEVEL`, `_PER_BLOCK`) pairs each of our parameter paths with its HF tensor name
and a transform; `name_map(config)` expands it for a config and both directions read it. Weights
are read and written as safetensors only: a folder holding nothing but pickles is refused.
Folders may be local or `gs://` (see `storage`): a bucket's folder is read from a temporary local
copy of its safetensors and JSON files (`opened_folder`), and written through a local folder that
is uploaded when complete (`save_hf_clip`).

What a loaded folder may not do: hold NaN or Inf weights, unreadable safetensors or JSON (each one
error naming the file, and the tensor), or name shards outside itself in its index. A model
argument is a hub id only by `model_card.hub_model_id`'s rule, loaded with a warning line that
says so; anything else is a local path, and a missing one is an error, never a hub lookup. An
export leaves its folder holding exactly the new export (`EXPORT_FILES`) and never writes through
a symlink.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Collection, Iterator, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from semclip_jax import atomic_io, model_card, storage
from semclip_jax.data.transforms import CLIP_MEAN, CLIP_STD
from semclip_jax.models.clip import CLIP, clip_from_arrays
from semclip_jax.models.model_config import CLIPConfig, TextConfig, VisionConfig
from semclip_jax.sharding import path_str

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Files fetched from the hub (and from a gs:// folder): never the pickled `pytorch_model.bin`.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The files of a Hugging Face CLIP folder that an export owns: the weights in either of
# transformers' layouts (one file; an index and its shards), the configs and the tokenizer's files.
# An export removes those it does not write itself, so that a folder never mixes two exports (a
# stale index and shards beside a new model.safetensors, an old vocabulary): `push_to_hub` uploads
# the whole folder. Anything else (the model card README.md, which `model_card` writes; a user's
# files; pickled weights, which semclip_jax neither writes nor reads) is left as it is.
EXPORT_FILES = (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, "model-*-of-*.safetensors", CONFIG_FILE,
                PREPROCESSOR_FILE, "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                "chat_template.jinja", "chat_template.json")


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
  """A local folder as is; a hub id (`model_card.hub_model_id`'s rule: "org/name", not starting
  with '.', '/' or '~', whose "org" is no local folder) downloaded, safetensors and JSON only, to
  the cache, with one warning line saying so (a mistyped local path of that shape reads as a hub
  id: the line names the folder that was not found). Anything else is a local path, never looked
  up on the hub: a mistyped path is one FileNotFoundError here, not a download attempt. A hub id
  that cannot be fetched is one FileNotFoundError naming both readings."""
  if os.path.isdir(path_or_repo_id):
    return path_or_repo_id
  repo_id = model_card.hub_model_id(path_or_repo_id)
  if repo_id is None:
    found = "is not a folder" if os.path.exists(path_or_repo_id) else "does not exist"
    raise FileNotFoundError(
        f"{path_or_repo_id!r} is not a folder holding a Hugging Face CLIP checkpoint: the local "
        f"path {found} ({model_card.HUB_ID_RULE})")
  import huggingface_hub  # pylint: disable=import-outside-toplevel

  # hub_model_id is None for any path that exists: this one does not.
  local = f"{repo_id!r}: no local folder {os.path.abspath(repo_id)}"
  logger.warning("%s; loading the Hugging Face hub model %s", local, repo_id)
  try:
    return huggingface_hub.snapshot_download(repo_id, revision=revision,
                                             allow_patterns=HUB_PATTERNS)
  except Exception as e:  # the hub client raises many types, some with multi-line messages
    raise FileNotFoundError(f"{local}, and the Hugging Face hub model {repo_id} could not be "
                            f"loaded: {_hub_failure(e)}") from e


def _hub_failure(error: Exception) -> str:
  """Why `snapshot_download` failed, in one line (the client's messages run over several)."""
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel

  if constants.is_offline_mode():
    return "the hub is off (HF_HUB_OFFLINE) and the local Hugging Face cache does not hold it"
  # The client's own words tell a missing (or private) model from an unreachable hub.
  return (f"the hub has no such model or could not be reached ({type(error).__name__}: "
          f"{' '.join(str(error).split())})")


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


def _read_json_object(path: str) -> dict[str, Any]:
  """The JSON object in `path` (local or gs://); anything else is one ValueError naming it."""
  with storage.open(path, encoding="utf-8") as f:
    try:
      value = json.load(f)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for a binary file
      raise ValueError(f"{path}: not valid JSON: {e}") from e
  if not isinstance(value, dict):
    raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object")
  return value


@contextlib.contextmanager
def _safetensors(file: str) -> Iterator[Any]:
  """`safetensors.safe_open(file)`; a corrupt or truncated file (safetensors' SafetensorError, or
  an OSError), which safetensors reports without its name, is one ValueError naming it."""
  try:
    with safetensors.safe_open(file, framework="numpy") as f:
      yield f
  except (safetensors.SafetensorError, OSError) as e:
    raise ValueError(f"{file}: not a readable safetensors file: {type(e).__name__}: {e}") from e


def read_config(folder: str) -> CLIPConfig:
  """Our `CLIPConfig` of a HF folder's config.json (a local or gs:// folder)."""
  path = storage.join(folder, CONFIG_FILE)
  if not storage.isfile(path):
    raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; not a Hugging Face model folder")
  return config_from_hf(_read_json_object(path), source=path)


def _shard_paths(folder: str, index: str, weight_map: Mapping[str, Any]) -> dict[str, str]:
  """HF tensor name -> shard path of an index's `weight_map`. Shards are file names beside the
  index: an entry that would reach outside the folder (`../x.safetensors`, an absolute path, a
  subfolder) is refused, as is one naming a file that is not there."""
  for name, shard in weight_map.items():
    if not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard:
      raise ValueError(f"{index}: weight_map entry {name!r} names {shard!r}, which is not a file "
                       "name in the index's folder (shards sit beside the index)")
  for shard in sorted(set(weight_map.values())):
    if not os.path.isfile(os.path.join(folder, shard)):
      raise FileNotFoundError(f"{index}: weight_map names the shard {shard}, which is not in "
                              "the folder")
  return {name: os.path.join(folder, shard) for name, shard in weight_map.items()}


def _weight_files(folder: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file that holds it (single file or sharded index), in a
  local folder (safetensors opens local files only: see `opened_folder` for gs://)."""
  single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, WEIGHTS_INDEX_FILE)
  if os.path.isfile(single):
    with _safetensors(single) as f:
      return {name: single for name in f.keys()}
  if os.path.isfile(index):
    weight_map = _read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: has no 'weight_map' object")
    return _shard_paths(folder, index, weight_map)
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
    with _safetensors(file) as f:
      for name in names:
        if where[name] == file:
          out[name] = (f.get_tensor(name), file)
  return out


def check_finite(array: np.ndarray, where: str, error: type[Exception] = ValueError) -> None:
  """Raises `error` naming `where` (the file and tensor) when `array` holds NaN or Inf: one such
  weight makes embeddings NaN, and every metric of the model NaN. Refused at load, naming the
  tensor, for every checkpoint format (`openclip` too)."""
  finite = np.isfinite(np.asarray(array, np.float32))
  if not finite.all():
    raise error(f"{where} holds {finite.size - np.count_nonzero(finite)} non-finite value(s) (NaN "
                f"or Inf) of {finite.size}; a broken checkpoint is refused")


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------
def load_hf_clip(path_or_repo_id: str, *, dtype=jnp.float32, revision: str | None = None) -> CLIP:
  """Builds our `CLIP` from a HF CLIP folder (config.json + safetensors; local or gs://) or a
  hub id.

  Every parameter is checked (present, right shape, floating point and finite, nothing extra)
  before any is placed, so a bad folder raises naming the file and tensor and never yields a
  half-loaded model. Parameters are float32 whatever the file's dtype; `dtype` is the compute dtype.
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
      check_finite(value, f"{file}: tensor {hf_name}")
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

  Every file is replaced by a rename (`atomic_io`), so a symlink in the folder is replaced, never
  written through. Once the new files are in place, the files of an earlier export that this one
  does not write (`EXPORT_FILES`: e.g. an index and shards beside the new single file) are
  removed; other files are kept. A `gs://` `out_dir` is written to a local temporary folder first,
  whose files are then uploaded (one object each, complete or absent) when every file is written,
  and the earlier export's other objects removed; a save that raises uploads and removes nothing.
  """
  from semclip_jax.data.tokenizer import CLIPTokenizer  # pylint: disable=import-outside-toplevel

  storage.check(out_dir, "Hugging Face export folder")
  written = [WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE]
  with storage.writing_folder(out_dir) as folder:
    with atomic_io.replacing(os.path.join(folder, WEIGHTS_FILE)) as tmp:
      safetensors.numpy.save_file(hf_state_dict(model), tmp, metadata={"format": "pt"})
    json_options = dict(indent=2, sort_keys=True)
    atomic_io.write_json(os.path.join(folder, CONFIG_FILE), config_to_hf(model.config),
                         **json_options)
    atomic_io.write_json(os.path.join(folder, PREPROCESSOR_FILE),
                         preprocessor_config(model.config.vision.image_size), **json_options)
    written += _save_tokenizer(tokenizer or CLIPTokenizer(), folder)
  _remove_earlier_export(out_dir, written)
  return out_dir


def _save_tokenizer(tokenizer, folder: str) -> list[str]:
  """Writes the tokenizer's files into `folder`; returns their names. transformers' save_pretrained
  opens its files by name, which would write through a symlink (into the file it points to, maybe
  outside the folder): it writes into a temporary folder, whose files are copied into place by
  `atomic_io.replacing`, whose rename replaces a link itself."""
  with tempfile.TemporaryDirectory(prefix="semclip_tokenizer_") as staging:
    tokenizer.save_pretrained(staging)
    names = [n for n in sorted(os.listdir(staging)) if os.path.isfile(os.path.join(staging, n))]
    for name in names:
      with atomic_io.replacing(os.path.join(folder, name)) as tmp:
        shutil.copyfile(os.path.join(staging, name), tmp)
  return names


def _remove_earlier_export(out_dir: str, written: Collection[str]) -> None:
  """Removes the export files (`EXPORT_FILES`) in `out_dir` (local or gs://) that the export just
  made did not write; everything else is kept."""
  for name in storage.listdir(out_dir):
    path = storage.join(out_dir, name)
    if (name not in written and any(fnmatch.fnmatchcase(name, p) for p in EXPORT_FILES)
        and not storage.isdir(path)):
      storage.remove(path)
