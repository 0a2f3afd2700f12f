"""The evaluation report: runs side by side as a Markdown table, JSON, and PNG plots.

Reads each run folder's `results.json` (written by training or `--mode=eval`; metrics keyed
`val/<eval>/<metric>` for the validation rounds and `test/<eval>/<metric>` for the test split,
scored once at the end), `metrics.jsonl` (training curves) and `similarities_<eval>.npz` (per-item
cosines of the ccneg evaluator's test round), and writes into `out_dir`: `results.json`
(run -> metrics), `report.md` (one row per metric, one column per run), and
- `similarities.png`: one column per run; the top row holds histograms of cos(image, original /
  paraphrase / negation), the row below histograms of the text–text cosines cos(original,
  paraphrase) and cos(original, negation) (the paper's distance analysis). Runs whose npz predates
  the text–text cosines get a note in that row; when no run has them the row is left out.
- `benchmarks.png`: bars of the HEADLINE metrics (the test split's).
- `training.png`: loss curves.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

import numpy as np

HEADLINE_SPLIT = "test"  # the bars compare runs on the held-out split, never on validation
HEADLINE = tuple(f"{HEADLINE_SPLIT}/{metric}" for metric in (
    "ccneg/accuracy", "retrieval/t2i_recall@1_original", "retrieval/t2i_recall@1_paraphrase",
    "sugarcrepe_pp/overall/itt", "sugarcrepe_pp/overall/tot", "zeroshot/mean/delta"))
# The npz keys of the ccneg evaluator's similarities (evaluators/ccneg.py) with their plot labels,
# one dict per row of similarities.png.
IMAGE_TEXT = {"caption": "image vs original", "paraphrase": "image vs paraphrase",
              "negation": "image vs negation"}
TEXT_TEXT = {"original_paraphrase": "original vs paraphrase",
             "original_negation": "original vs negation"}
KINDS = {**IMAGE_TEXT, **TEXT_TEXT}  # every key the evaluator stores
SIMILARITY_ROWS = {"image-text": IMAGE_TEXT, "text-text": TEXT_TEXT}


def run_name(folder: str) -> str:
  return os.path.basename(os.path.normpath(folder))


def load_results(folder: str) -> dict[str, float]:
  path = os.path.join(folder, "results.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no results; train the run or evaluate it (--mode=eval) first")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def markdown_table(results: dict[str, dict[str, float]]) -> str:
  """One row per metric, one column per run; '–' where a run lacks the metric."""
  runs = list(results)
  metrics = sorted(set().union(*(r.keys() for r in results.values())) - {"step"})
  lines = ["| metric | " + " | ".join(runs) + " |", "| --- |" + " ---: |" * len(runs)]
  for metric in metrics:
    cells = [f"{results[r][metric]:.4f}" if metric in results[r] else "–" for r in runs]
    lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _plt():
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")  # files only: no display on servers and CI
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  return plt


def plot_similarities(folders: Sequence[str], path: str) -> tuple[str, ...]:
  """Histograms of each run's per-item cosines; returns the SIMILARITY_ROWS drawn (() if none).

  A row is drawn when any run's npz holds its keys; older npz files without the text–text keys
  still render their image–text row.
  """
  files = {run_name(f): sorted(glob.glob(os.path.join(f, "similarities_*.npz"))) for f in folders}
  cosines = {name: dict(np.load(found[0])) for name, found in files.items() if found}
  rows = tuple(row for row, kinds in SIMILARITY_ROWS.items()
               if any(kind in c for c in cosines.values() for kind in kinds))
  if not rows:
    return ()
  plt = _plt()
  fig, axes = plt.subplots(len(rows), len(cosines), figsize=(5 * len(cosines), 3.5 * len(rows)),
                           squeeze=False)
  for r, row in enumerate(rows):
    for ax, (name, values) in zip(axes[r], cosines.items()):
      kinds = {kind: label for kind, label in SIMILARITY_ROWS[row].items() if kind in values}
      if not kinds:
        ax.text(0.5, 0.5, f"no {row} cosines\n(the npz predates them)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"{name}: {row}", xticks=[], yticks=[])
        continue
      for kind, label in kinds.items():
        ax.hist(values[kind], bins=40, alpha=0.5, label=label)
      ax.set(title=f"{name}: {row}", xlabel="cosine similarity", ylabel="items")
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return rows


def plot_benchmarks(results: dict[str, dict[str, float]], path: str) -> bool:
  metrics = [m for m in HEADLINE if any(m in r for r in results.values())]
  if not metrics:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(1.8 * len(metrics) + 2, 3.5))
  width = 0.8 / len(results)
  for i, (name, values) in enumerate(results.items()):
    ax.bar(np.arange(len(metrics)) + i * width, [values.get(m, np.nan) for m in metrics], width,
           label=name)
  labels = [m.removeprefix(f"{HEADLINE_SPLIT}/") for m in metrics]
  ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, labels, rotation=20, ha="right")
  ax.set(title=f"{HEADLINE_SPLIT} split")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def plot_training(folders: Sequence[str], path: str) -> bool:
  curves = {}
  for folder in folders:
    file = os.path.join(folder, "metrics.jsonl")
    if os.path.isfile(file):
      with open(file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
      points = {r["step"]: r["loss"] for r in rows if isinstance(r.get("loss"), float)}
      if points:
        curves[run_name(folder)] = sorted(points.items())
  if not curves:
    return False
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for name, points in curves.items():
    ax.plot(*zip(*points), label=name)
  ax.set(xlabel="step", ylabel="training loss", yscale="log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def write_report(folders: Sequence[str], out_dir: str) -> dict[str, str]:
  """Writes the report of `folders` into `out_dir`; returns {artefact: path} of what it wrote."""
  os.makedirs(out_dir, exist_ok=True)
  results = {run_name(f): load_results(f) for f in folders}
  written = {"results": os.path.join(out_dir, "results.json"),
             "table": os.path.join(out_dir, "report.md")}
  with open(written["results"], "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(written["table"], "w", encoding="utf-8") as f:
    f.write("# Evaluation report\n\n" + markdown_table(results) + "\n")
  for name, plot in (("similarities", lambda p: plot_similarities(folders, p)),
                     ("benchmarks", lambda p: plot_benchmarks(results, p)),
                     ("training", lambda p: plot_training(folders, p))):
    path = os.path.join(out_dir, f"{name}.png")
    if plot(path):
      written[name] = path
  return written
