"""The evaluation report: runs side by side as Markdown, JSON and PNG figures, one per question.

`write_report(folders, out_dir)` reads every run first (report_runs.py: what a run folder holds,
how runs are labelled, the errors for a missing or malformed one), then writes; matplotlib loads
on the first figure drawn, not on import.

What it writes into `out_dir`: `results.json` (label -> metrics), `report.md` (the runs'
metadata, the metrics, their deltas against the first run, the figures embedded), and
- `training.png`: the image–text contrastive loss of every run, the one term all objectives share
  (the totals are weighted sums of different terms, not comparable across objectives).
- `loss_terms.png`: one panel per loss term any run logs, each run a line.
- `benchmarks.png`: labelled bars of the HEADLINE metrics (the test split's).
- `similarities.png`: one column per run; histogram outlines of cos(image, original / paraphrase
  / negation) over those of the text–text cos(original, paraphrase / negation), axes shared.
- `margins.png`: per item, cos(image, original) − cos(image, negation), one outline per run: the
  fraction above 0 is CC-Neg's accuracy.
A figure no run has data for is left out. Run folders and `out_dir` may be local or `gs://`
(see `storage`): a bucket's report is written to a local folder first, then uploaded file by file.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np

from semclip_jax import report_runs, storage

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

HEADLINE_SPLIT = "test"  # the bars compare runs on the held-out split, never on validation
HEADLINE = tuple(f"{HEADLINE_SPLIT}/{metric}" for metric in (
    "ccneg/accuracy", "retrieval/t2i_recall@1_original", "retrieval/t2i_recall@1_paraphrase",
    "sugarcrepe_pp/overall/itt", "sugarcrepe_pp/overall/tot", "zeroshot/mean/delta"))
# One row of similarities.png per dict of report_runs' npz kinds.
SIMILARITY_ROWS = {"image-text": report_runs.IMAGE_TEXT, "text-text": report_runs.TEXT_TEXT}
# One colour per kind in every panel, so a kind reads the same across runs.
KIND_COLOURS = {"caption": "tab:green", "paraphrase": "tab:blue", "negation": "tab:red",
                "original_paraphrase": "tab:purple", "original_negation": "tab:orange"}
TERM_TITLES = {"loss": "loss: the weighted total (differs by objective)",
               "contrastive_loss": "contrastive_loss: image–text InfoNCE",
               "i2t_loss": "i2t_loss: image → text", "t2i_loss": "t2i_loss: text → image",
               "para_loss": "para_loss: paraphrase term", "neg_loss": "neg_loss: negation term",
               "margin_loss": "margin_loss: image margin hinge"}
MARKER_POINTS = 20  # curves with at most this many points get markers: one point is still seen


# ----------------------------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = " ---: |") -> str:
  """A Markdown table; the first column left-aligned, the others by `align` (numbers: right)."""
  lines = ["| " + " | ".join(map(_cell, header)) + " |", "| --- |" + align * (len(header) - 1)]
  lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
  return "\n".join(lines)


def markdown_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """One row per metric, one column per run; '–' where a run lacks the metric."""
  runs = list(results)
  metrics = sorted(set().union(*(r.keys() for r in results.values())) - {"step"})
  return _table(["metric", *runs], [
      [metric, *(f"{results[r][metric]:.4f}" if metric in results[r] else "–" for r in runs)]
      for metric in metrics])


def deltas_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """Each later run minus the first, signed, per metric both have ('–' where one lacks it); ''
  for a single run."""
  first, *others = list(results)
  if not others:
    return ""
  base = results[first]
  metrics = sorted(m for m in set(base) - {"step"} if any(m in results[o] for o in others))
  return _table(["metric", *(f"{o} − {first}" for o in others)], [
      [metric, *(f"{results[o][metric] - base[metric]:+.4f}" if metric in results[o] else "–"
                 for o in others)] for metric in metrics])


def metadata_table(runs: Sequence[report_runs.Run]) -> str:
  return _table(["", *(run.label for run in runs)],
                [[row, *(run.metadata[row] for run in runs)] for row in report_runs.METADATA_ROWS],
                " --- |")


# ----------------------------------------------------------------------------------------------
# Figures: each builds a matplotlib Figure (None when no run has its data); write_report saves.
# ----------------------------------------------------------------------------------------------
def _figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float], **share: Any
            ) -> tuple[Figure, np.ndarray]:
  """(Figure, axes [nrows, ncols]) on an Agg canvas: files only, no display on servers and CI,
  and no pyplot state to leak figures between calls."""
  # Imported on first draw: importing the report (evaluate.py does) does not load matplotlib.
  # pylint: disable=import-outside-toplevel,redefined-outer-name
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=size, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False, **share)
  for ax in axes.flat:  # shared axes hide inner tick labels; each panel is read on its own
    ax.tick_params(labelbottom=True, labelleft=True)
  return fig, axes


def _colour(index: int) -> str:
  return f"C{index % 10}"  # one colour per run, the same in every figure


def _plot_curve(ax: Axes, points: Sequence[tuple[int, float]], **style: Any) -> None:
  steps, values = zip(*points)
  ax.plot(steps, values, marker="o" if len(points) <= MARKER_POINTS else None, markersize=4,
          **style)


def _shared_bins(arrays: Sequence[np.ndarray], bins: int = 40) -> np.ndarray:
  """One set of bin edges for all `arrays`, so histograms of different runs line up."""
  finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
  return np.histogram_bin_edges(finite, bins) if finite.size else np.linspace(-1, 1, bins + 1)


def training_figure(runs: Sequence[report_runs.Run]) -> Figure | None:
  """The image–text contrastive loss (`comparable_curve`) of every run on linear axes."""
  found = [(i, run, report_runs.comparable_curve(run.curves)) for i, run in enumerate(runs)]
  found = [(i, run, curve) for i, run, curve in found if curve]
  if not found:
    return None
  fig, axes = _figure(size=(7, 4))
  ax = axes[0, 0]
  for i, run, (key, points) in found:
    label = (run.label if key == report_runs.COMPARABLE_TERM
             else f"{run.label} ({key}: its only term)")
    _plot_curve(ax, points, color=_colour(i), label=label)
  ax.set(xlabel="training step", ylabel=report_runs.COMPARABLE_TERM,
         title="image–text contrastive loss (the term every objective has)")
  ax.grid(alpha=0.3)
  ax.legend(title="run")
  return fig


def loss_terms_figure(runs: Sequence[report_runs.Run]) -> Figure | None:
  """One panel per loss term (`loss_terms`), each run that logs it a line; linear axes, y per
  panel (terms differ in scale), steps shared."""
  terms = report_runs.term_order(set().union(*(run.curves for run in runs)))
  if not terms:
    return None
  ncols = min(3, len(terms))
  nrows = -(-len(terms) // ncols)
  fig, axes = _figure(nrows, ncols, size=(4.5 * ncols, 3.2 * nrows), sharex=True)
  for ax, term in zip(axes.flat, terms):
    for i, run in enumerate(runs):
      if term in run.curves:
        _plot_curve(ax, run.curves[term], color=_colour(i), label=run.label)
    ax.set(title=TERM_TITLES.get(term, term), xlabel="training step", ylabel=term)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in axes.flat[len(terms):]:
    ax.set_axis_off()
  return fig


def benchmarks_figure(results: Mapping[str, Mapping[str, float]]) -> Figure | None:
  """Grouped bars of the HEADLINE metrics any run has, one colour per run, each bar labelled with
  its value (a run lacking a metric has no bar there)."""
  metrics = [m for m in HEADLINE if any(m in r for r in results.values())]
  if not metrics:
    return None
  width = 0.8 / len(results)
  fig, axes = _figure(size=(max(6.0, 0.5 * len(metrics) * len(results) + 3), 4.5))
  ax = axes[0, 0]
  x = np.arange(len(metrics))
  for i, (label, values) in enumerate(results.items()):
    heights = [values.get(m, np.nan) for m in metrics]
    bars = ax.bar(x + (i - (len(results) - 1) / 2) * width, heights, width, label=label,
                  color=_colour(i))
    ax.bar_label(bars, labels=[f"{h:.3f}" if np.isfinite(h) else "" for h in heights],
                 padding=2, fontsize=7, rotation=90 if len(results) > 2 else 0)
  ax.set_xticks(x, [m.removeprefix(f"{HEADLINE_SPLIT}/") for m in metrics], rotation=20, ha="right")
  ax.axhline(0, color="black", linewidth=0.8)
  ax.margins(y=0.2)  # room for the value labels above the tallest bar
  ax.set(xlabel="metric", ylabel="value", title=f"headline metrics, {HEADLINE_SPLIT} split")
  ax.legend(title="run")
  return fig


def similarities_figure(runs: Sequence[report_runs.Run]) -> Figure | None:
  """One column per run with cosines; per row of SIMILARITY_ROWS that any run's npz holds, the
  outline histogram of each kind on bins and axes shared by all panels (counts shared per row).
  A run whose npz predates a row's keys gets a note there."""
  drawn = [run for run in runs if run.cosines]
  rows = [row for row, kinds in SIMILARITY_ROWS.items()
          if any(kind in run.cosines[1] for run in drawn for kind in kinds)]
  if not rows:
    return None
  bins = _shared_bins([values for run in drawn for kind, values in run.cosines[1].items()
                       if kind in report_runs.KINDS])
  fig, axes = _figure(len(rows), len(drawn), size=(4.5 * len(drawn), 3.2 * len(rows)),
                      sharex=True, sharey="row")
  for r, row in enumerate(rows):
    for ax, run in zip(axes[r], drawn):
      name, cosines = run.cosines
      title = f"{run.label} ({name}, {HEADLINE_SPLIT}): {row}"
      kinds = [kind for kind in SIMILARITY_ROWS[row] if kind in cosines]
      if not kinds:
        ax.text(0.5, 0.5, f"no {row} cosines\n(the npz predates them)", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_title(title)
        continue
      for kind in kinds:
        ax.hist(cosines[kind], bins, histtype="step", linewidth=1.5, color=KIND_COLOURS[kind],
                label=report_runs.KINDS[kind])
      ax.set(title=title, xlabel="cosine similarity", ylabel="items")
      ax.legend(fontsize="small")
  return fig


def ccneg_margins(runs: Sequence[report_runs.Run]) -> dict[str, np.ndarray]:
  """label -> per-item cos(image, original) − cos(image, negation), for runs whose npz has both."""
  return {run.label: run.cosines[1]["caption"] - run.cosines[1]["negation"] for run in runs
          if run.cosines and {"caption", "negation"} <= set(run.cosines[1])}


def margins_figure(runs: Sequence[report_runs.Run]) -> Figure | None:
  """One outline histogram per run of `ccneg_margins`, a line at 0, and in the legend the
  fraction above 0 (strictly, as the accuracy counts; a NaN margin counts as a failure)."""
  margins = ccneg_margins(runs)
  if not margins:
    return None
  bins = _shared_bins(list(margins.values()))
  fig, axes = _figure(size=(7, 4))
  ax = axes[0, 0]
  for i, run in enumerate(runs):
    if run.label in margins:
      m = margins[run.label]
      ax.hist(m[np.isfinite(m)], bins, histtype="step", linewidth=1.5, color=_colour(i),
              label=f"{run.label}: {np.mean(m > 0):.1%} > 0 (n={m.size})")
  ax.axvline(0, color="black", linestyle="--", linewidth=1)
  ax.set(xlabel="cos(image, original) − cos(image, negation)", ylabel="items",
         title=f"CC-Neg margin per item, {HEADLINE_SPLIT} split (accuracy: the fraction > 0)")
  ax.legend(title="run")
  return fig


# ----------------------------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------------------------
# Figure file name -> (Markdown heading, caption); the order of report.md.
FIGURES = {
    "training": ("Training: the comparable loss",
                 "The image–text contrastive loss (`contrastive_loss`) per training step: the one "
                 "term every objective has. A run that logs no `contrastive_loss` shows its "
                 "`loss` only when that is its sole term (SigLIP's sigmoid loss)."),
    "loss_terms": ("Training: each loss term",
                   "One panel per logged loss term; `loss` is each objective's weighted total, "
                   "not comparable across objectives."),
    "benchmarks": ("Headline metrics", f"The {HEADLINE_SPLIT} split's headline metrics."),
    "similarities": ("Cosine similarities",
                     "Per-item cosines of the ccneg test round: image–text above text–text."),
    "margins": ("CC-Neg margins",
                "Per item cos(image, original) − cos(image, negation); CC-Neg accuracy is the "
                "fraction above 0."),
}


def report_markdown(runs: Sequence[report_runs.Run], figures: Collection[str]) -> str:
  """report.md: metadata, metrics, deltas against the first run, and `figures` (FIGURES keys
  written beside it) embedded by relative path."""
  results = {run.label: run.results for run in runs}
  parts = ["# Evaluation report", "## Runs", metadata_table(runs), "## Metrics",
           markdown_table(results)]
  if deltas := deltas_table(results):
    parts += [f"## Deltas against {runs[0].label}",
              "Each run's value minus the first run's, for every metric both have.", deltas]
  for name, (heading, caption) in FIGURES.items():
    if name in figures:
      parts += [f"## {heading}", caption, f"![{heading}]({name}.png)"]
  return "\n\n".join(parts) + "\n"


def write_report(folders: Sequence[str] | Mapping[str, str], out_dir: str) -> dict[str, str]:
  """Writes the report of the runs into `out_dir`; returns {artefact: path} of what it wrote.

  `folders`: run folders, each `PATH` or `LABEL=PATH` (see `report_runs.run_folders`), or a mapping
  label -> folder. Every run is read first: a missing folder or results.json raises
  FileNotFoundError, a malformed file ValueError, both naming the file, before anything is written.
  """
  storage.check(out_dir, "report folder")
  runs = report_runs.load_runs(folders)
  results = {run.label: run.results for run in runs}
  builders = {"training": lambda: training_figure(runs),
              "loss_terms": lambda: loss_terms_figure(runs),
              "benchmarks": lambda: benchmarks_figure(results),
              "similarities": lambda: similarities_figure(runs),
              "margins": lambda: margins_figure(runs)}
  files = {"results": "results.json"}  # artefact -> file name in out_dir
  # A local out_dir is written in place; a gs:// one in a temporary folder, uploaded at the end.
  with storage.writing_folder(out_dir) as folder:
    with open(os.path.join(folder, files["results"]), "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    for name, build in builders.items():
      fig = build()
      if fig is not None:
        files[name] = f"{name}.png"
        fig.savefig(os.path.join(folder, files[name]), dpi=100)
    files["table"] = "report.md"
    with open(os.path.join(folder, files["table"]), "w", encoding="utf-8") as f:
      f.write(report_markdown(runs, files))
  return {name: storage.join(out_dir, file) for name, file in files.items()}
