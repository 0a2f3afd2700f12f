"""What a run folder holds, read: run labels, results, training curves, per-item cosines and the
config's metadata, as one `Run` per folder. Reads only; the report (report.py) writes.

What it reads from each run folder (a training workdir, an `evaluate.py --out` folder):
- `results.json` (required): metrics keyed `val/<eval>/<metric>` (validation rounds) and
  `test/<eval>/<metric>` (the test split, scored once at the end), and `step`.
- `config.json` (optional): the training config, for the run's metadata. An exported Hugging Face
  folder holds a model config under that name instead; a missing or foreign config is noted.
- `metrics.jsonl` (optional): training lines (`step`, `loss`, `contrastive_loss`, the other
  terms, and extra keys such as `time`, which are ignored) and eval lines (`val/...`, `test/...`
  keys, not curves). NaN/Inf are stored as strings; they are left out of the curves, and counted.
- `similarities_<eval>.npz` (optional): the ccneg evaluator's per-item cosines of its test round
  (`similarities_ccneg.npz` when present, else the first by name).

Run folders may be local or `gs://` (see `storage`). Runs are labelled `LABEL=PATH` explicitly,
else by the shortest trailing part of their path that no other run shares (`x/seed0` and
`y/seed0`, never two columns named `seed0`). A missing folder or results.json raises
FileNotFoundError, a malformed file ValueError, both naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from semclip_jax import storage
from semclip_jax.losses import configured_weights
from semclip_jax.objective import SEMCLIP_FAMILY

# The npz keys of the ccneg evaluator's similarities (evaluators/ccneg.py) with their plot labels,
# one dict per row of similarities.png.
IMAGE_TEXT = {"caption": "image vs original", "paraphrase": "image vs paraphrase",
              "negation": "image vs negation"}
TEXT_TEXT = {"original_paraphrase": "original vs paraphrase",
             "original_negation": "original vs negation"}
KINDS = {**IMAGE_TEXT, **TEXT_TEXT}  # every key the evaluator stores

# Training losses in metrics.jsonl (losses.py): `loss` is the objective's weighted total;
# `contrastive_loss` its image–text InfoNCE term, the one term every objective but SigLIP logs
# (SigLIP's `loss` is its only term, the image–text sigmoid loss).
COMPARABLE_TERM = "contrastive_loss"
LOSS_TERMS = ("loss", "contrastive_loss", "i2t_loss", "t2i_loss", "para_loss", "neg_loss",
              "margin_loss")  # panel order of loss_terms.png; other `*_loss` keys follow, sorted
# The loss keys of a run whose objective is the image–text term alone: its `loss` is that term.
_IMAGE_TEXT_PARTS = {"loss", "i2t_loss", "t2i_loss"}
METADATA_ROWS = ("folder", "config", "loss", "loss weights", "steps", "data", "model",
                 "batch size", "training curves")
Curves = dict[str, list[tuple[int, float]]]  # loss key -> [(step, value)], by step


# ----------------------------------------------------------------------------------------------
# Runs: labels, files.
# ----------------------------------------------------------------------------------------------
def split_label(entry: str) -> tuple[str, str]:
  """`LABEL=PATH` -> (LABEL, PATH); a plain PATH -> ("", PATH).

  The first '=' splits, and only when the part before it holds no '/' and the whole entry is not
  an existing path: sweep folders such as `runs/lr=0.1` stay paths.
  """
  label, sep, path = entry.partition("=")
  if not sep or "/" in label or os.sep in label or storage.exists(entry):
    return "", entry
  if not label or not path:
    raise ValueError(f"report entry {entry!r}: give LABEL=PATH with both parts, or a PATH")
  return label, path


def _path_parts(folder: str) -> list[str]:
  """The parts of a folder's absolute path, outermost first; a gs:// path's first part is
  `gs:/`, so that all its parts joined by '/' are the URL."""
  if storage.is_remote(folder):
    kind, key = folder.split("://", 1)
    return [f"{kind}:/", *(part for part in key.split("/") if part)]
  return os.path.abspath(folder).strip(os.sep).split(os.sep)


def distinct_labels(folders: Sequence[str], taken: Collection[str] = ()) -> list[str]:
  """Per folder, the shortest trailing part of its absolute path that ends no other folder's path
  and is no label in `taken`: `seed0` alone, `x/seed0` beside `y/seed0`.

  Such labels are distinct: two runs with one label would each end in the other's. Raises
  ValueError for a folder named twice, which no label can tell apart.
  """
  parts = [_path_parts(folder) for folder in folders]
  labels = []
  for i, own in enumerate(parts):
    others = parts[:i] + parts[i + 1:]
    for k in range(1, len(own) + 1):
      label = "/".join(own[-k:])
      if label not in taken and all(other[-k:] != own[-k:] for other in others):
        labels.append(label)
        break
    else:
      raise ValueError(f"{folders[i]}: nothing in its path tells it apart from the other runs "
                       "(named twice?); name each run folder once, or label it LABEL=PATH")
  return labels


def run_folders(folders: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
  """label -> folder, in the order given, from folders (`LABEL=PATH` or `PATH` each) or a mapping
  label -> folder. Unlabelled folders get `distinct_labels`; a repeated label is a ValueError."""
  if isinstance(folders, Mapping):
    pairs = [(str(label), str(folder)) for label, folder in folders.items()]
    if not all(label for label, _ in pairs):
      raise ValueError("report: every run label must be non-empty")
  else:
    pairs = [split_label(entry) for entry in ([folders] if isinstance(folders, str) else folders)]
  if not pairs:
    raise ValueError("report: no run folders given")
  explicit = [label for label, _ in pairs if label]
  if repeated := sorted({label for label in explicit if explicit.count(label) > 1}):
    raise ValueError(f"report: run label(s) {', '.join(repeated)} given twice; labels name columns")
  auto = iter(distinct_labels([folder for label, folder in pairs if not label], taken=explicit))
  return {label or next(auto): folder for label, folder in pairs}


def _number(value: Any) -> float | None:
  """A metric value as a float: numbers, and the strings metrics.jsonl stores NaN/Inf as; None for
  anything else (a future non-numeric key must not break the report)."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    try:
      return float(value)  # "nan", "inf", "-inf"
    except ValueError:
      return None
  return None


def load_results(folder: str) -> dict[str, float]:
  """The numeric entries of `folder`/results.json. FileNotFoundError (naming the folder and what
  to do) when the folder or its results.json is missing; ValueError for a malformed file."""
  storage.check(folder, "run folder")
  if not storage.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such run folder, so no results to report; check the "
                            "path (a training workdir or an evaluate.py --out folder)")
  path = storage.join(folder, "results.json")
  if not storage.isfile(path):
    raise FileNotFoundError(
        f"{folder}: no results.json, so no results to report; train the run to its end, or score "
        "it first (python -m semclip_jax.evaluate --model=<model> --out=<folder>)")
  try:
    with storage.open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f"{path}: not valid JSON ({e}); score the run again") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: not a results file (a JSON object of metric: value)")
  return {name: value for name, value in ((k, _number(v)) for k, v in raw.items())
          if value is not None}


def _loss_key(name: str) -> str | None:
  """The loss term a metrics.jsonl key names, or None. Eval keys hold '/' (`val/...`); a `train/`
  prefix (TensorBoard's naming) is read as the bare key."""
  name = name.removeprefix("train/")
  return name if "/" not in name and (name == "loss" or name.endswith("_loss")) else None


def read_training(folder: str) -> tuple[Curves, int]:
  """The loss curves of `folder`/metrics.jsonl ({} without one) and the count of non-finite loss
  values left out of them. A step logged twice (a resumed run) keeps its last value; a line that
  is not JSON (one cut short when a run was killed) is skipped."""
  path = storage.join(folder, "metrics.jsonl")
  if not storage.isfile(path):
    return {}, 0
  by_key: dict[str, dict[int, float]] = {}
  dropped = 0
  # Bad bytes (a torn write) fail that line's JSON, which is skipped, instead of the whole file.
  with io.TextIOWrapper(storage.open(path, "rb"), encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      step = _number(row.get("step")) if isinstance(row, dict) else None
      if step is None or not math.isfinite(step):
        continue
      for name, raw in row.items():
        key, value = _loss_key(name), _number(raw)
        if key is None or value is None:
          continue
        if math.isfinite(value):
          by_key.setdefault(key, {})[int(step)] = value
        else:
          dropped += 1
  return {key: sorted(points.items()) for key, points in by_key.items()}, dropped


def term_order(keys: Collection[str]) -> list[str]:
  """Loss keys in LOSS_TERMS' order, then any others sorted."""
  return [t for t in LOSS_TERMS if t in keys] + sorted(set(keys) - set(LOSS_TERMS))


def comparable_curve(curves: Curves) -> tuple[str, list[tuple[int, float]]] | None:
  """(key, points) of the run's image–text contrastive loss: `contrastive_loss`, else `loss` when
  the run logs no term beside the image–text one (then `loss` is that term: SigLIP's), else None."""
  if COMPARABLE_TERM in curves:
    return COMPARABLE_TERM, curves[COMPARABLE_TERM]
  if "loss" in curves and set(curves) <= _IMAGE_TEXT_PARTS:
    return "loss", curves["loss"]
  return None


def load_similarities(folder: str) -> tuple[str, dict[str, np.ndarray]] | None:
  """(eval name, {kind: per-item cosines}) of the run's ccneg npz, or None without one."""
  files = storage.glob(folder, "similarities_*.npz")
  if not files:
    return None
  preferred = storage.join(folder, "similarities_ccneg.npz")
  path = preferred if preferred in files else files[0]
  try:
    with storage.open(path, "rb") as f, np.load(f) as npz:
      cosines = {kind: np.asarray(npz[kind], np.float64).ravel() for kind in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: unreadable ({e}); delete it or score the run again") from None
  return storage.basename(path).removeprefix("similarities_").removesuffix(".npz"), cosines


# ----------------------------------------------------------------------------------------------
# Metadata.
# ----------------------------------------------------------------------------------------------
def _get(config: Mapping[str, Any], *keys: str) -> Any:
  for key in keys:
    if not isinstance(config, Mapping) or key not in config:
      return None
    config = config[key]
  return config


def _read_config(folder: str) -> tuple[dict[str, Any] | None, str]:
  """(the training config or None, what the `config` row says)."""
  path = storage.join(folder, "config.json")
  if not storage.isfile(path):
    return None, "no config.json (an exported model or evaluation folder)"
  try:
    with storage.open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    return None, f"config.json unreadable ({type(e).__name__})"
  if not isinstance(config, dict) or not isinstance(config.get("loss"), dict):
    # A Hugging Face folder's config.json describes the model, not a training run.
    return None, "config.json is a model config, not a training run's"
  return config, "config.json"


def _fmt(value: Any) -> str:
  """A config or step value as text: whole numbers without '.0' or exponent (step 1000000)."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
  return str(value)


def loss_weights(loss: Mapping[str, Any]) -> str:
  """The weights the objective trains with: a SemCLIP-family variant's α, β, γ with the config's
  overrides (as Objective does), plus δ and m for semclip_image_margin; '–' for one-term losses."""
  name = loss.get("name")
  if name not in SEMCLIP_FAMILY:
    return "– (one term)" if name in ("negclip", "siglip") else "–"
  weights = configured_weights(loss)
  text = ", ".join(f"{symbol}={_fmt(weights[k])}" for k, symbol in
                   (("alpha", "α"), ("beta", "β"), ("gamma", "γ")))
  if name == "semclip_image_margin":
    text += f", δ={_fmt(loss.get('image_margin_weight'))} (m={_fmt(loss.get('image_margin'))})"
  return text + (", paper_compat" if loss.get("paper_compat") else "")


def run_metadata(folder: str, results: Mapping[str, float], curves: Curves | None = None,
                 dropped: int = 0) -> dict[str, str]:
  """METADATA_ROWS -> text for one run: from its config.json when that is a training config,
  '–' where nothing says (the `config` row tells why); never raises for a missing config."""
  config, config_note = _read_config(folder)
  config = config or {}
  step = results.get("step")
  steps = "; ".join(part for part in (
      f"total_steps {_fmt(_get(config, 'total_steps'))}" if _get(config, "total_steps") else "",
      f"results at step {_fmt(step)}" if step is not None else "") if part)
  kind, path = _get(config, "data", "kind"), _get(config, "data", "path")
  init_from, arch = _get(config, "model", "init_from"), _get(config, "model", "init_arch")
  preset = _get(config, "model", "preset")
  batch, accum = _get(config, "data", "batch_size"), _get(config, "optim", "grad_accum_steps")
  curve_note = ", ".join(term_order(curves or {})) or "none (no metrics.jsonl losses)"
  if dropped:
    curve_note += f"; {dropped} non-finite value(s) left out"
  return {
      "folder": folder,
      "config": config_note,
      "loss": _get(config, "loss", "name") or "–",
      "loss weights": loss_weights(config["loss"]) if config else "–",
      "steps": steps or "–",
      "data": (f"{kind}: {path}" if path else kind) if kind else "–",
      "model": (f"init_from {init_from}" + (f"@{arch}" if arch else "") if init_from
                else f"preset {preset}" if preset else "–"),
      "batch size": (_fmt(batch) + (f", grad_accum_steps={_fmt(accum)}"
                                    if isinstance(accum, int) and accum > 1 else "")
                     if batch else "–"),
      "training curves": curve_note,
  }


@dataclasses.dataclass(frozen=True)
class Run:
  """One run folder as the report reads it."""
  label: str
  folder: str
  results: dict[str, float]
  metadata: dict[str, str]
  curves: Curves
  cosines: tuple[str, dict[str, np.ndarray]] | None  # (eval name, per-item cosines)


def load_run(label: str, folder: str) -> Run:
  results = load_results(folder)
  curves, dropped = read_training(folder)
  return Run(label, folder, results, run_metadata(folder, results, curves, dropped), curves,
             load_similarities(folder))


def load_runs(folders: Sequence[str] | Mapping[str, str]) -> list[Run]:
  """Every run of `folders` (as `run_folders` takes them), all read before anything is written."""
  return [load_run(label, folder) for label, folder in run_folders(folders).items()]
