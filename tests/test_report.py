"""The report: distinct run labels, clear errors, one readable figure per question, report.md's
metadata, deltas and embedded figures, metrics.jsonl's extra keys and non-finite values.

Run folders are built by hand as the trainer and evaluate.py leave them: results.json, the
trainer's config.json (or an exported HF folder's), metrics.jsonl, the ccneg similarities npz.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from semclip_jax import config as config_lib
from semclip_jax import evaluate, hf, report, report_runs, storage
from semclip_jax.evaluators import CCNegEvaluator
from semclip_jax.evaluators.ccneg import TEXT_PAIRS
from semclip_jax.evaluators.embed import CAPTION_KINDS
from semclip_jax.models import get_preset


def _run(root, name, *, results=None, kinds=report_runs.KINDS, seed=0, train=None, config=None):
  """A run folder `root/name` (name may hold '/'): results.json (prefixed keys), the per-item
  cosines of `kinds` (none when empty), metrics.jsonl from `train` ({key: [values]} at steps 1..n,
  or raw lines as str) and config.json (a dict, written as JSON)."""
  run = root / name
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps(
      results or {"step": 5, "test/ccneg/accuracy": 0.75, "val/ccneg/accuracy": 0.7}))
  if kinds:
    rng = np.random.default_rng(seed)
    np.savez(run / "similarities_ccneg.npz", **{k: rng.uniform(-1, 1, size=30) for k in kinds})
  if isinstance(train, str):
    (run / "metrics.jsonl").write_text(train)
  elif train:
    steps = len(next(iter(train.values())))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s + 1, **{k: v[s] for k, v in train.items()}}) + "\n"
        for s in range(steps)))
  if config is not None:
    (run / "config.json").write_text(json.dumps(config))
  return str(run)


def _train_config(loss_name, **loss):
  """config.json as the trainer writes it, for a csv run of `loss_name`."""
  config = config_lib.base_config()
  config.loss.update(name=loss_name, **loss)
  config.data.update(kind="csv", path="/data/ccneg.csv", batch_size=64)
  config.optim.grad_accum_steps = 2
  config.total_steps = 300
  return json.loads(config.to_json_best_effort())


def _assert_png(path):
  with Image.open(path) as image:
    image.verify()
    assert image.format == "PNG" and image.size[0] > 100


def _ticks_inside(axis, limits):
  lo, hi = sorted(limits)
  return [t for t in axis.get_majorticklocs() if lo <= t <= hi]


# ----------------------------------------------------------------------------------------------
# 1. Labels and errors.
# ----------------------------------------------------------------------------------------------
def test_runs_named_alike_get_distinct_labels_and_explicit_labels(tmp_path):
  # A sweep: two seed0 runs and an exported model; the basename alone would merge the seed0 runs.
  # (A metric with no bar, so no figure: this test is about labels, and fast.)
  runs = [_run(tmp_path, n, kinds=(), results={"step": 5, "test/negbench_mcq/accuracy": a})
          for n, a in (("x/seed0", 0.6), ("y/seed0", 0.7), ("y/hf", 0.8))]
  report.write_report(runs, str(tmp_path / "out"))
  combined = json.loads((tmp_path / "out" / "results.json").read_text())
  assert combined == {"x/seed0": {"step": 5, "test/negbench_mcq/accuracy": 0.6},
                      "y/seed0": {"step": 5, "test/negbench_mcq/accuracy": 0.7},
                      "hf": {"step": 5, "test/negbench_mcq/accuracy": 0.8}}
  assert "| metric | x/seed0 | y/seed0 | hf |" in (tmp_path / "out" / "report.md").read_text()
  # Explicit labels: LABEL=PATH entries (as --report passes them) or a mapping; an unlabelled run
  # whose suffix is taken by a label grows its label instead.
  assert report_runs.run_folders([f"seed0={runs[0]}", runs[1], runs[2]]) == {
      "seed0": runs[0], "y/seed0": runs[1], "hf": runs[2]}
  report.write_report({"base": runs[0], "ours": runs[2]}, str(tmp_path / "mapped"))
  assert set(json.loads((tmp_path / "mapped" / "results.json").read_text())) == {"base", "ours"}
  # A folder whose name holds '=' (a sweep's lr=0.1) is a path, not a label.
  swept = _run(tmp_path, "lr=0.1", kinds=())
  assert report_runs.run_folders([swept, runs[0]]) == {"lr=0.1": swept, "seed0": runs[0]}
  with pytest.raises(ValueError, match="named twice"):
    report_runs.run_folders([runs[0], runs[0] + "/"])
  with pytest.raises(ValueError, match="given twice"):
    report_runs.run_folders([f"a={runs[0]}", f"a={runs[1]}"])


@pytest.mark.parametrize("case", ["no folder", "no results.json", "not JSON"])
def test_missing_or_broken_run_is_one_clear_error_naming_the_folder(tmp_path, capsys, case):
  folder = tmp_path / "sweep" / "seed1"
  if case != "no folder":
    folder.mkdir(parents=True)
  if case == "not JSON":
    (folder / "results.json").write_text("{\"step\": 5,")
  good = _run(tmp_path, "seed0", kinds=())
  error, what = {"no folder": (FileNotFoundError, "no such run folder"),
                 "no results.json": (FileNotFoundError, "no results.json"),
                 "not JSON": (ValueError, "not valid JSON")}[case]
  with pytest.raises(error, match=what) as raised:
    report.write_report([good, str(folder)], str(tmp_path / "out"))
  assert str(folder) in str(raised.value)
  assert not (tmp_path / "out").exists()  # every run is read before anything is written
  # Through the CLI: one line on stderr, exit status 2, no traceback.
  assert evaluate.main([f"--report={good},{folder}", f"--out={tmp_path / 'out'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and str(folder) in err[0] and what in err[0]


# ----------------------------------------------------------------------------------------------
# 2. Training curves: the comparable term on linear axes, each term in its own panel.
# ----------------------------------------------------------------------------------------------
def _training_runs(root):
  """SemCLIP (total below its contrastive term), CLIP (total = contrastive), SigLIP (one term,
  `loss` only) and a one-point run, as losses.py names their metrics."""
  semclip = {"loss": [1.2, 1.0, 0.9], "contrastive_loss": [3.0, 2.5, 2.2],
             "i2t_loss": [3.1, 2.6, 2.3], "t2i_loss": [2.9, 2.4, 2.1],
             "para_loss": [0.3, 0.2, 0.2], "neg_loss": [0.4, 0.3, 0.2], "margin_loss": [0, 0, 0],
             "logit_scale": [100.0] * 3, "grad_norm": [1.0] * 3}
  clip = {"loss": [3.0, 2.6, 2.4], "contrastive_loss": [3.0, 2.6, 2.4], "i2t_loss": [3.1, 2.7, 2.5],
          "t2i_loss": [2.9, 2.5, 2.3]}
  siglip = {"loss": [12.0, 9.0, 7.0], "i2t_acc": [0.1, 0.2, 0.3]}
  return report_runs.load_runs([_run(root, "semclip", kinds=(), train=semclip),
                           _run(root, "clip", kinds=(), train=clip),
                           _run(root, "siglip", kinds=(), train=siglip),
                           _run(root, "short", kinds=(), train={"loss": [2.0],
                                                                "contrastive_loss": [2.0]}),
                           _run(root, "untrained", kinds=())])


def test_training_figure_compares_the_contrastive_term_on_linear_axes_with_ticks(tmp_path):
  fig = report.training_figure(_training_runs(tmp_path))
  (ax,) = fig.axes
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert set(lines) == {"semclip", "clip", "siglip (loss: its only term)", "short"}
  # SemCLIP's contrastive term, not its total (a weighted sum of different terms).
  assert list(lines["semclip"].get_ydata()) == [3.0, 2.5, 2.2]
  assert list(lines["siglip (loss: its only term)"].get_ydata()) == [12.0, 9.0, 7.0]
  assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "linear")
  assert len(_ticks_inside(ax.yaxis, ax.get_ylim())) >= 3
  assert ax.get_ylabel() == "contrastive_loss" and ax.get_xlabel() and ax.get_title()
  assert list(lines["short"].get_xdata()) == [1] and lines["short"].get_marker() == "o"
  assert ax.get_legend() is not None
  assert report.training_figure(report_runs.load_runs([_run(tmp_path, "none", kinds=())])) is None


def test_loss_terms_figure_draws_one_linear_panel_per_logged_term(tmp_path):
  fig = report.loss_terms_figure(_training_runs(tmp_path))
  panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_visible() and ax.axison}
  assert list(panels) == ["loss", "contrastive_loss", "i2t_loss", "t2i_loss", "para_loss",
                          "neg_loss", "margin_loss"]
  labels = lambda term: [line.get_label() for line in panels[term].get_lines()]
  assert labels("loss") == ["semclip", "clip", "siglip", "short"]
  assert labels("para_loss") == ["semclip"] and labels("contrastive_loss") == [
      "semclip", "clip", "short"]
  for ax in panels.values():
    assert ax.get_yscale() == "linear" and len(_ticks_inside(ax.yaxis, ax.get_ylim())) >= 2
    assert ax.get_legend() is not None and ax.get_title()


def test_metrics_jsonl_extra_keys_eval_lines_and_non_finite_values(tmp_path):
  lines = [{"step": 1, "loss": 2.0, "contrastive_loss": 2.5, "time": 1712.5, "steps_per_s": 3.0},
           {"step": 2, "loss": "nan", "contrastive_loss": "inf", "time": 1713.0},
           {"step": 2, "val/ccneg/accuracy": 0.6, "val/retrieval/loss": 0.1},  # an eval line
           {"step": 3, "train/loss": 1.5, "note": "text", "contrastive_loss": 2.0},
           {"step": 3, "loss": 1.4, "contrastive_loss": 1.9}]  # resumed: the step logged again
  text = "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 4, "lo'  # cut short
  curves, dropped = report_runs.read_training(_run(tmp_path, "run", kinds=(), train=text))
  assert curves == {"loss": [(1, 2.0), (3, 1.4)], "contrastive_loss": [(1, 2.5), (3, 1.9)]}
  assert dropped == 2
  assert report_runs.read_training(str(tmp_path)) == ({}, 0)  # no metrics.jsonl: no curves


# ----------------------------------------------------------------------------------------------
# 3. Bars; 4. similarity histograms; 5. margins.
# ----------------------------------------------------------------------------------------------
def test_headline_is_the_test_split_and_bars_are_labelled(tmp_path):
  assert report.HEADLINE == (
      "test/ccneg/accuracy", "test/retrieval/t2i_recall@1_original",
      "test/retrieval/t2i_recall@1_paraphrase", "test/sugarcrepe_pp/overall/itt",
      "test/sugarcrepe_pp/overall/tot", "test/zeroshot/mean/delta")
  results = {"a": {"test/ccneg/accuracy": 0.7, "val/ccneg/accuracy": 0.9},
             "b": {"test/ccneg/accuracy": 0.8125, "test/retrieval/t2i_recall@1_paraphrase": 0.2}}
  fig = report.benchmarks_figure(results)
  (ax,) = fig.axes
  assert sorted(t.get_text() for t in ax.texts if t.get_text()) == ["0.200", "0.700", "0.812"]
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      "ccneg/accuracy", "retrieval/t2i_recall@1_paraphrase"]  # validation is never a bar
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
  assert ax.get_xlabel() and ax.get_ylabel() and "test split" in ax.get_title()
  assert report.benchmarks_figure({"a": {"val/ccneg/accuracy": 0.9}}) is None


def test_similarity_histograms_are_outlines_on_shared_axes(tmp_path):
  runs = report_runs.load_runs([_run(tmp_path, "clip", seed=0), _run(tmp_path, "semclip", seed=1)])
  fig = report.similarities_figure(runs)
  axes = np.reshape(fig.axes, (2, 2))  # rows image-text, text-text; a column per run
  for ax in axes.flat:
    assert ax.patches and all(not patch.get_fill() for patch in ax.patches)  # step outlines
    colours = [patch.get_edgecolor() for patch in ax.patches]
    assert len(set(colours)) == len(colours)
    assert len(ax.get_legend().get_texts()) == len(colours)
  assert [ax.get_title() for ax in axes[0]] == ["clip (ccneg, test): image-text",
                                                "semclip (ccneg, test): image-text"]
  shared_x, shared_y = axes[0, 0].get_shared_x_axes(), axes[0, 0].get_shared_y_axes()
  assert all(shared_x.joined(axes[0, 0], ax) for ax in axes.flat)
  assert shared_y.joined(axes[0, 0], axes[0, 1]) and not shared_y.joined(axes[0, 0], axes[1, 0])


@pytest.mark.parametrize("with_new_run", [False, True])
def test_old_npz_without_text_cosines_still_renders(tmp_path, with_new_run):
  folders = [_run(tmp_path, "old", kinds=report_runs.IMAGE_TEXT)]
  if with_new_run:  # the old run's text–text panel holds a note, the new run's its histograms
    folders.append(_run(tmp_path, "new", seed=1))
  fig = report.similarities_figure(report_runs.load_runs(folders))
  assert len(fig.axes) == (4 if with_new_run else 1)
  if with_new_run:
    note = fig.axes[2]
    assert not note.patches and "predates" in note.texts[0].get_text()
  none = report_runs.load_runs([_run(tmp_path, "none", kinds=())])
  assert report.similarities_figure(none) is None


def test_margin_histogram_counts_what_ccneg_accuracy_counts(tmp_path):
  # The evaluator's own npz: the fraction of margins above 0 is its accuracy.
  rng = np.random.default_rng(4)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  folders = []
  for name in ("clip", "semclip"):
    z = {"ids": np.arange(40), **{k: unit(rng.normal(size=(40, 8)))
                                  for k in ("image", *CAPTION_KINDS)}}
    evaluator = CCNegEvaluator(None, None)
    accuracy = dict(evaluator.score(z))["accuracy"]
    folder = _run(tmp_path, name, kinds=(), results={"step": 1, "test/ccneg/accuracy": accuracy})
    np.savez(os.path.join(folder, "similarities_ccneg.npz"), **evaluator.similarities)
    folders.append(folder)
  runs = report_runs.load_runs(folders)
  fig = report.margins_figure(runs)
  (ax,) = fig.axes
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == [f"{run.label}: {run.results['test/ccneg/accuracy']:.1%} > 0 (n=40)"
                    for run in runs]
  assert all(not patch.get_fill() for patch in ax.patches)
  assert len({patch.get_edgecolor() for patch in ax.patches}) == 2
  assert any(list(line.get_xdata()) == [0, 0] for line in ax.get_lines())  # the line at 0
  assert "original" in ax.get_xlabel() and "negation" in ax.get_xlabel()
  old = report_runs.load_runs([_run(tmp_path, "old", kinds=("paraphrase",))])
  assert report.margins_figure(old) is None


def test_report_keys_are_the_evaluators_and_text_cosines_are_brute_force():
  assert set(report_runs.KINDS) == set(CAPTION_KINDS) | set(TEXT_PAIRS)
  assert set(report_runs.TEXT_TEXT) == set(TEXT_PAIRS)
  assert set(report_runs.IMAGE_TEXT) == set(CAPTION_KINDS)
  rng = np.random.default_rng(3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  z = {"ids": np.arange(9), **{k: unit(rng.normal(size=(9, 4))) for k in ("image", *CAPTION_KINDS)}}
  evaluator = CCNegEvaluator(None, None)
  dict(evaluator.score(z))  # score is a generator; similarities are set as it runs
  assert set(evaluator.similarities) == set(report_runs.KINDS)
  pairs = {"original_paraphrase": ("caption", "paraphrase"), "negation": ("image", "negation"),
           "original_negation": ("caption", "negation")}
  for key, (a, b) in pairs.items():
    for i in range(9):
      assert evaluator.similarities[key][i] == pytest.approx(float(z[a][i] @ z[b][i])), (key, i)


# ----------------------------------------------------------------------------------------------
# 6. report.md.
# ----------------------------------------------------------------------------------------------
def test_report_md_carries_metadata_metrics_and_deltas_against_the_first_run(tmp_path):
  folders = {
      "ours": _run(tmp_path, "ours", kinds=(), config=_train_config("semclip", beta=0.5),
                   results={"step": 300, "test/ccneg/accuracy": 0.8, "val/ccneg/accuracy": 0.75,
                            "test/retrieval/t2i_recall@1_original": 0.3}),
      # an exported HF folder, scored in place: its config.json describes the model
      "hf": _run(tmp_path, "ours/hf", kinds=(), config=hf.config_to_hf(get_preset("tiny")),
                 results={"step": 300, "test/ccneg/accuracy": 0.9}),
      "clip": _run(tmp_path, "eval_clip", kinds=(),  # an evaluate.py --out folder: no config
                   results={"step": 0, "test/ccneg/accuracy": 0.75, "val/ccneg/accuracy": 0.5}),
  }
  report.write_report(folders, str(tmp_path / "out"))
  text = (tmp_path / "out" / "report.md").read_text()
  no_curves = "none (no metrics.jsonl losses)"
  for row in (
      "| folder | " + " | ".join(folders.values()) + " |",
      "| config | config.json | config.json is a model config, not a training run's "
      "| no config.json (an exported model or evaluation folder) |",
      "| loss | semclip | – | – |",
      "| loss weights | α=1, β=0.5, γ=1 | – | – |",
      "| steps | total_steps 300; results at step 300 | results at step 300 | results at step 0 |",
      "| data | csv: /data/ccneg.csv | – | – |",
      "| model | preset tiny | – | – |",
      "| batch size | 64, grad_accum_steps=2 | – | – |",
      f"| training curves | {no_curves} | {no_curves} | {no_curves} |",
      "| metric | ours | hf | clip |",
      "| test/ccneg/accuracy | 0.8000 | 0.9000 | 0.7500 |",
      "| metric | hf − ours | clip − ours |",
      "| test/ccneg/accuracy | +0.1000 | -0.0500 |",
      "| val/ccneg/accuracy | – | -0.2500 |"):
    assert row + "\n" in text, row
  deltas = text[text.index("## Deltas against ours"):text.index("## Headline")]
  assert "t2i_recall" not in deltas  # only the first run has it: no delta
  assert [line for line in text.splitlines() if line.startswith("![")] == [
      "![Headline metrics](benchmarks.png)"]  # the one figure these runs have data for
  assert set(json.loads((tmp_path / "out" / "results.json").read_text())) == set(folders)
  # A config.json written with the image-margin loss names δ and m too.
  assert report_runs.loss_weights(_train_config("semclip_image_margin")["loss"]) == (
      "α=1, β=1, γ=1, δ=1 (m=0.2)")


def test_report_md_embeds_every_figure_written_by_relative_path(tmp_path):
  # One run with every input, in few panels (saving PNGs is what costs time here): an npz without
  # the text–text cosines and an objective whose only loss is its image–text term.
  run = _run(tmp_path, "run", kinds=report_runs.IMAGE_TEXT, train={"loss": [2.0, "nan", 1.5]})
  written = report.write_report([run], str(tmp_path / "out"))
  text = (tmp_path / "out" / "report.md").read_text()
  assert "| training curves | loss; 1 non-finite value(s) left out |\n" in text
  assert "## Deltas" not in text  # one run: nothing to subtract
  images = [line for line in text.splitlines() if line.startswith("![")]
  names = ["training", "loss_terms", "benchmarks", "similarities", "margins"]
  assert [line[line.index("](") + 2:-1] for line in images] == [f"{n}.png" for n in names]
  for name in names:
    assert written[name] == str(tmp_path / "out" / f"{name}.png")
    _assert_png(written[name])


# ----------------------------------------------------------------------------------------------
# 7. Runs and reports in a bucket (gs://, the GCS emulator of conftest.py).
# ----------------------------------------------------------------------------------------------
def test_runs_in_a_bucket_report_as_the_same_runs_on_disk(tmp_path, gcs_bucket):
  root = tmp_path / "runs"
  local = [_run(root, "a", config=_train_config("semclip", beta=0.5),
                train={"loss": [3.0, 2.5, "nan"], "contrastive_loss": [2.0, 1.5, 1.0]}),
           _run(root, "b", kinds=(), results={"step": 5, "test/ccneg/accuracy": 0.5})]
  storage.upload_folder(str(root), f"{gcs_bucket}/runs")
  remote = [f"{gcs_bucket}/runs/a", f"{gcs_bucket}/runs/b"]
  on_disk, in_bucket = report_runs.load_runs(local), report_runs.load_runs(remote)
  for disk, bucket in zip(on_disk, in_bucket):
    assert bucket.label == disk.label and bucket.folder in remote
    assert bucket.results == disk.results and bucket.curves == disk.curves
    assert bucket.metadata == {**disk.metadata, "folder": bucket.folder}
    assert (bucket.cosines is None) == (disk.cosines is None)
    if disk.cosines:
      assert bucket.cosines[0] == disk.cosines[0] == "ccneg"
      assert {k: v.tolist() for k, v in bucket.cosines[1].items()} == {
          k: v.tolist() for k, v in disk.cosines[1].items()}
  assert report_runs.distinct_labels([f"{gcs_bucket}/x/seed0", f"{gcs_bucket}/y/seed0"]) == [
      "x/seed0", "y/seed0"]
  # The report of the bucket's runs, written into the bucket: the local report's files.
  written = report.write_report(remote, f"{gcs_bucket}/report")
  expected = report.write_report(local, str(tmp_path / "report"))
  assert written == {k: f"{gcs_bucket}/report/{os.path.basename(v)}" for k, v in expected.items()}
  assert storage.listdir(f"{gcs_bucket}/report") == sorted(os.listdir(tmp_path / "report"))
  for name, path in expected.items():
    with open(path, "rb") as f:
      content = f.read()
    if name == "table":  # the runs' folder row names where they were read
      content = content.replace(str(root).encode(), f"{gcs_bucket}/runs".encode())
    assert storage.read_bytes(written[name]) == content, name
