"""The report's similarity histograms: text–text beside image–text, old npz files, the keys."""

import json

import numpy as np
import pytest
from PIL import Image

from semclip_jax import report
from semclip_jax.evaluators import CCNegEvaluator
from semclip_jax.evaluators.ccneg import TEXT_PAIRS
from semclip_jax.evaluators.embed import CAPTION_KINDS


def _run(tmp_path, name, kinds, seed=0):
  """A run folder as the trainer leaves it: results.json (prefixed keys) and a similarities npz."""
  run = tmp_path / name
  run.mkdir()
  (run / "results.json").write_text(json.dumps({"step": 5, "test/ccneg/accuracy": 0.75,
                                                "val/ccneg/accuracy": 0.7}))
  rng = np.random.default_rng(seed)
  np.savez(run / "similarities_ccneg.npz", **{k: rng.uniform(-1, 1, size=30) for k in kinds})
  return str(run)


def _assert_png(path):
  with Image.open(path) as image:
    image.verify()
    assert image.format == "PNG" and image.size[0] > 100


def test_similarities_draw_text_text_row_beside_image_text(tmp_path):
  # write_report over such folders, through the CLI: test_evaluators' report test
  run = _run(tmp_path, "semclip", report.KINDS)
  assert report.plot_similarities([run], str(tmp_path / "s.png")) == ("image-text", "text-text")
  _assert_png(tmp_path / "s.png")
  with Image.open(tmp_path / "s.png") as two_rows:
    assert two_rows.size[1] > two_rows.size[0]  # one run's column, two rows of panels


@pytest.mark.parametrize("with_new_run", [False, True])
def test_old_npz_without_text_cosines_still_renders(tmp_path, with_new_run):
  runs = [_run(tmp_path, "old", report.IMAGE_TEXT)]
  if with_new_run:  # the old run's text–text panel holds a note, the new run's its histograms
    runs.append(_run(tmp_path, "new", report.KINDS, seed=1))
  rows = report.plot_similarities(runs, str(tmp_path / "s.png"))
  assert rows == (("image-text", "text-text") if with_new_run else ("image-text",))
  _assert_png(tmp_path / "s.png")
  assert report.plot_similarities([str(tmp_path / "nowhere")], str(tmp_path / "n.png")) == ()


def test_report_keys_are_the_evaluators_and_text_cosines_are_brute_force():
  assert set(report.KINDS) == set(CAPTION_KINDS) | set(TEXT_PAIRS)
  assert set(report.TEXT_TEXT) == set(TEXT_PAIRS) and set(report.IMAGE_TEXT) == set(CAPTION_KINDS)
  rng = np.random.default_rng(3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  z = {"ids": np.arange(9), **{k: unit(rng.normal(size=(9, 4))) for k in ("image", *CAPTION_KINDS)}}
  evaluator = CCNegEvaluator(None, None)
  dict(evaluator.score(z))  # score is a generator; similarities are set as it runs
  assert set(evaluator.similarities) == set(report.KINDS)
  pairs = {"original_paraphrase": ("caption", "paraphrase"), "negation": ("image", "negation"),
           "original_negation": ("caption", "negation")}
  for key, (a, b) in pairs.items():
    for i in range(9):
      assert evaluator.similarities[key][i] == pytest.approx(float(z[a][i] @ z[b][i])), (key, i)


def test_headline_is_the_test_split_and_benchmarks_read_prefixed_keys(tmp_path):
  assert report.HEADLINE == (
      "test/ccneg/accuracy", "test/retrieval/t2i_recall@1_original",
      "test/retrieval/t2i_recall@1_paraphrase", "test/sugarcrepe_pp/overall/itt",
      "test/sugarcrepe_pp/overall/tot", "test/zeroshot/mean/delta")
  results = {"a": {"test/ccneg/accuracy": 0.7, "val/ccneg/accuracy": 0.9},
             "b": {"test/retrieval/t2i_recall@1_paraphrase": 0.2}}
  assert report.plot_benchmarks(results, str(tmp_path / "b.png"))
  _assert_png(tmp_path / "b.png")
  assert not report.plot_benchmarks({"a": {"val/ccneg/accuracy": 0.9}}, str(tmp_path / "v.png"))
