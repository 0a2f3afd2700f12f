"""The Hugging Face model card of an export, and pushing the export folder to the Hub.

- `write_model_card(folder, config, results)`: `folder/README.md` (written atomically), YAML
  metadata the Hub indexes (library, pipeline, base model, license, datasets, tags) and a body
  that says what was trained, on what, how, and what it scored, under which protocol;
- `card_metadata(config)` and `model_card_text(config, results)`: the same, as values;
- `push_to_hub(folder, repo_id)`: creates the repo (private by default) and uploads the folder in
  one commit; a folder that is not a Hugging Face CLIP export is refused before any network call,
  and a failure of the Hub comes out as one `PushToHubError` naming the repo and the endpoint.

The export folder may be local or `gs://` (see `storage`): the card is uploaded as one object, and
a bucket's export is downloaded to a temporary folder that is then pushed.

`config` is the run's config as a plain dict (`workdir/config.json`, or `ConfigDict.to_dict()`);
`results` is `workdir/results.json`: "step" and metrics keyed "val/<eval>/<metric>" (validation
rounds) and "test/<eval>/<metric>" (the test round, scored once at the end). This module reads
no model and imports neither jax nor the trainer, except the loss table when a SemCLIP weight is
left at its variant's default (`losses` holds the one copy of it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Mapping

from semclip_jax import atomic_io, storage

# `license` is the Hub's metadata key, and the keyword of the card functions.
# pylint: disable=redefined-builtin

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# What save_hf_clip writes and transformers needs to load the model (hf.CONFIG_FILE and
# hf.WEIGHTS_FILE; not imported from hf, which imports jax and flax).
REQUIRED_FILES = ("config.json", "model.safetensors")
DEFAULT_COMMIT_MESSAGE = "Upload a semclip_jax export (CLIPModel)"
PAPER = "arXiv 2511.16527"
PAPER_URL = "https://arxiv.org/abs/2511.16527"
PAPER_TITLE = "Contrastive vision-language learning with paraphrasing and negation"
TAGS = ("clip", "semclip", "semclip_jax", "negation", "paraphrase")
# Checkpoint files that init_from names by path (openclip.SUFFIXES): never hub ids.
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Hub datasets of the known CSV layouts. CC-Neg is released through GitHub (CoN-CLIP) and has no
# Hub id we could confirm, so it has no entry: the card describes it in the text instead.
LAYOUT_DATASETS = {"sugarcrepe_pp": "Aman-J/SugarCrepe_pp"}
_SUGARCREPE_PP_CSV = "sugarcrepe_pp_paraphrased.csv"  # the vendored CSV (data.sources)

LOSS_DESCRIPTIONS = {
    "clip": "CLIP's image-text contrastive loss alone (the baseline)",
    "paraphrase_only": "CLIP's contrastive loss plus SemCLIP's paraphrase term",
    "negation_only": "CLIP's contrastive loss plus SemCLIP's negation term",
    "semclip": ("SemCLIP: CLIP's contrastive loss plus a paraphrase term (original and paraphrase "
                "pulled together) and a negation term (original and negation pushed to at least "
                "orthogonal), both in a small projected subspace of the text embedding"),
    "semclip_image_margin": ("SemCLIP plus an image-side hinge that keeps cos(image, original) "
                             "above cos(image, negation) by a margin (semclip_jax's extension, "
                             "not in the paper)"),
    "negclip": "NegCLIP: the negations are extra hard negatives in the image-to-text softmax",
    "siglip": "SigLIP's pairwise sigmoid loss",
}
_SEMCLIP_FAMILY = ("clip", "paraphrase_only", "negation_only", "semclip", "semclip_image_margin")
# (config field, what it weighs) of the loss section, in the order shown.
_WEIGHTS = (("alpha", "α, contrastive term"), ("beta", "β, paraphrase term"),
            ("gamma", "γ, negation term"))
_SPLIT_NAMES = {"test": "test (held out)", "val": "validation"}


class PushToHubError(RuntimeError):
  """Creating the repo or uploading the folder failed; the message names repo, endpoint and why."""


# ----------------------------------------------------------------------------------------------
# Reading the config.
# ----------------------------------------------------------------------------------------------
def _as_dict(value: Any) -> dict[str, Any]:
  """A config section as a plain dict: a Mapping, a ConfigDict (`to_dict`), or {} when absent."""
  if value is None:
    return {}
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return dict(value) if isinstance(value, Mapping) else {}


def _section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
  return _as_dict(_as_dict(config).get(name))


# What `hub_model_id` reads as a hub id, for the errors that refuse a missing path.
HUB_ID_RULE = ("read as a path, not a hub id: hub ids are 'org/name', not starting with '.', '/' "
               "or '~', and their 'org' is no local folder")


def hub_model_id(init_from: str | None) -> str | None:
  """`init_from` when it names a model on the Hub, else None (empty, or a local file or folder).

  The one rule of what is a hub id (`hf.resolve_folder` loads by it): a string is a local path
  when it exists, starts with '.', '/' or '~', has other than one '/', names a checkpoint file
  (.pt, .safetensors, ...: open_clip and OpenAI-layout checkpoints are read by path only) or has
  a first part that is a local folder (`runs/model` beside `runs/`: a mistyped path, which must
  not become a hub lookup); otherwise "namespace/name", valid as a repo id, is a hub id.
  """
  if not init_from or os.path.exists(init_from) or init_from.count("/") != 1:
    return None
  if init_from.startswith((".", "/", "~")) or os.path.isdir(init_from.split("/")[0]):
    return None
  if init_from.lower().endswith(_CHECKPOINT_SUFFIXES):
    return None
  # The Hub's repo-id rule (huggingface_hub.utils.validate_repo_id), without importing the client.
  if not re.fullmatch(r"[\w.-]{1,96}/[\w.-]{1,96}", init_from, re.ASCII):
    return None
  if ".." in init_from or "--" in init_from:
    return None
  namespace, name = init_from.split("/")
  if any(part[0] in ".-" or part[-1] in ".-" for part in (namespace, name)):
    return None
  return init_from


def _data_layout(data: Mapping[str, Any]) -> str | None:
  """The CSV layout of the training data: `data.layout`, or the vendored SugarCrepe++ CSV's."""
  if data.get("layout"):
    return data["layout"]
  if os.path.basename(str(data.get("path") or "")) == _SUGARCREPE_PP_CSV:
    return "sugarcrepe_pp"
  return None


def hub_datasets(config: Mapping[str, Any]) -> list[str]:
  """Hub dataset ids of the training data, where the data is a known Hub dataset (else [])."""
  data = _section(config, "data")
  if data.get("kind") == "csv" and _data_layout(data) in LAYOUT_DATASETS:
    return [LAYOUT_DATASETS[_data_layout(data)]]
  return []


def card_metadata(config: Mapping[str, Any], *, license: str = "other") -> dict[str, Any]:
  """The YAML metadata of the card, as a dict (keys absent where they do not apply)."""
  metadata: dict[str, Any] = {"library_name": "transformers",
                              "pipeline_tag": "zero-shot-image-classification"}
  base_model = hub_model_id(_section(config, "model").get("init_from"))
  if base_model:
    metadata["base_model"] = base_model
  metadata["license"] = license
  datasets = hub_datasets(config)
  if datasets:
    metadata["datasets"] = datasets
  metadata["tags"] = list(TAGS)
  return metadata


# ----------------------------------------------------------------------------------------------
# The card's body.
# ----------------------------------------------------------------------------------------------
def _number(value: Any) -> str:
  """A config number as written in a card: integers as is, floats in their shortest form."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  return str(value) if isinstance(value, int) else f"{value:g}"


def _metric(value: Any) -> str:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return f"{value:.4f}" if math.isfinite(value) else str(value)
  return str(value)


def _architecture(hf_config: Mapping[str, Any] | None) -> str | None:
  """One line on the towers, from the export's config.json (transformers' CLIPConfig)."""
  if not hf_config:
    return None
  vision, text = _as_dict(hf_config.get("vision_config")), _as_dict(hf_config.get("text_config"))
  parts = []
  if vision:
    size, patch = vision.get("image_size"), vision.get("patch_size")
    shape = f"ViT image tower ({size}×{size} px images, {patch}×{patch} px patches"
    parts.append(shape + f", {vision.get('num_hidden_layers')} layers of width "
                 f"{vision.get('hidden_size')})")
  if text:
    parts.append(f"causal text tower ({text.get('num_hidden_layers')} layers of width "
                 f"{text.get('hidden_size')}, context {text.get('max_position_embeddings')})")
  if hf_config.get("projection_dim"):
    parts.append(f"{hf_config['projection_dim']}-dimensional joint embedding")
  return "; ".join(parts) or None


def _starting_point(model: Mapping[str, Any], config: Mapping[str, Any]) -> str:
  init_from = model.get("init_from") or ""
  hub_id = hub_model_id(init_from)
  if hub_id:
    return f"fine-tuned from [{hub_id}](https://huggingface.co/{hub_id})"
  if init_from:
    arch = f" (open_clip architecture `{model['init_arch']}`)" if model.get("init_arch") else ""
    where = "a checkpoint in a bucket" if storage.is_remote(init_from) else "a local checkpoint"
    return (f"fine-tuned from {where}, `{init_from}`{arch}: not a Hub model, so the "
            "card names no base_model")
  preset = f" `{model['preset']}` preset" if model.get("preset") else ""
  seed = f", initialisation seed {config['seed']}" if "seed" in config else ""
  return f"trained from scratch (random initialisation of the{preset} architecture{seed})"


def _loss_lines(loss: Mapping[str, Any]) -> list[str]:
  """The loss and the fields of the config's loss section that it reads (those present only)."""
  name = loss.get("name")
  if not name:
    return ["- Loss: not recorded in the config"]
  lines = [f"- Loss: `{name}` — {LOSS_DESCRIPTIONS.get(name, 'a semclip_jax loss')}"]
  if name in _SEMCLIP_FAMILY:
    defaults: dict[str, Any] = {}
    if any(k in loss and loss[k] is None for k, _ in _WEIGHTS):  # unset: the variant's weight
      from semclip_jax import losses  # pylint: disable=import-outside-toplevel

      defaults = losses.configured_weights(loss)
    for key, what in _WEIGHTS:
      if key not in loss:
        continue
      if loss[key] is None:
        lines.append(f"  - `loss.{key}` ({what}) = {_number(defaults[key])} (the `{name}` default)")
      else:
        lines.append(f"  - `loss.{key}` ({what}) = {_number(loss[key])}")
    if name == "semclip_image_margin":
      for key, what in (("image_margin_weight", "δ, image margin term"),
                        ("image_margin", "m, the margin")):
        if key in loss:
          lines.append(f"  - `loss.{key}` ({what}) = {_number(loss[key])}")
    if name != "clip":
      if "num_projection_vectors" in loss:
        kind = ""
        if "learnable_projection" in loss:
          kind = (", learned" if loss["learnable_projection"]
                  else ", a fixed random orthonormal basis")
        lines.append(f"  - `loss.num_projection_vectors` (K, dimensions of the projected "
                     f"subspace) = {loss['num_projection_vectors']}{kind}")
    if loss.get("paper_compat"):
      temperature = (f", initial temperature {_number(loss['paper_temperature'])}"
                     if "paper_temperature" in loss else "")
      lines.append("  - `loss.paper_compat` = true: the official code's contrastive term (raw "
                   f"embeddings, its own unclamped temperature{temperature})")
  elif name == "siglip":
    for key, what in (("siglip_init_logit_scale", "initial log scale"),
                      ("siglip_init_logit_bias", "initial bias")):
      if key in loss:
        lines.append(f"  - `loss.{key}` ({what}) = {_number(loss[key])}")
  return lines


def _split_text(data: Mapping[str, Any]) -> str:
  """How a CSV was cut into train/validation/test."""
  if data.get("split_column"):
    return f"splits from the file's `{data['split_column']}` column"
  if data.get("ccneg_official") and _data_layout(data) == "ccneg":
    fraction = data.get("ccneg_val_fraction")
    val = f"; validation: {fraction:.0%} of the other images, by image" if fraction else ""
    return "CC-Neg's official split (test: the release's last 40,000 items" + val + ")"
  ratios = data.get("ratios")
  shares = f" {'/'.join(_number(r) for r in ratios)} (train/val/test)" if ratios else ""
  seed = f", seed {data['split_seed']}" if "split_seed" in data else ""
  if data.get("split_by") == "rows":
    return (f"a random split of the rows{shares}{seed}, as in the official SemCLIP code; it "
            "puts captions of one image in more than one split, so the test images are not all "
            "unseen")
  return f"split by image{shares}{seed}: no image is in two splits"


def _data_lines(data: Mapping[str, Any]) -> list[str]:
  kind = data.get("kind")
  if kind == "shapes":
    return ["- Data: semclip_jax's built-in procedural *shapes* dataset (1-3 coloured shapes on "
            "grey, with generated original, paraphrase and negation captions; the validation and "
            "test scenes show colour-shape pairs never seen in training). A toy dataset for "
            "checking the pipeline, not natural images."]
  if kind == "csv":
    layout = _data_layout(data)
    if layout == "ccneg":
      what = ("CC-Neg (Singh et al., WACV 2025; https://github.com/jaisidhsingh/CoN-CLIP): images "
              "with their captions and negated captions, plus paraphrases, in the SemCLIP paper's "
              "CSV layout")
    elif layout == "sugarcrepe_pp":
      what = ("SugarCrepe++ (Dumpala et al., 2024) over COCO val2017 images, in the SemCLIP "
              "paper's CSV layout: the caption, the second positive caption as the paraphrase, "
              "and the hard negative as the negation")
    else:
      name = os.path.basename(str(data.get("path") or "")) or "a CSV/JSONL file"
      what = f"image-caption triples (caption, paraphrase, negation) from `{name}`"
    return [f"- Data: {what}; {_split_text(data)}"]
  if kind == "array_record":
    return ["- Data: image-caption triples (caption, paraphrase, negation) in ArrayRecord shards "
            "(`python -m semclip_jax.data.prepare`), with separate validation and test shards"]
  return [f"- Data: `{kind}`" if kind else "- Data: not recorded in the config"]


def _training_lines(config: Mapping[str, Any]) -> list[str]:
  optim, data = _section(config, "optim"), _section(config, "data")
  model = _section(config, "model")
  lines = _loss_lines(_section(config, "loss")) + _data_lines(data)
  if "total_steps" in config:
    lines.append(f"- Training steps: {config['total_steps']} optimizer updates")
  if "batch_size" in data:
    batch = int(data["batch_size"])
    accum = int(optim.get("grad_accum_steps") or 1)
    line = f"- Batch size: {batch} triples per update"
    if accum > 1:  # the contrastive term's negatives are the micro-batch's, not the batch's
      line += (f" ({accum} accumulated micro-batches of {batch // accum}: each contrastive softmax "
               f"sees {batch // accum} in-batch negatives)")
    lines.append(line)
  if "learning_rate" in optim:
    parts = [f"peak learning rate {_number(optim['learning_rate'])}"]
    if "warmup_steps" in optim:
      schedule = optim.get("schedule")
      then = {"cosine": ", then cosine decay to 0", "constant": ", then constant"}.get(schedule, "")
      parts.append(f"{optim['warmup_steps']} linear warmup steps{then}")
    if "weight_decay" in optim:
      parts.append(f"weight decay {_number(optim['weight_decay'])}")
    if "b1" in optim and "b2" in optim:
      parts.append(f"betas ({_number(optim['b1'])}, {_number(optim['b2'])})")
    if optim.get("grad_clip_norm"):
      parts.append(f"gradient clipping at norm {_number(optim['grad_clip_norm'])}")
    lines.append("- Optimizer: AdamW, " + ", ".join(parts))
  freeze = optim.get("freeze") or ()
  if freeze:
    patterns = ", ".join(f"`{p}`" for p in freeze)
    image = " (the image tower)" if any("vision" in p for p in freeze) else ""
    lines.append(f"- Frozen parameters: {patterns}{image}")
  if model.get("dtype"):
    lines.append(f"- Compute dtype: {model['dtype']} (parameters kept in float32)")
  return lines


def _evaluation_lines(config: Mapping[str, Any], results: Mapping[str, Any] | None) -> list[str]:
  metrics = {k: v for k, v in (results or {}).items() if k.partition("/")[0] in _SPLIT_NAMES}
  if not metrics:
    return ["No evaluation results were recorded for this run (no `results.json`)."]
  data, evals = _section(config, "data"), _section(config, "evals")
  step = (results or {}).get("step")
  at = f" at step {step}" if step is not None else ""
  lines = [f"Results of the run's final evaluation{at} (`results.json`). Protocol: metrics keyed "
           "`test/<eval>/<metric>` are from the held-out test split"
           + (f" (`data.test_split` = `{data['test_split']}`)" if data.get("test_split") else "")
           + ", scored once, after training; metrics keyed `val/<eval>/<metric>` are from the "
           "validation split"
           + (f" (`data.eval_split` = `{data['eval_split']}`)" if data.get("eval_split") else "")
           + ", which may choose checkpoints, so they are not held-out numbers."]
  best = _section(config, "checkpoint").get("best_metric")
  if best:
    lines[0] += f" Checkpoints were ranked by `{best}`."
  own = []  # evaluators whose test numbers come from data of their own, not the training data's
  for name in sorted({k.split("/")[1] for k in metrics if k.count("/") >= 2}):
    eval_config = _as_dict(evals.get(name))
    if eval_config.get("type") == "zeroshot":
      own.append(f"`{name}`: zero-shot classification on the test splits of its own datasets")
    elif eval_config.get("split"):
      own.append(f"`{name}`: its own data (split `{eval_config['split']}`), not the training "
                 "data's")
  if own:
    lines += ["", "Evaluators that read data of their own (test numbers, scored once): "
              + "; ".join(own) + "."]
  lines += ["", "| split | metric | value |", "| --- | --- | ---: |"]
  for split in ("test", "val"):  # held-out numbers first
    for key in sorted(k for k in metrics if k.startswith(split + "/")):
      metric, value = key.partition("/")[2], _metric(metrics[key])
      lines.append(f"| {_SPLIT_NAMES[split]} | `{metric}` | {value} |")
  return lines


def _usage_lines(model_id: str) -> list[str]:
  return [
      "```python",
      "from transformers import pipeline",
      "",
      f'classifier = pipeline("zero-shot-image-classification", model="{model_id}")',
      'classifier("photo.jpg", candidate_labels=["a photo of a dog", "a photo with no dog"])',
      "```",
      "",
      "or with the model and processor:",
      "",
      "```python",
      "import torch",
      "from PIL import Image",
      "from transformers import CLIPModel, CLIPProcessor",
      "",
      f'model = CLIPModel.from_pretrained("{model_id}").eval()',
      f'processor = CLIPProcessor.from_pretrained("{model_id}")',
      'texts = ["a dog on a beach", "a beach with no dog"]',
      'inputs = processor(text=texts, images=Image.open("photo.jpg"), return_tensors="pt", '
      "padding=True)",
      "with torch.no_grad():",
      "  probs = model(**inputs).logits_per_image.softmax(dim=-1)  # [1 image, 2 texts]",
      "```",
  ]


def model_card_text(config: Mapping[str, Any], results: Mapping[str, Any] | None, *,
                    license: str = "other", model_id: str = ".",
                    hf_config: Mapping[str, Any] | None = None) -> str:
  """The whole card (YAML front matter and Markdown body) as a string.

  `model_id` is what the usage snippets load (a hub repo id or a folder); `hf_config` the export's
  config.json, for the architecture line.
  """
  from huggingface_hub import ModelCardData  # pylint: disable=import-outside-toplevel

  config = _as_dict(config)
  metadata = card_metadata(config, license=license)
  # ModelCardData writes the YAML the Hub expects; original_order keeps our key order.
  front = ModelCardData(**metadata).to_yaml(original_order=list(metadata))
  loss_name = _section(config, "loss").get("name") or "unknown"
  model = _section(config, "model")
  family = "SemCLIP" if loss_name in _SEMCLIP_FAMILY and loss_name != "clip" else f"`{loss_name}`"
  lines = [
      "---", front.rstrip("\n"), "---", "",
      f"# CLIP trained with the {family} loss (semclip_jax)", "",
      "A CLIP image-text model in the Hugging Face `CLIPModel` format, trained with semclip_jax, "
      f"a JAX/Flax implementation of SemCLIP ([{PAPER}]({PAPER_URL}), *{PAPER_TITLE}*). SemCLIP "
      "trains CLIP on triples: an image, its original caption, a paraphrase (same meaning) and a "
      "negation (contradicts the image), so that paraphrases stay close to the original and "
      "negations do not.", "",
      "## Model", "",
      f"- Starting point: {_starting_point(model, config)}",
  ]
  architecture = _architecture(hf_config)
  if architecture:
    lines.append(f"- Architecture: {architecture}")
  lines += ["", "## Training", "", *_training_lines(config), "",
            "## Evaluation", "", *_evaluation_lines(config, results), "",
            "## Usage", "", *_usage_lines(model_id), "",
            "## License", ""]
  if license == "other":
    lines.append("`other`: set the license to the terms of the base model and the training data "
                 "before sharing this model.")
  else:
    lines.append(f"`{license}`.")
  return "\n".join(lines) + "\n"


def write_model_card(folder: str, config: Mapping[str, Any], results: Mapping[str, Any] | None,
                     *, license: str = "other", repo_id: str | None = None) -> str:
  """Writes `folder/README.md` atomically and returns its path.

  `repo_id`: the Hub repo the folder will be pushed to, named in the usage snippets; give it when
  the card will be pushed (by default the snippets load `folder` as given). The architecture
  line reads `folder/config.json` when the export is already there.
  """
  storage.check(folder, "model card folder")
  hf_config = None
  config_path = storage.join(folder, REQUIRED_FILES[0])
  if storage.isfile(config_path):
    try:
      with storage.open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    except (OSError, ValueError) as e:  # the card still says everything else
      logger.warning("%s: not read for the model card's architecture line: %s", config_path, e)
  text = model_card_text(config, results, license=license, model_id=repo_id or folder,
                         hf_config=hf_config)
  path = storage.join(folder, CARD_FILE)
  atomic_io.write_text(path, text)
  return path


# ----------------------------------------------------------------------------------------------
# Pushing.
# ----------------------------------------------------------------------------------------------
def check_export_folder(folder: str) -> None:
  """Raises ValueError unless `folder` holds a Hugging Face CLIP export (config.json and
  model.safetensors); `folder` may be local or gs://."""
  storage.check(folder, "export folder")
  if not storage.isdir(folder):
    raise ValueError(f"{folder}: not a folder; push the Hugging Face export (workdir/hf, written "
                     "at the end of training or by --mode=export)")
  missing = [name for name in REQUIRED_FILES
             if not storage.isfile(storage.join(folder, name))]
  if missing:
    raise ValueError(f"{folder}: no {' or '.join(missing)}; not a Hugging Face CLIP export "
                     "(workdir/hf, written at the end of training or by --mode=export)")


def push_to_hub(folder: str, repo_id: str, *, token: str | None = None, private: bool = True,
                endpoint: str | None = None,
                commit_message: str = DEFAULT_COMMIT_MESSAGE) -> str:
  """Creates the model repo `repo_id` if missing and uploads every file of `folder` in one
  commit; returns the commit's URL.

  `private` applies when the repo is created (an existing repo keeps its visibility). `token`:
  by default the saved login or $HF_TOKEN; `endpoint`: by default $HF_ENDPOINT or
  https://huggingface.co. Temporary files of interrupted atomic writes are not uploaded. A
  `gs://` folder is checked in the bucket, then downloaded to a temporary folder, which is pushed.
  Raises ValueError for a folder that is not an export, or an invalid repo id, before any network
  call to the Hub; PushToHubError when the Hub cannot be reached or refuses.
  """
  check_export_folder(folder)
  from huggingface_hub import HfApi, constants  # pylint: disable=import-outside-toplevel
  from huggingface_hub.utils import validate_repo_id  # pylint: disable=import-outside-toplevel

  try:
    validate_repo_id(repo_id)
  except ValueError as e:
    raise ValueError(f"{repo_id!r} is not a Hub repo id ('namespace/name'): {e}") from e
  if not storage.isfile(storage.join(folder, CARD_FILE)):
    logger.warning("%s has no %s: the repo will have no model card (write_model_card)", folder,
                   CARD_FILE)
  api = HfApi(endpoint=endpoint, token=token)
  where = f"the model repo {repo_id!r} on {api.endpoint}"
  if constants.is_offline_mode():  # huggingface_hub would refuse each request; say it once
    raise PushToHubError(f"cannot push {folder} to {where}: offline mode is on (HF_HUB_OFFLINE or "
                         "TRANSFORMERS_OFFLINE is set); unset it to push")
  with storage.local_folder_copy(folder) as local:  # `folder` itself when local
    try:
      api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
      info = api.upload_folder(folder_path=local, repo_id=repo_id, repo_type="model",
                               commit_message=commit_message,
                               ignore_patterns=[f"*{atomic_io.TEMP_SUFFIX}"])
    except Exception as e:  # httpx, HfHubHTTPError, xet, bad metadata: one error, one message
      raise PushToHubError(f"pushing {folder} to {where} failed: {type(e).__name__}: {e}") from e
  return str(info.commit_url)
