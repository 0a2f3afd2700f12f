"""Evaluation: metrics against brute force, padding of the last batch, HF parity, the report, the CLI."""

import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from semclip_jax import data as data_lib
from semclip_jax import evaluate, hf, report, report_runs
from semclip_jax.bench import __main__ as bench_main
from semclip_jax.bench import evaluation
from semclip_jax.data import input_pipeline, transforms
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.evaluators import CCNegEvaluator, RetrievalEvaluator, make_evaluator, metrics
from semclip_jax.evaluators.embed import MIN_EVAL_ITEMS, Encoder, EvalRound
from semclip_jax.models import create_clip, get_preset


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_ccneg_accuracy_brute_force_with_ties():
  rng = np.random.default_rng(0)
  zi, zt, zn = (_unit(rng.normal(size=(37, 8))) for _ in range(3))
  zn[:5] = zt[:5]  # exact ties: failures
  expected = sum(float(zi[i] @ zt[i]) > float(zi[i] @ zn[i]) for i in range(37)) / 37
  assert metrics.ccneg_accuracy(zi, zt, zn) == pytest.approx(expected)
  assert metrics.scaled_accuracy(0.75) == pytest.approx(0.5) and metrics.scaled_accuracy(0.4) == 0.0


def test_perfect_and_constant_embeddings():
  eye = np.eye(10)
  assert metrics.ccneg_accuracy(eye, eye, -eye) == 1.0
  constant = np.tile(_unit(np.ones((1, 10))), (10, 1))
  assert metrics.ccneg_accuracy(constant, constant, constant) == 0.0  # all ties


def _data_config(batch_size=16):
  config = input_pipeline.default_config()
  config.update(batch_size=batch_size, image_size=32, context_length=32, worker_count=0)
  return config


def test_last_partial_batch_is_counted_once(capsys):
  source = ShapesSource(split="test", size=37, image_size=40)
  round_ = EvalRound.of_model(create_clip(get_preset("tiny")))
  z = round_.triples(source, _data_config(16), "ccneg (test)")
  assert len(z["ids"]) == len(set(z["ids"])) == 37 and z["image"].shape == (37, 32)
  np.testing.assert_allclose(np.linalg.norm(z["negation"], axis=-1), 1.0, atol=1e-5)
  # A short pass reports once, at its end, off a terminal; a shared pass does not report again.
  round_.triples(source, _data_config(16), "retrieval (test)")
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("eval ccneg (test): 37/37 items (100.0%) | ") and "items/s" in line


def test_a_tiny_split_is_warned_about_once_when_built(caplog):
  data = data_lib.default_config()
  data.update(kind="shapes", shapes_eval_size=1)
  with caplog.at_level(logging.WARNING):
    evaluator = make_evaluator(ml_collections.ConfigDict({"type": "retrieval"}), data, "val",
                               name="retrieval")
  assert evaluator.label == "retrieval (val)" and evaluator.size() == 1
  assert [r.getMessage() for r in caplog.records] == [
      f"evals.retrieval (val) has 1 item(s), fewer than MIN_EVAL_ITEMS={MIN_EVAL_ITEMS}: its "
      "metrics mean little (one item scores 0 or 1; recall@k is 1 once k reaches the gallery)"]
  caplog.clear()
  data.shapes_eval_size = MIN_EVAL_ITEMS
  with caplog.at_level(logging.WARNING):
    assert make_evaluator(ml_collections.ConfigDict({"type": "ccneg"}), data, "test").label == (
        "ccneg (test)")
  assert not caplog.records


def _with_nan_image_projection(params):
  """`Encoder.of`'s parameters with one NaN in the image projection: finite weights pass the
  loaders' check, and this stands for a forward pass that overflows. Every image embedding is then
  NaN; the texts stay finite."""
  (state,) = params
  state = jax.tree.map(lambda x: x, state)  # a copy: the healthy round keeps its parameters
  kernel = state["vision"]["proj"]["kernel"]
  kernel[...] = kernel[...].at[0, 0].set(jnp.nan)
  return (state,)


def test_non_finite_embeddings_give_nan_metrics_and_one_warning_per_evaluator(caplog):
  source = ShapesSource(split="test", size=12, image_size=40)
  encoder, params = Encoder.of(create_clip(get_preset("tiny")))  # one compilation for both rounds
  evaluators = {"ccneg": CCNegEvaluator(source, _data_config()),
                "retrieval": RetrievalEvaluator(source, _data_config())}  # shares ccneg's pass
  for name, evaluator in evaluators.items():
    evaluator.label = f"{name} (test)"
  round_ = EvalRound(encoder, params)
  with caplog.at_level(logging.WARNING):
    healthy = {name: dict(e.evaluate(round_)) for name, e in evaluators.items()}
  assert not caplog.records
  assert healthy["ccneg"]["items"] == 12 and all(np.isfinite(v) for m in healthy.values()
                                                 for v in m.values())
  round_ = EvalRound(encoder, _with_nan_image_projection(params))
  with caplog.at_level(logging.WARNING):
    broken = {name: dict(e.evaluate(round_)) for name, e in evaluators.items()}
  assert round_.passes == 1
  # Every metric NaN (accuracy would be 0: comparisons with NaN are false), same names as healthy.
  for name, results in broken.items():
    assert results.keys() == healthy[name].keys() and all(np.isnan(list(results.values()))), name
  # 12 image embeddings NaN of 12 images and 3 x 12 captions, named per evaluator.
  assert [r.getMessage() for r in caplog.records] == [
      f"evals.{name} (test): 12 of 48 embeddings hold NaN or Inf: its metrics are reported as NaN"
      for name in evaluators]


def test_exported_folder_scores_the_same_as_transformers(tmp_path):
  source = ShapesSource(split="test", size=40, image_size=40)
  model = create_clip(get_preset("tiny"), seed=4)
  folder = hf.save_hf_clip(model, str(tmp_path / "hf"))
  ours = dict(CCNegEvaluator(source, _data_config()).run(hf.load_hf_clip(folder)))

  torch_model = transformers.CLIPModel.from_pretrained(folder).eval()
  pipeline = input_pipeline.make_pipeline(source, _data_config(), train=False, process_index=0,
                                          process_count=1)
  correct = total = 0
  with torch.no_grad():
    for batch in pipeline:
      pixels = torch.from_numpy(transforms.normalize(batch["image"])).permute(0, 3, 1, 2)
      tokens = torch.from_numpy(batch["tokens"]).long()
      zi = torch.nn.functional.normalize(torch_model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
      zt, zn = (torch.nn.functional.normalize(torch_model.get_text_features(
          input_ids=tokens[:, k]).pooler_output, dim=-1) for k in (0, 2))
      correct += int(((zi * zt).sum(-1) > (zi * zn).sum(-1)).sum())
      total += len(batch["id"])
  assert total == 40 and ours["items"] == 40
  assert ours["accuracy"] == correct / total

  # The CLI on the same folder (the default shapes evaluation set: 512 scenes drawn at 64 px).
  assert evaluate.main([f"--model={folder}", "--tasks=ccneg", "--data_kind=shapes",
                        "--batch_size=128", f"--out={tmp_path / 'eval'}"]) == 0
  written = json.loads((tmp_path / "eval" / "results.json").read_text())
  config = data_lib.default_config()
  config.update(batch_size=128, image_size=32, worker_count=0)
  expected = dict(CCNegEvaluator(ShapesSource(split="test", size=512, image_size=64), config).run(model))
  assert written["test/ccneg/items"] == 512 and written["test/ccneg/accuracy"] == expected["accuracy"]


def test_report_writes_table_and_valid_pngs(tmp_path):
  rng = np.random.default_rng(2)
  runs = []
  for name, accuracy in (("clip", 0.7), ("semclip", 0.8)):
    run = tmp_path / name
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "step": 10, "test/ccneg/accuracy": accuracy, "val/ccneg/accuracy": accuracy - 0.1,
        "test/retrieval/t2i_recall@1_original": 0.3}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 2.0 / s})
                                                 for s in range(1, 11)))
    np.savez(run / "similarities_ccneg.npz", **{k: rng.normal(size=50) for k in report_runs.KINDS})
    runs.append(str(run))
  assert evaluate.main([f"--report={','.join(runs)}", f"--out={tmp_path / 'report'}"]) == 0
  table = (tmp_path / "report" / "report.md").read_text()
  assert "| metric | clip | semclip |" in table
  assert "| test/ccneg/accuracy | 0.7000 | 0.8000 |" in table
  assert "| val/ccneg/accuracy | 0.6000 | 0.7000 |" in table
  for name in ("similarities", "benchmarks", "training"):
    with Image.open(tmp_path / "report" / f"{name}.png") as image:
      image.verify()
      assert image.size[0] > 100
  combined = json.loads((tmp_path / "report" / "results.json").read_text())
  assert set(combined) == {"clip", "semclip"}
  with pytest.raises(FileNotFoundError, match="no results"):
    report.write_report([str(tmp_path / "nowhere")], str(tmp_path / "r2"))


def test_eval_benchmark_two_rounds_one_pass_each_no_recompile(capsys):
  records = evaluation.measure(bench_main.make_parser().parse_args(
      ["--eval_split=all", "--eval_max_rows=40", "--eval_batch_size=16"]))
  assert [r["round"] for r in records] == [1, 2]
  assert all(r["what"] == "eval" and r["items"] == 40 and r["items_scored"] == 120
             and r["passes"] == 1 for r in records)
  assert records[0]["compilations"] >= 2 and records[1]["compilations"] == 0
  evaluation.print_table(records + [{"what": "step"}])  # other modes' records are skipped
  assert capsys.readouterr().out.count("eval   round") == 2
