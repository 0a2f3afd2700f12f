"""The trainer's config: every field with its default, the paper's recipe, and config arguments.

Config files (`configs/*.py`) build on `base_config()` and end with `apply_argument(c, arg)`, so
`--config=configs/<name>.py:runlocal` (and `:paper_compat`, or both: `:paper_compat,runlocal`)
means the same everywhere. This module imports only the
default configs of the parts it describes (loss, optimizer, data), never the trainer, the
evaluators, checkpointing or Hugging Face code: reading a config stays cheap.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
from typing import Any, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from semclip_jax import data as data_lib
from semclip_jax import objective, optim, storage

# The config files shipped with the package (the repository's configs/ folder, installed as this
# package), found by name: `--config=shapes` works from any folder after `pip install`.
PACKAGED_CONFIGS = "semclip_jax.configs"
# A source checkout imported through sys.path without an install (a notebook kernel started
# before `pip install -e`) has the configs beside the package only.
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "configs")
# The run's own config, saved beside its checkpoints (train.py writes it at the start).
RUN_CONFIG_FILE = "config.json"
# What may follow `:` in --config=configs/<name>.py:<argument>, comma-separated, applied in order.
ARGUMENTS = ("paper_compat", "runlocal")
# The paper freezes the image tower: every parameter under model.vision.
FREEZE_IMAGE_TOWER = (r"^model\.vision\.",)
# What a resumed run may change without `resume_changes`: how it logs, saves, evaluates, exports
# and lays its arrays out over devices, none of which changes the parameters it trains (field
# names, or prefixes ending in "."). Every other field decides the model, the loss, the optimizer
# or the batches.
RESUME_FREE_FIELDS = ("log_every_steps", "max_consecutive_skips", "progress_bar", "export_hf",
                      "resume_changes", "hub.", "checkpoint.", "evals.", "mesh.",
                      "data.eval_split", "data.test_split", "data.eval_path", "data.test_path",
                      "data.shapes_eval_size", "data.shard_cache_dir",
                      "data.cache_image_embeddings", "data.image_embedding_cache_dir")


class ConfigError(ValueError):
  """A config a run cannot use (a bad value, or a resume that would change the run): its message
  names the fields and is the one line the command line prints."""


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model initialisation seed
  c.total_steps = 1000  # optimizer updates
  c.log_every_steps = 10  # metrics to JSONL / TensorBoard / progress bar
  c.max_consecutive_skips = 10  # non-finite steps in a row before training stops
  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # tiny | B/32 | B/16 | L/14 (ignored when init_from is set)
  # A pretrained CLIP to start from: a Hugging Face folder or hub id, or an open_clip / OpenAI-
  # layout checkpoint (.safetensors/.pt/.pth/.bin/.ckpt, or an open_clip folder).
  c.model.init_from = ""
  # For an open_clip / OpenAI-layout init_from: its architecture, an open_clip name (ViT-B-32,
  # ViT-B-32-quickgelu, ViT-B-16, ViT-L-14, ...) or model-config JSON; "" = the folder's
  # open_clip_config.json, else inferred from the tensor shapes (OpenAI's rule, quick_gelu).
  c.model.init_arch = ""
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.remat = "none"  # backward recomputation per block: none | full | dots (layers.py)
  c.loss = objective.default_config()
  c.optim = optim.default_config()
  c.data = data_lib.default_config()
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (−1: all that fsdp leaves)
  c.mesh.fsdp = 1  # devices parameters are split over
  c.mesh.rules = ()  # (regex, spec) partition rules before the FSDP default
  c.mesh.num_devices = -1  # use the first N devices only (−1: all)
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500  # also saved at the end and on SIGTERM
  c.checkpoint.keep = 3  # most recent checkpoints kept
  c.checkpoint.keep_best = 0  # best checkpoints kept by best_metric
  # A validation metric, "val/<eval>/<metric>" (e.g. "val/ccneg/accuracy"); the test split never
  # selects (train.validate_config refuses it).
  c.checkpoint.best_metric = ""
  c.checkpoint.best_mode = "max"
  c.checkpoint.async_save = True
  # name -> {type, every_steps, data: overrides, ks, split}. Each evaluator scores the validation
  # split (data.eval_split) every `every_steps` and at the end, and the test split (data.test_split)
  # once at the end; results are "val/<name>/<metric>" and "test/<name>/<metric>". One with its
  # own `split` (e.g. "all": a cross-benchmark) or of type zeroshot reads data of its own: it is
  # test data, scored once at the end, and skipped with one line while its data is not set.
  c.evals = ml_collections.ConfigDict()
  c.export_hf = True  # write workdir/hf (with its model card) at the end
  c.hub = ml_collections.ConfigDict()
  c.hub.license = "other"  # the model card's license field (the base model's terms may apply)
  c.hub.private = True  # a repo that --push_to_hub creates is private
  c.progress_bar = True
  # Fields a resumed run may change beyond RESUME_FREE_FIELDS, comma-separated (e.g.
  # "optim.learning_rate,total_steps"): a deliberate change of the run; "" refuses any other.
  c.resume_changes = ""
  return c


def paper_finetuning(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The SemCLIP paper's fine-tuning recipe (DESIGN.md section 1), shared by its two settings:
  ViT-B/32 from LAION-2B weights, image tower frozen, AdamW lr 5e-5, weight decay 0.2, betas
  (0.9, 0.999), 50 warmup steps then cosine to 0, clipping at 1.0, 2 × 256 batch, bf16."""
  c.model.update(init_from="laion/CLIP-ViT-B-32-laion2B-s34B-b79K", dtype="bfloat16")
  c.loss.name = "semclip"
  c.optim.update(learning_rate=5e-5, weight_decay=0.2, b1=0.9, b2=0.999, warmup_steps=50,
                 schedule="cosine", grad_clip_norm=1.0, freeze=FREEZE_IMAGE_TOWER,
                 grad_accum_steps=2)
  c.data.update(batch_size=512, kind="csv", worker_count=8)
  return c


def paper_compat(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `paper_compat` config argument: the official code's whole recipe (aaai26-paper12649/
  SemCLIP), for like-for-like comparison with the paper's numbers. Each part is a field of its
  own, so any one can be switched back (e.g. `--config.data.split_by=image`):
  its contrastive term and temperature (`loss.paper_compat`), weight decay on every trainable
  tensor (`optim.decay_all`), 224×224 squash + ImageNet mean/std for training and evaluation
  (`data.resize`, `data.normalization`) from fully decoded images (`data.jpeg_draft` off), the seed-42 random row split, for CC-Neg too
  (`data.split_by`, `data.split_seed`, `data.ccneg_official`; it leaks images between splits),
  and the official metrics (`evals.official`: per-row top-1/3/5 and the combined score;
  retrieval at k = 1, 3, 5). DESIGN.md decision 14 lists what it cannot reproduce."""
  c.loss.paper_compat = True
  c.optim.decay_all = True
  c.data.update(resize="squash", normalization="imagenet", split_by="rows", split_seed=42,
                ccneg_official=False, jpeg_draft=False)
  if c.data.kind != "shapes":  # the official metrics need triples of the run's own data
    c.evals.official = dict(type="official", every_steps=_first_every_steps(c), ks=(1, 3, 5))
  for eval_config in c.evals.values():
    if eval_config.type == "retrieval":
      eval_config.ks = (1, 3, 5)
  return c


def _first_every_steps(c: ml_collections.ConfigDict) -> int:
  return next((e.get("every_steps", 0) for e in c.evals.values() if e.get("every_steps")), 0)


def zeroshot_with_negated_prompts() -> dict:
  """The paper's zero-shot robustness test (CIFAR-10/100, Flowers-102, Food-101, Oxford-IIIT Pets
  with "this is a photo of a {}" and "this is not a photo of a {}"): skipped with one line until
  `--config.evals.zeroshot.data_dir` names the TFDS folder holding them."""
  return dict(type="zeroshot", data_dir="")


def sugarcrepe_pp_cross_benchmark() -> dict:
  """All 4,757 SugarCrepe++ items (the CSV ships with the package) as test data for a model
  trained on other data: skipped with one line until
  `--config.evals.sugarcrepe_pp.data.image_dir` names the COCO val2017 images."""
  return dict(type="sugarcrepe_pp", split="all",
              data=dict(kind="csv", path=data_lib.sources.SUGARCREPE_PP_CSV, image_dir="",
                        layout="sugarcrepe_pp"))


def shrink_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `runlocal` config argument: the same run, tiny and short, for a CPU smoke test."""
  c.total_steps, c.log_every_steps = 12, 4
  c.model.update(preset="tiny", init_from="", dtype="float32")
  c.optim.update(grad_accum_steps=1, warmup_steps=2, freeze=())
  c.data.update(batch_size=16, image_size=32, worker_count=0, shapes_eval_size=64)
  c.checkpoint.update(every_steps=8, keep_best=0, best_metric="")
  c.mesh.update(data=-1, fsdp=1)
  for eval_config in c.evals.values():
    eval_config.every_steps = 0
  return c


def apply_argument(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies a config file's argument (`None`, or `ARGUMENTS` joined by commas) to `c`, in
  order, and returns it."""
  apply = {"paper_compat": paper_compat, "runlocal": shrink_for_cpu}
  for name in (arg or "").split(","):
    if name not in apply and name:
      raise ValueError(f"unknown config argument {name!r}; use one or more of {list(ARGUMENTS)} "
                       "(comma-separated) or nothing")
    if name:
      c = apply[name](c)
  return c


# ----------------------------------------------------------------------------------------------
# Finding and loading configs: by file, by packaged name, from a run's folder.
# ----------------------------------------------------------------------------------------------
def packaged_config_names() -> list[str]:
  """The names `config_file` resolves without a path ("shapes", "ccneg", ...)."""
  try:
    names = [entry.name for entry in importlib.resources.files(PACKAGED_CONFIGS).iterdir()]
  except ModuleNotFoundError:  # a checkout on sys.path, not installed
    names = os.listdir(_CHECKOUT_CONFIGS) if os.path.isdir(_CHECKOUT_CONFIGS) else []
  return sorted(name[:-3] for name in names if name.endswith(".py") and not name.startswith("_"))


def config_file(path_or_name: str) -> str:
  """The config file `path_or_name` names: an existing file as given; else a packaged config named
  `name`, `name.py` or `configs/name.py` (so the README's `configs/shapes.py` also works outside
  a clone)."""
  if os.path.isfile(path_or_name):
    return path_or_name
  folder, base = os.path.split(os.path.normpath(path_or_name))
  name = base[:-3] if base.endswith(".py") else base
  if folder in ("", "configs") and name.isidentifier():
    try:
      spec = importlib.util.find_spec(f"{PACKAGED_CONFIGS}.{name}")
    except ModuleNotFoundError:
      spec = None
    if spec is not None and spec.origin and os.path.isfile(spec.origin):
      return spec.origin
    checkout = os.path.join(_CHECKOUT_CONFIGS, f"{name}.py")
    if os.path.isfile(checkout):
      return checkout
  raise FileNotFoundError(f"config {path_or_name!r}: no such file, and no packaged config of that "
                          f"name (packaged: {', '.join(packaged_config_names()) or 'none'})")


def load_config(path_or_name: str, overrides: Mapping[str, Any] | Sequence[str] | None = None
                ) -> ml_collections.ConfigDict:
  """The config `--config=<path_or_name>` gives, with `overrides` applied: the one function for
  notebooks and scripts.

  `path_or_name` is a config file or a packaged config's name, optionally with its argument after
  a colon: "shapes", "shapes:runlocal", "configs/ccneg.py:paper_compat", "/path/to/my.py"; or
  "workdir:<run folder>", the config a run saved (`run_config`). `overrides` are
  {"loss.name": "clip", "data.batch_size": 32} (values of the fields' types) or command-line
  strings ["--config.loss.name=clip", "data.batch_size=32"], parsed as `main` parses them.
  """
  path, _, argument = path_or_name.partition(":")
  module_path = config_file(path)
  spec = importlib.util.spec_from_file_location(
      f"_semclip_config_{abs(hash(module_path))}", module_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument) if argument else module.get_config()
  return apply_overrides(config, overrides or {})


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any] | Sequence[str]) -> ml_collections.ConfigDict:
  """`config` with `overrides` set (in place, and returned); see `load_config`. An unknown field or
  a value of the wrong type is a ValueError naming it."""
  if isinstance(overrides, Mapping):
    for field, value in overrides.items():
      *parents, name = field.split(".")
      node = config
      try:
        for parent in parents:
          node = node[parent]
        if name not in node:
          raise KeyError(name)
        node[name] = value
      except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"config override {field}={value!r}: {_reason(e)}") from None
    return config
  argv = ["config"] + ["--config." + o.removeprefix("--").removeprefix("config.") for o in overrides]
  flag_values = flags.FlagValues()
  try:  # the override flags are defined (and unknown fields found) while the config flag is
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values,
                                    lock_config=False, sys_argv=argv)
    flag_values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError) as e:
    raise ValueError(f"config override: {_reason(e)}") from None
  return config


def _reason(error: Exception) -> str:
  if isinstance(error, (KeyError, AttributeError)):
    return f"the config has no field {str(error).strip(chr(34) + chr(39))!r}"
  return str(error)


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json`, over `base_config()`'s defaults (fields
  added since the run was made take their defaults; JSON lists become tuples where the field is
  one)."""
  path = storage.join(workdir, RUN_CONFIG_FILE)
  try:
    saved = json.loads(storage.read_text(path))
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: not found; {workdir} is not a training run's folder") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(saved, dict):
    raise ValueError(f"{path}: holds {type(saved).__name__}, not a config object")
  return _merge(base_config(), saved)


def _merge(base: ml_collections.ConfigDict, saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  for key, value in saved.items():
    default = base.get(key) if key in base else None
    if isinstance(default, ml_collections.ConfigDict) and isinstance(value, dict):
      _merge(default, value)
    elif key in base and isinstance(default, tuple) and isinstance(value, list):
      base[key] = _tuples(value)
    elif key in base and default is not None:
      base[key] = value
    else:  # a field of the run's own (an evaluator) or None by default: taken as saved
      with base.ignore_type():
        base[key] = _tuples(value)
  return base


def _tuples(value: Any) -> Any:
  """JSON's lists as the tuples config files use, inside dicts too."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def flat_fields(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = ""
                ) -> dict[str, Any]:
  """{dotted field: value} of every leaf field (lists as tuples: config.json stores tuples as
  lists)."""
  items = config.items() if isinstance(config, Mapping) else config.to_dict().items()
  fields = {}
  for key, value in items:
    if isinstance(value, (ml_collections.ConfigDict, Mapping)) and value:
      fields.update(flat_fields(value, f"{prefix}{key}."))
    else:
      fields[prefix + key] = _tuples(value)
  return fields


def changed_fields(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                   ) -> dict[str, str]:
  """{dotted field: "field: run X, here Y"} for each field whose value `config` changes from a
  run's saved config, in field order."""
  before, after = flat_fields(saved), flat_fields(config)
  return {field: f"{field}: run {before.get(field)!r}, here {after.get(field)!r}"
          for field in sorted(set(before) | set(after)) if before.get(field) != after.get(field)}


def resume_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                   ) -> list[str]:
  """The fields `config` changes from a run's saved config that resuming must refuse: neither in
  RESUME_FREE_FIELDS nor named by `config.resume_changes`; each as "field: run X, here Y"."""
  allowed = RESUME_FREE_FIELDS + tuple(
      f.strip() for f in config.get("resume_changes", "").split(",") if f.strip())
  return [change for field, change in changed_fields(saved, config).items()
          if not any(field == a or (a.endswith(".") and field.startswith(a)) for a in allowed)]


def describe_fields(config: ml_collections.ConfigDict | None = None) -> str:
  """Every field of `config` (default: `base_config()`) with its value, one per line: the
  `--help` text of the config flag."""
  config = config or base_config()
  lines = []

  def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
    for key in sorted(node.keys()):
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict) and value:
        walk(value, f"{prefix}{key}.")
      else:
        lines.append(f"  --config.{prefix}{key}={value!r}")

  walk(config, "")
  return "\n".join(lines)
