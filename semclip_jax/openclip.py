"""open_clip / OpenAI-layout CLIP checkpoints: load them into our `CLIP`, and export ours to them.

The field's negation models (NegCLIP's `negclip.pth`, ConCLIP, CoN-CLIP, NegationCLIP, the
official SemCLIP code's checkpoints) are PyTorch state dicts in the layout OpenAI's `clip` package
defined and open_clip kept (`visual.conv1.weight`, `transformer.resblocks.0.attn.in_proj_weight`,
...), often wrapped by a training loop. This module reads them:

- files: `.safetensors` (open_clip's hub format), or `.pt` / `.pth` / `.bin` / `.ckpt` read with
  `torch.load(weights_only=True)` only: never an arbitrary unpickle. A TorchScript archive (OpenAI's
  original JIT downloads) is refused, with the open_clip command that converts it.
- wrappers: `{"state_dict": ...}` / `{"model": ...}` dicts, and any key prefix in front of the CLIP
  (`module.` from DDP, `model.` from Lightning, `_orig_mod.` from torch.compile). Tensors outside
  the CLIP's prefix (a Lightning module's loss, say) are named in a warning and left out.
- the architecture, an open_clip model config: an open_clip model name (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, each
  with a `-quickgelu` twin, the same configs as open_clip's), a path to an open_clip model-config
  JSON, the `open_clip_config.json` beside the weights (open_clip's hub folders), or, with none of
  these, inferred from tensor shapes by OpenAI's own rule (`clip.model.build_model`: 64-wide
  heads, the rest from the shapes) with quick_gelu, the activation of OpenAI's weights and so of every model
  fine-tuned from them. open_clip's plain names mean exact gelu, as in open_clip.

Every tensor is checked (present, expected shape, floating dtype, nothing extra) before any
parameter is placed; an error names the file and the tensor. Text is pooled at the highest token
id (OpenAI's argmax, our `TextConfig.eos_token_id=2` rule). `save_openclip` writes a folder that
`open_clip.create_model_and_transforms("local-dir:<folder>")`, or `(<arch>, pretrained=<folder>/
open_clip_model.safetensors)` for a standard architecture, loads as is.

Files and folders may be local or `gs://` (see `storage`): a bucket's checkpoint is read from a
temporary local copy, and each exported file is uploaded as one object once written.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from semclip_jax import atomic_io, hf, storage, torch_files
from semclip_jax.data.transforms import NORMALIZATIONS
from semclip_jax.models.clip import CLIP, clip_from_arrays
from semclip_jax.models.model_config import CLIPConfig, TextConfig, VisionConfig
from semclip_jax.models.text import LEGACY_EOS_TOKEN_ID
from semclip_jax.sharding import path_str

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "open_clip_model.safetensors"  # the name open_clip looks for first in a folder
CONFIG_FILE = "open_clip_config.json"  # {"model_cfg": ..., "preprocess_cfg": ...}
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
# Dict keys under which training loops nest the state dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# Entries of OpenAI's JIT state dicts and old open_clip buffers that are not parameters.
IGNORED_ENTRIES = ("input_resolution", "context_length", "vocab_size", "attn_mask")
ANCHOR = "visual.conv1.weight"  # present in every ViT CLIP of this layout: locates the prefix
INFERRED = "inferred from the tensor shapes (OpenAI's rule)"
GIVE_ARCH = "give the architecture: an open_clip name ({}) or an open_clip model-config JSON"
HEAD_WIDTH = 64  # OpenAI's and open_clip's default width of one attention head
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which both codebases use
ACTIVATIONS = {True: "quick_gelu", False: "gelu"}  # open_clip's model_cfg["quick_gelu"]


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as a CLIP; the message names the file (and tensor)."""


# ----------------------------------------------------------------------------------------------
# Architectures: open_clip model configs.
# ----------------------------------------------------------------------------------------------
def _vit(embed: int, width: int, layers: int, patch: int, text_width: int, text_heads: int
         ) -> dict[str, Any]:
  return {"embed_dim": embed,
          "vision_cfg": {"image_size": 224, "layers": layers, "width": width, "patch_size": patch},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width,
                       "heads": text_heads, "layers": 12}}


_BASE_ARCHS = {
    "ViT-B-32": _vit(512, 768, 12, 32, 512, 8),
    "ViT-B-16": _vit(512, 768, 12, 16, 512, 8),
    "ViT-L-14": _vit(768, 1024, 24, 14, 768, 12),
}
# open_clip's configs of the same names (open_clip/model_configs/*.json): plain names use exact
# gelu, `-quickgelu` OpenAI's approximation.
ARCHS: dict[str, dict[str, Any]] = {
    **_BASE_ARCHS, **{f"{name}-quickgelu": {**cfg, "quick_gelu": True}
                      for name, cfg in _BASE_ARCHS.items()}}

# open_clip config fields we implement, with open_clip's defaults (CLIPVisionCfg / CLIPTextCfg).
_VISION_FIELDS = {"layers": 12, "width": 768, "head_width": HEAD_WIDTH, "mlp_ratio": 4.0,
                  "patch_size": 16, "image_size": 224}
_TEXT_FIELDS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12,
                "mlp_ratio": 4.0}
# Fields that change nothing at inference, or that we match at their defaults only.
_HARMLESS = {"patch_dropout", "output_tokens", "timm_model_pretrained", "hf_model_pretrained",
             "hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode", "pad_id", "eos_id",
             "attn_pooler_queries", "attn_pooler_heads", "timm_pool", "timm_proj",
             "timm_proj_bias", "timm_drop", "timm_drop_path", "hf_proj_type", "hf_pooler_type"}
_ONLY_DEFAULT = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
                 "pos_embed_type": "learnable", "final_ln_after_pool": False,
                 "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
                 "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                 "scale_attn": False, "scale_fc": False, "timm_model_name": None,
                 "embed_cls": False, "no_causal_mask": False, "proj_bias": False,
                 "proj_type": "linear", "hf_model_name": None, "image_mean": None,
                 "image_std": None, "image_interpolation": None, "image_resize_mode": None}
# `pool_type`: the pooling our towers implement, the one value each part accepts.
_POOL_TYPES = {"vision_cfg": "tok", "text_cfg": "argmax"}


def _check_supported(part: str, cfg: Mapping[str, Any], known: Mapping[str, Any], source: str):
  unsupported = []
  for key, value in cfg.items():
    if key in known or key in _HARMLESS:
      continue
    default = _POOL_TYPES[part] if key == "pool_type" else _ONLY_DEFAULT.get(key, ...)
    if value != default:
      unsupported.append(f"{part}.{key}={value!r}")
  if unsupported:
    raise CheckpointError(f"{source}: open_clip model config uses what semclip_jax's CLIP does "
                          f"not implement: {', '.join(unsupported)} (supported: plain ViT towers "
                          "with class-token and argmax pooling, as OpenAI's CLIP)")


def _heads(width: int, head_width: int, what: str, source: str) -> int:
  if width % head_width:
    raise CheckpointError(f"{source}: {what} width {width} is not a multiple of its head width "
                          f"{head_width}")
  return width // head_width


def _square(value: int | Sequence[int], what: str, source: str) -> int:
  """open_clip allows [height, width]; our towers take square images and patches."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise CheckpointError(f"{source}: {what} {list(value)} is not square; not supported")
    return int(value[0])
  return int(value)


def config_from_model_cfg(model_cfg: Mapping[str, Any], source: str = "model config") -> CLIPConfig:
  """Our `CLIPConfig` of an open_clip model config (`{"embed_dim", "vision_cfg", "text_cfg",
  "quick_gelu"}`); a feature our towers lack raises `CheckpointError`."""
  if not isinstance(model_cfg, Mapping):
    raise CheckpointError(f"{source}: an open_clip model config is a JSON object, not a "
                          f"{type(model_cfg).__name__}")
  for key in ("embed_dim", "vision_cfg", "text_cfg"):
    if key not in model_cfg:
      raise CheckpointError(f"{source}: open_clip model config lacks {key!r}")
  extra = sorted(set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu",
                                   "init_logit_scale", "init_logit_bias", "custom_text",
                                   "cast_dtype"})
  if model_cfg.get("init_logit_bias") is not None:  # SigLIP's learned bias: not our CLIP
    extra.append("init_logit_bias")
  if model_cfg.get("custom_text"):  # CustomTextCLIP: its text tower lives under other names
    extra.append("custom_text")
  if extra:
    raise CheckpointError(f"{source}: unsupported open_clip model config field(s) {extra}")
  v = {**_VISION_FIELDS, **model_cfg["vision_cfg"]}
  t = {**_TEXT_FIELDS, **model_cfg["text_cfg"]}
  _check_supported("vision_cfg", model_cfg["vision_cfg"], _VISION_FIELDS, source)
  _check_supported("text_cfg", model_cfg["text_cfg"], _TEXT_FIELDS, source)
  act = ACTIVATIONS[bool(model_cfg.get("quick_gelu", False))]
  image_size, patch = (_square(v[key], key, source) for key in ("image_size", "patch_size"))
  vision = VisionConfig(hidden_size=v["width"], intermediate_size=int(v["width"] * v["mlp_ratio"]),
                        num_hidden_layers=v["layers"],
                        num_attention_heads=_heads(v["width"], v["head_width"], "vision", source),
                        image_size=image_size, patch_size=patch, hidden_act=act,
                        layer_norm_eps=LAYER_NORM_EPS)
  text = TextConfig(vocab_size=t["vocab_size"], hidden_size=t["width"],
                    intermediate_size=int(t["width"] * t["mlp_ratio"]),
                    num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                    max_position_embeddings=t["context_length"], hidden_act=act,
                    layer_norm_eps=LAYER_NORM_EPS, eos_token_id=LEGACY_EOS_TOKEN_ID, pad_token_id=0)
  logit_scale = model_cfg.get("init_logit_scale")
  top = {} if logit_scale is None else {"logit_scale_init_value": float(logit_scale)}
  return CLIPConfig(text=text, vision=vision, projection_dim=model_cfg["embed_dim"], **top)


def model_cfg_of(config: CLIPConfig) -> dict[str, Any]:
  """The open_clip model config of our `config` (what `save_openclip` writes); raises ValueError
  for what open_clip's CLIP cannot express (other activations or LayerNorm eps)."""
  v, t = config.vision, config.text
  acts = {v.hidden_act, t.hidden_act}
  if len(acts) > 1 or not acts <= set(ACTIVATIONS.values()):
    raise ValueError(f"open_clip builds both towers with one of {sorted(ACTIVATIONS.values())}; "
                     f"this model uses {sorted(acts)}")
  if {v.layer_norm_eps, t.layer_norm_eps} != {LAYER_NORM_EPS}:
    raise ValueError(f"open_clip's LayerNorm eps is {LAYER_NORM_EPS}; this model uses "
                     f"{v.layer_norm_eps} / {t.layer_norm_eps}")
  if v.hidden_size % v.num_attention_heads or t.hidden_size % t.num_attention_heads:
    raise ValueError("hidden sizes must be divisible by the attention heads")
  # Text pooling: open_clip reads the token of the largest id ("argmax"); a current-style config
  # reads the first EOS. The same position for CLIP's tokenizer: EOS (49407) is the largest id
  # and padding is 0.
  return {"embed_dim": config.projection_dim, "quick_gelu": acts == {"quick_gelu"},
          "vision_cfg": {"image_size": v.image_size, "layers": v.num_hidden_layers,
                         "width": v.hidden_size, "head_width": v.hidden_size // v.num_attention_heads,
                         "mlp_ratio": v.intermediate_size / v.hidden_size,
                         "patch_size": v.patch_size},
          "text_cfg": {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size,
                       "width": t.hidden_size, "heads": t.num_attention_heads,
                       "layers": t.num_hidden_layers, "mlp_ratio": t.intermediate_size / t.hidden_size}}


def _layers(names: Sequence[str], prefix: str, source: str) -> int:
  indices = {int(n[len(prefix):].split(".")[0]) for n in names
             if n.startswith(prefix) and n[len(prefix):].split(".")[0].isdigit()}
  if indices != set(range(len(indices))):
    raise CheckpointError(f"{source}: residual blocks {prefix}<i> are not numbered 0..n-1: "
                          f"{sorted(indices)}")
  return len(indices)


def infer_model_cfg(shapes: Mapping[str, tuple[int, ...]], source: str) -> dict[str, Any]:
  """OpenAI's `build_model` rule: widths, layers, patch and sizes from tensor shapes, 64-wide
  heads, quick_gelu. Raises `CheckpointError` naming what is missing or inconsistent."""
  needed = (ANCHOR, "visual.positional_embedding", "text_projection", "token_embedding.weight",
            "positional_embedding", "ln_final.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
            "transformer.resblocks.0.mlp.c_fc.weight")
  missing = [n for n in needed if n not in shapes]
  if missing:
    raise CheckpointError(f"{source}: cannot infer the architecture: no tensor {missing[0]}; "
                          + GIVE_ARCH.format(", ".join(ARCHS)))
  width, _, patch, _ = shapes[ANCHOR]
  grid = math.isqrt(shapes["visual.positional_embedding"][0] - 1)
  text_width = shapes["ln_final.weight"][0]
  for what, w in (("vision", width), ("text", text_width)):
    if w % HEAD_WIDTH:
      raise CheckpointError(f"{source}: cannot infer the architecture: the {what} width {w} is "
                            f"not a multiple of {HEAD_WIDTH}, OpenAI's head width; "
                            + GIVE_ARCH.format(", ".join(ARCHS)))
  names = list(shapes)
  return {"embed_dim": shapes["text_projection"][1], "quick_gelu": True,
          "vision_cfg": {"image_size": grid * patch, "patch_size": patch, "width": width,
                         "layers": _layers(names, "visual.transformer.resblocks.", source),
                         "mlp_ratio": shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0] / width},
          "text_cfg": {"context_length": shapes["positional_embedding"][0],
                       "vocab_size": shapes["token_embedding.weight"][0], "width": text_width,
                       "heads": text_width // HEAD_WIDTH,
                       "layers": _layers(names, "transformer.resblocks.", source),
                       "mlp_ratio": shapes["transformer.resblocks.0.mlp.c_fc.weight"][0] / text_width}}


def _read_json(path: str) -> Any:
  try:
    with storage.open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read the open_clip config: {e}") from e


def resolve_model_cfg(arch: str, weights_path: str, shapes: Mapping[str, tuple[int, ...]]
                      ) -> tuple[dict[str, Any], str]:
  """(open_clip model config, where it came from) for `arch` ("" = the folder's
  open_clip_config.json, else inferred from `shapes`)."""
  if arch in ARCHS:
    return ARCHS[arch], f"open_clip architecture {arch}"
  if arch.endswith(".json"):
    values = _read_json(arch)
    return (values.get("model_cfg", values) if isinstance(values, dict) else values), arch
  if arch:
    raise CheckpointError(f"{weights_path}: unknown architecture {arch!r}; "
                          + GIVE_ARCH.format(", ".join(ARCHS))
                          + ", or none to infer it from the tensor shapes")
  beside = storage.join(storage.dirname(storage.absolute(weights_path)), CONFIG_FILE)
  if storage.isfile(beside):
    values = _read_json(beside)
    if not isinstance(values, dict) or "model_cfg" not in values:
      raise CheckpointError(f"{beside}: has no 'model_cfg' object")
    return values["model_cfg"], beside
  return infer_model_cfg(shapes, weights_path), INFERRED


# ----------------------------------------------------------------------------------------------
# The name map: open_clip tensor -> our parameters.
# ----------------------------------------------------------------------------------------------
class Kind(NamedTuple):
  """How one open_clip tensor is made of our parameters (a tuple of arrays) and back."""
  to_openclip: Callable[[Sequence[np.ndarray]], np.ndarray]
  from_openclip: Callable[[np.ndarray], tuple[np.ndarray, ...]]


COPY = Kind(lambda xs: xs[0], lambda x: (x,))
# torch.nn.Linear's weight is [out, in]; our kernels are [in, out].
LINEAR = Kind(lambda xs: xs[0].T, lambda x: (x.T,))
# Conv2d's weight is OIHW; our patch kernel is HWIO.
CONV = Kind(lambda xs: xs[0].transpose(3, 2, 0, 1), lambda x: (x.transpose(2, 3, 1, 0),))
# nn.MultiheadAttention holds q, k, v as one [3d, d] weight and one [3d] bias, rows q then k then v.
QKV_WEIGHT = Kind(lambda xs: np.concatenate([x.T for x in xs]),
                  lambda x: tuple(part.T for part in np.split(x, 3)))
QKV_BIAS = Kind(np.concatenate, lambda x: tuple(np.split(x, 3)))


def _norm(theirs: str, ours: str) -> list[tuple[str, tuple[str, ...], Kind]]:
  return [(f"{theirs}.weight", (f"{ours}.scale",), COPY), (f"{theirs}.bias", (f"{ours}.bias",), COPY)]


def _dense(theirs: str, ours: str) -> list[tuple[str, tuple[str, ...], Kind]]:
  return [(f"{theirs}.weight", (f"{ours}.kernel",), LINEAR), (f"{theirs}.bias", (f"{ours}.bias",), COPY)]


_TOP_LEVEL: list[tuple[str, tuple[str, ...], Kind]] = [
    ("logit_scale", ("logit_scale",), COPY),
    ("visual.conv1.weight", ("vision.patch_embed.kernel",), CONV),
    ("visual.class_embedding", ("vision.class_embedding",), COPY),
    ("visual.positional_embedding", ("vision.pos_embedding",), COPY),
    *_norm("visual.ln_pre", "vision.pre_ln"),
    *_norm("visual.ln_post", "vision.post_ln"),
    ("visual.proj", ("vision.proj.kernel",), COPY),  # [width, embed]: already our [in, out]
    ("token_embedding.weight", ("text.token_embed.embedding",), COPY),
    ("positional_embedding", ("text.pos_embedding",), COPY),
    *_norm("ln_final", "text.final_ln"),
    ("text_projection", ("text.proj.kernel",), COPY),
]

_PER_BLOCK: list[tuple[str, tuple[str, ...], Kind]] = [
    *_norm("ln_1", "ln1"),
    ("attn.in_proj_weight", ("attn.q.kernel", "attn.k.kernel", "attn.v.kernel"), QKV_WEIGHT),
    ("attn.in_proj_bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias"), QKV_BIAS),
    *_dense("attn.out_proj", "attn.out"),
    *_norm("ln_2", "ln2"),
    *_dense("mlp.c_fc", "mlp.fc1"),
    *_dense("mlp.c_proj", "mlp.fc2"),
]


def name_map(config: CLIPConfig) -> dict[str, tuple[tuple[str, ...], Kind]]:
  """open_clip tensor name -> (our dotted parameter paths it is made of, `Kind`), for `config`."""
  table = {theirs: (ours, kind) for theirs, ours, kind in _TOP_LEVEL}
  for theirs_tower, ours_tower, layers in (
      ("visual.transformer", "vision.encoder", config.vision.num_hidden_layers),
      ("transformer", "text.encoder", config.text.num_hidden_layers)):
    for i in range(layers):
      for theirs, ours, kind in _PER_BLOCK:
        table[f"{theirs_tower}.resblocks.{i}.{theirs}"] = (
            tuple(f"{ours_tower}.blocks.{i}.{p}" for p in ours), kind)
  return table


def openclip_arrays(model: CLIP) -> dict[str, np.ndarray]:
  """Our parameters as open_clip tensors (float32 numpy, C order, in torch's layout)."""
  ours = {path_str(path): np.asarray(v[...], np.float32)
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  # np.array copies (torch.from_numpy shares memory) and keeps the 0-d logit_scale 0-d.
  return {name: np.array(kind.to_openclip([ours[p] for p in paths]), order="C")
          for name, (paths, kind) in name_map(model.config).items()}


def openclip_shapes(config: CLIPConfig) -> dict[str, tuple[int, ...]]:
  """open_clip tensor name -> its shape, for `config` (from our parameters' shapes)."""
  abstract = nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))
  ours = {path_str(p): v.shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
  # np.zeros is lazily zero-filled: the shapes cost no memory traffic, even for ViT-L.
  return {name: kind.to_openclip([np.zeros(ours[p], np.float32) for p in paths]).shape
          for name, (paths, kind) in name_map(config).items()}


# ----------------------------------------------------------------------------------------------
# Reading a file.
# ----------------------------------------------------------------------------------------------
def _is_torchscript(path: str) -> bool:
  # Only the zip's central directory is read (a few ranged reads of a gs:// object).
  try:
    f = storage.open(path, "rb")
  except OSError:  # as zipfile.is_zipfile(path): torch.load then says what is wrong
    return False
  with f:
    if not zipfile.is_zipfile(f):
      return False
    with zipfile.ZipFile(f) as archive:
      return any(name.endswith("/constants.pkl") or "/code/" in name
                 for name in archive.namelist())


def _torch_tensors(path: str) -> Any:
  # torch.load would hand a TorchScript archive to torch.jit.load (or refuse it with a message
  # that does not say what to do): say it first, with the conversion.
  if _is_torchscript(path):
    raise CheckpointError(
        f"{path}: a TorchScript archive (OpenAI's original JIT download), which semclip_jax does "
        "not execute. Convert it once with open_clip: python -c \"import open_clip, torch; "
        "m = open_clip.create_model('ViT-B-32-quickgelu', pretrained='" + path + "'); "
        "torch.save(m.state_dict(), 'converted.pt')\" (use its architecture's name)")
  return torch_files.torch_load(path, CheckpointError)


def _unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state dict inside training-loop wrappers ({"state_dict": ...}, {"model": ...})."""
  for _ in range(4):
    if isinstance(obj, Mapping) and not any(isinstance(k, str) and k.endswith(ANCHOR) for k in obj):
      inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
      if inner is not None:
        obj = inner
        continue
    break
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  return obj


def _strip_prefix(state: Mapping[str, Any], path: str) -> dict[str, Any]:
  """Keys relative to the CLIP: the prefix in front of `visual.conv1.weight` is removed; keys
  without it (a wrapper's other modules) are left out with a warning."""
  anchors = [k for k in state if isinstance(k, str) and k.endswith(ANCHOR)]
  if len(anchors) != 1:
    hf_like = any(isinstance(k, str) and k.startswith(("vision_model.", "text_model.")) for k in state)
    hint = (" It looks like a Hugging Face CLIPModel state dict: load its folder (config.json + "
            "model.safetensors) instead." if hf_like else "")
    found = "several" if anchors else "no"
    raise CheckpointError(f"{path}: {found} tensor named like '{ANCHOR}': not a single ViT CLIP "
                          f"in the OpenAI / open_clip layout.{hint}")
  prefix = anchors[0][:-len(ANCHOR)]
  inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  outside = sorted(k for k in state if not k.startswith(prefix))
  if outside:
    logger.warning("%s: left out %d entries outside the CLIP (prefix %r): %s%s", path,
                   len(outside), prefix, ", ".join(outside[:5]), " ..." if len(outside) > 5 else "")
  return inside


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The CLIP tensors of a checkpoint file, unwrapped, as numpy arrays (float dtypes as stored,
  bfloat16 as float32), keyed by open_clip names."""
  if not storage.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  if path.endswith(".safetensors"):
    try:  # safetensors opens local files only: a gs:// file is read from a temporary copy
      with storage.local_copy(path) as local, safetensors.safe_open(local, framework="numpy") as f:
        raw = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # pylint: disable=broad-except  # header or dtype errors
      raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
  elif path.endswith(TORCH_SUFFIXES):
    raw = _unwrap(_torch_tensors(path), path)
  else:
    raise CheckpointError(f"{path}: unknown checkpoint format; expected one of {SUFFIXES}")
  state = _strip_prefix(raw, path)
  arrays = {}
  for name, value in state.items():
    if name in IGNORED_ENTRIES:
      continue
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().cpu()
      value = (value.float() if value.is_floating_point() else value).numpy()
    if not isinstance(value, np.ndarray):
      raise CheckpointError(f"{path}: entry {name} is a {type(value).__name__}, not a tensor")
    arrays[name] = value
  return arrays


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------
def load_openclip(path: str, arch: str = "", *, dtype=jnp.float32) -> CLIP:
  """Our `CLIP` from an open_clip / OpenAI-layout checkpoint file (or an open_clip folder holding
  open_clip_config.json and weights). `arch`: an `ARCHS` name, an open_clip model-config JSON, or
  "" (the folder's open_clip_config.json, else inferred from shapes). Raises before placing any
  parameter when a tensor is missing, extra, mis-shaped, not floating point or not finite."""
  storage.check(path, "open_clip checkpoint")
  if storage.isdir(path):
    path = weights_in_folder(path)
  arrays = read_state_dict(path)
  model_cfg, origin = resolve_model_cfg(arch, path, {k: v.shape for k, v in arrays.items()})
  config = config_from_model_cfg(model_cfg, origin)
  table = name_map(config)
  missing = [name for name in table if name not in arrays]
  unexpected = sorted(set(arrays) - set(table))
  if missing or unexpected:
    parts = ([f"missing {len(missing)} tensor(s): {', '.join(missing[:6])}"] if missing else []) + (
        [f"{len(unexpected)} unexpected tensor(s): {', '.join(unexpected[:6])}"] if unexpected else [])
    raise CheckpointError(f"{path}: does not fit the architecture ({origin}): {'; '.join(parts)}")
  expected_shapes = openclip_shapes(config)
  ours: dict[str, np.ndarray] = {}
  for name, (paths, kind) in table.items():
    value = arrays[name]
    if not np.issubdtype(value.dtype, np.floating):
      raise CheckpointError(f"{path}: tensor {name} has non-float dtype {value.dtype}")
    hf.check_finite(value, f"{path}: tensor {name}", CheckpointError)
    if name == "logit_scale" and value.size == 1:
      value = value.reshape(())  # some savers keep it as shape [1]
    expected = expected_shapes[name]
    if value.shape != expected:
      raise CheckpointError(f"{path}: tensor {name} has shape {tuple(value.shape)}, but the "
                            f"architecture ({origin}) needs {tuple(expected)}")
    for p, part in zip(paths, kind.from_openclip(value)):
      ours[p] = part
  if origin == INFERRED:  # the one guess: the shapes cannot tell gelu from quick_gelu
    logger.warning("%s: architecture %s: quick_gelu, as OpenAI's weights and the models fine-tuned "
                   "from them; for weights trained with exact gelu (LAION's), give the "
                   "architecture (e.g. ViT-B-32)", path, origin)
  else:
    logger.info("%s: open_clip-layout CLIP, architecture %s", path, origin)
  return clip_from_arrays(config, ours, dtype=dtype)


def weights_in_folder(folder: str) -> str:
  """The weights file of an open_clip folder, in open_clip's order of preference."""
  for name in (WEIGHTS_FILE, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
               "open_clip_pytorch_model.pth"):
    if storage.isfile(storage.join(folder, name)):
      return storage.join(folder, name)
  raise FileNotFoundError(f"{folder}: no open_clip weights ({WEIGHTS_FILE} or "
                          "open_clip_pytorch_model.bin)")


# Our eval resize (config.data.resize) -> open_clip's preprocess_cfg (resize_mode, interpolation).
RESIZE_MODES = {"shortest_side_crop": ("shortest", "bicubic"), "squash": ("squash", "bilinear")}


def save_openclip(model: CLIP, out_dir: str, *, normalization: str = "clip",
                  resize: str = "shortest_side_crop") -> str:
  """Writes `out_dir/open_clip_model.safetensors` and `open_clip_config.json` (model config, and
  the preprocessing of `normalization` / `resize`, our data config's names) so that open_clip
  loads our model as is; returns `out_dir` (local or gs://: each file is uploaded whole)."""
  mean, std = NORMALIZATIONS[normalization]
  resize_mode, interpolation = RESIZE_MODES[resize]
  config = {"model_cfg": model_cfg_of(model.config),
            "preprocess_cfg": {"mean": list(mean), "std": list(std), "interpolation": interpolation,
                               "resize_mode": resize_mode}}
  storage.check(out_dir, "open_clip export folder")
  storage.makedirs(out_dir)
  with atomic_io.replacing(storage.join(out_dir, WEIGHTS_FILE)) as tmp:
    safetensors.numpy.save_file(openclip_arrays(model), tmp, metadata={"format": "pt"})
  atomic_io.write_json(storage.join(out_dir, CONFIG_FILE), config, indent=2, sort_keys=True)
  return out_dir
