"""SugarCrepe++: metrics against brute force, the CSV's subset order, JSON files, missing images."""

from __future__ import annotations

import csv
import json
import pathlib
import random
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from semclip_jax import data as data_lib
from semclip_jax import storage, train
from semclip_jax.data import input_pipeline, readers, sources
from semclip_jax.evaluators import CCNegEvaluator, sugarcrepe_pp
from semclip_jax.evaluators.embed import Encoder, EvalRound, count_compilations
from semclip_jax.evaluators.sugarcrepe_pp import SugarCrepePPEvaluator
from semclip_jax.models import create_clip, get_preset
from semclip_jax.sharding import make_mesh

METRICS = ("itt", "tot", "img_p1_vs_neg", "img_p2_vs_neg", "items")
OFFICIAL_COUNTS = {"swap_obj": 245, "swap_att": 666, "replace_obj": 1652, "replace_att": 788,
                   "replace_rel": 1406}


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data_config(batch_size=64, context_length=32):
  config = input_pipeline.default_config()
  config.update(batch_size=batch_size, image_size=32, context_length=context_length,
                worker_count=0)
  return config


def _write_images(folder, names):
  """One tiny JPEG per distinct name: stand-ins for the COCO images."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in sorted(set(names)):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name)
  return folder


# ----------------------------------------------------------------------------------------------
# Metric functions.
# ----------------------------------------------------------------------------------------------
def _brute_force(zi, zp1, zp2, zn):
  """Per-item loops over scalar dot products, straight from DESIGN.md's definitions."""
  cos = lambda a, b: float(np.dot(a, b))
  n = len(zi)
  itt = [cos(zi[k], zp1[k]) > cos(zi[k], zn[k]) and cos(zi[k], zp2[k]) > cos(zi[k], zn[k])
         for k in range(n)]
  tot = [cos(zp1[k], zp2[k]) > cos(zp1[k], zn[k]) and cos(zp1[k], zp2[k]) > cos(zp2[k], zn[k])
         for k in range(n)]
  p1 = [cos(zi[k], zp1[k]) > cos(zi[k], zn[k]) for k in range(n)]
  p2 = [cos(zi[k], zp2[k]) > cos(zi[k], zn[k]) for k in range(n)]
  return {"itt": sum(itt) / n, "tot": sum(tot) / n, "img_p1_vs_neg": sum(p1) / n,
          "img_p2_vs_neg": sum(p2) / n, "items": float(n)}, np.array(itt), np.array(tot)


def test_metrics_match_brute_force_with_exact_ties():
  rng = np.random.default_rng(0)
  zi, zp1, zp2, zn = (_unit(rng.normal(size=(64, 8))) for _ in range(4))
  zn[:6] = zp1[:6]  # ITT ties cos(I,P1) = cos(I,N); TOT ties cos(P2,N) = cos(P1,P2)
  zn[6:12] = zp2[6:12]  # ITT ties cos(I,P2) = cos(I,N); TOT ties cos(P1,N) = cos(P1,P2)
  zp1[12:24], zp2[12:24], zn[12:24] = zi[12:24], zi[12:24], -zi[12:24]  # sure successes
  expected, itt, tot = _brute_force(zi, zp1, zp2, zn)
  np.testing.assert_array_equal(sugarcrepe_pp.itt_correct(zi, zp1, zp2, zn), itt)
  np.testing.assert_array_equal(sugarcrepe_pp.tot_correct(zp1, zp2, zn), tot)
  assert not itt[:12].any() and not tot[:12].any()  # every tie failed
  assert itt[12:24].all() and 0 < itt.mean() < 1 and 0 < tot.mean() < 1
  assert sugarcrepe_pp.itt_accuracy(zi, zp1, zp2, zn) == pytest.approx(expected["itt"])
  assert sugarcrepe_pp.tot_accuracy(zp1, zp2, zn) == pytest.approx(expected["tot"])
  ours = sugarcrepe_pp.triple_metrics(zi, zp1, zp2, zn)
  assert ours == pytest.approx(expected)


def test_perfect_and_constant_embeddings():
  eye = np.eye(10)
  perfect = sugarcrepe_pp.triple_metrics(eye, eye, eye, np.roll(eye, 1, axis=0))
  assert perfect["itt"] == perfect["tot"] == perfect["img_p1_vs_neg"] == 1.0
  constant = np.tile(_unit(np.ones((1, 10))), (10, 1))  # every comparison a tie
  assert sugarcrepe_pp.itt_accuracy(constant, constant, constant, constant) == 0.0
  assert sugarcrepe_pp.tot_accuracy(constant, constant, constant) == 0.0


# ----------------------------------------------------------------------------------------------
# The paper's CSV: subsets by row ranges.
# ----------------------------------------------------------------------------------------------
# First and last records of each official file (Sri-Harsha/scpp, data/*.json), as (subset, CSV
# row, caption, caption2): the evidence for `CSV_BLOCKS`, checked on the real file.
OFFICIAL_RECORDS = (
    ("replace_rel", 0, "A white with red striped bus drives down the slow lane on a freeway "
     "surrounded by several other cars.", "A white bus with red stripes drives in the slow lane "
     "on the freeway surrounded by various other cars."),
    ("replace_rel", 1405, "A group of young children sitting next to each other.",
     "A group of young children is seated adjacent to one another."),
    ("replace_obj", 1406, "Several toy animals - a bull, giraffe, deer and parakeet.",
     "There are several toy animals, including a bull, deer, giraffe, and parakeet."),
    ("replace_obj", 3057, "A woman in blue jacket holding a black bear cub.",
     "A black bear cub is being held by a female person wearing a blue jacket."),
    ("swap_obj", 3058, "A cat sits on its hind legs, and swats at the plant.",
     "The cat swats at the plant while sitting on its hind legs."),
    ("swap_obj", 3302, "The woman in the diner and the man looking into the window are making eye "
     "contact.", "The man in the window is facing the woman in the diner, and they are making eye "
     "contact."),
    ("replace_att", 3303, "A tan toilet and sink combination in a small room.",
     "A small room with a tan toilet and sink combination positioned in close proximity to one "
     "another."),
    ("replace_att", 4090, "There are two slices of pizza on a paper plate.",
     "a paper plate contains a couple of slices of pizza."),
    ("swap_att", 4091, "Blue bathroom with two white towels hanging by the shower.",
     "The bathroom is blue and has two white towels hanging by the shower."),
    ("swap_att", 4756, "people in colorful shirts are standing by some pastries.",
     "Standing near some pastries are people in colorful shirts."),
)


def test_csv_rows_are_the_official_subsets_in_order(sugarcrepe_csv):
  triples = sources.read_triples(str(sugarcrepe_csv), layout="sugarcrepe_pp")
  subsets = sugarcrepe_pp.csv_subsets(triples)
  assert {s: subsets.count(s) for s in set(subsets)} == OFFICIAL_COUNTS
  for subset, row, caption, caption2 in OFFICIAL_RECORDS:
    assert subsets[row] == subset
    assert (triples[row].caption.strip(), triples[row].paraphrase.strip()) == (caption, caption2)
  # Blocks are contiguous: exactly four subset changes along the file.
  assert sum(a != b for a, b in zip(subsets, subsets[1:])) == 4


def test_csv_in_another_order_or_length_gets_unknown_subsets(sugarcrepe_csv):
  triples = sources.read_triples(str(sugarcrepe_csv), layout="sugarcrepe_pp")
  shuffled = list(triples)
  random.Random(0).shuffle(shuffled)
  assert set(sugarcrepe_pp.csv_subsets(shuffled)) == {sugarcrepe_pp.UNKNOWN}
  assert set(sugarcrepe_pp.csv_subsets(triples[:100])) == {sugarcrepe_pp.UNKNOWN}


def test_evaluator_on_the_real_csv_reports_every_subset(sugarcrepe_csv, tmp_path):
  triples = sources.read_triples(str(sugarcrepe_csv), layout="sugarcrepe_pp")
  images = _write_images(tmp_path / "val2017", [t.image for t in triples])
  evaluator = SugarCrepePPEvaluator.from_csv(str(sugarcrepe_csv), str(images),
                                             _data_config(batch_size=256, context_length=32))
  results = dict(evaluator.run(create_clip(get_preset("tiny"))))
  for subset, count in {**OFFICIAL_COUNTS, "overall": 4757}.items():
    assert results[f"{subset}/items"] == count, subset
    for metric in METRICS[:-1]:
      assert 0.0 <= results[f"{subset}/{metric}"] <= 1.0, (subset, metric)
  assert results["overall/skipped"] == 0
  assert len(results) == 6 * len(METRICS) + 1
  # Overall is the item-weighted mean of the subsets.
  weighted = sum(results[f"{s}/itt"] * n for s, n in OFFICIAL_COUNTS.items()) / 4757
  assert results["overall/itt"] == pytest.approx(weighted)


# ----------------------------------------------------------------------------------------------
# Official JSON files, and missing images.
# ----------------------------------------------------------------------------------------------
def _write_official(folder, counts):
  """Files in the release's structure: a list of records with id, filename, caption, caption2,
  negative_caption (Sri-Harsha/scpp, data/<subset>.json)."""
  folder.mkdir(parents=True, exist_ok=True)
  names = []
  for subset, count in counts.items():
    records = [{"id": i, "filename": f"{subset}_{i % 3}.jpg", "caption": f"a {subset} photo {i}",
                "caption2": f"a photo {i} of {subset}", "negative_caption": f"no {subset} {i}"}
               for i in range(count)]
    (folder / f"{subset}.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    names += [r["filename"] for r in records]
  return names


def test_from_json_labels_items_by_file(tmp_path):
  counts = {"swap_obj": 5, "replace_att": 3, "replace_rel": 4}
  names = _write_official(tmp_path / "scpp", counts)
  images = _write_images(tmp_path / "images", names)
  evaluator = SugarCrepePPEvaluator.from_json(str(tmp_path / "scpp"), str(images),
                                              _data_config(batch_size=8, context_length=16))
  assert evaluator.subset_names() == ["swap_obj", "replace_att", "replace_rel"]
  assert {s: evaluator.subsets.count(s) for s in counts} == counts
  single = SugarCrepePPEvaluator.from_json(str(tmp_path / "scpp" / "replace_att.json"),
                                           str(images), _data_config())
  assert single.subsets == ["replace_att"] * 3
  record = evaluator.source[0]  # P1 = caption, P2 = caption2, N = negative_caption
  assert (record["caption"], record["paraphrase"], record["negation"]) == (
      "a swap_obj photo 0", "a photo 0 of swap_obj", "no swap_obj 0")
  results = dict(evaluator.run(create_clip(get_preset("tiny"))))
  assert {k: v for k, v in results.items() if k.endswith("/items")} == {
      "swap_obj/items": 5, "replace_att/items": 3, "replace_rel/items": 4, "overall/items": 12}


def test_missing_image_folder_or_file_names_where_it_looked(tmp_path):
  names = _write_official(tmp_path / "scpp", {"swap_att": 4})
  missing = tmp_path / "no_such_folder"
  with pytest.raises(FileNotFoundError, match="no_such_folder"):
    SugarCrepePPEvaluator.from_json(str(tmp_path / "scpp"), str(missing), _data_config())
  images = _write_images(tmp_path / "images", names)
  (images / "swap_att_1.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"swap_att_1\.jpg.*images"):
    SugarCrepePPEvaluator.from_json(str(tmp_path / "scpp"), str(images), _data_config())


def test_images_in_a_bucket_are_checked_there(tmp_path, gcs_bucket):
  names = _write_official(tmp_path / "scpp", {"swap_att": 4})
  triples = readers.sugarcrepe_triples([str(tmp_path / "scpp")])
  storage.upload_folder(str(_write_images(tmp_path / "images", names)), f"{gcs_bucket}/coco")
  sugarcrepe_pp.check_images(triples, f"{gcs_bucket}/coco")
  storage.remove(f"{gcs_bucket}/coco/swap_att_1.jpg")
  with pytest.raises(FileNotFoundError, match=rf"looked for {gcs_bucket}/coco/swap_att_1\.jpg"):
    sugarcrepe_pp.check_images(triples, f"{gcs_bucket}/coco")
  with pytest.raises(FileNotFoundError, match="image folder 'gs://.*/val2017' does not exist"):
    sugarcrepe_pp.check_images(triples, f"{gcs_bucket}/val2017")


def test_split_keeps_subset_labels_of_held_out_images(sugarcrepe_csv, tmp_path):
  config = _data_config()
  config.update(ratios=(0.8, 0.1, 0.1), split_seed=0)
  triples = sources.read_triples(str(sugarcrepe_csv), layout="sugarcrepe_pp")
  test = sources.select_split(triples, "test", ratios=(0.8, 0.1, 0.1), seed=0)
  _write_images(tmp_path, [t.image for t in test[:10]])  # the up-front check reads only these
  evaluator = SugarCrepePPEvaluator.from_csv(str(sugarcrepe_csv), str(tmp_path), config,
                                             split="test")
  assert [t.id for t in evaluator.source.triples] == [t.id for t in test]
  labels = dict(zip((t.id for t in triples), sugarcrepe_pp.csv_subsets(triples)))
  assert evaluator.subsets == [labels[t.id] for t in test]


# ----------------------------------------------------------------------------------------------
# The sugarcrepe_pp config's three evaluators in one round: one pass, towers compiled once.
# ----------------------------------------------------------------------------------------------
def _scpp_config_evaluators(csv_path, image_dir):
  """The evaluators `configs/sugarcrepe_pp.py` declares, on `csv_path`, as the trainer builds them."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "configs"))
  try:
    import sugarcrepe_pp as scpp_config  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  config = scpp_config.get_config()
  config.data.update(path=str(csv_path), image_dir=str(image_dir), batch_size=8, image_size=32,
                     context_length=32)
  data = train.eval_data_config(config)
  return train.build_evaluators(config, data, validation=False)[1], data  # the test round's


def test_two_rounds_embed_the_split_once_and_compile_each_tower_once_per_shape(
    sugarcrepe_csv, tmp_path, monkeypatch):
  with open(sugarcrepe_csv, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))[:300]
  small = tmp_path / "scpp.csv"
  with open(small, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  images = _write_images(tmp_path / "images", [r["filename"] for r in rows])
  evaluators, data = _scpp_config_evaluators(small, images)
  assert sorted(evaluators) == ["ccneg", "retrieval", "sugarcrepe_pp"]
  mesh = make_mesh()
  # The token lengths the split's batches are cut to: one text-tower shape each.
  source = data_lib.make_source(data, split=data.test_split)
  lengths = {b["tokens"].shape[-1] for b in input_pipeline.make_pipeline(
      source, data, train=False, process_index=0, process_count=1)}
  models = [create_clip(get_preset("tiny"), seed=seed) for seed in (0, 1)]
  expected = [{f"test/{name}/{k}": v for name, e in evaluators.items() for k, v in e.run(m, mesh)}
              for m in models]  # each evaluator alone, compiling for itself

  passes = []
  make_pipeline = input_pipeline.make_pipeline
  monkeypatch.setattr(input_pipeline, "make_pipeline",
                      lambda *a, **k: passes.append(a[0]) or make_pipeline(*a, **k))
  encoder = Encoder.of(models[0])[0]  # once per run; each round passes its parameters in
  for round_index, model in enumerate(models):
    passes.clear()
    with count_compilations() as compiled:
      round_ = EvalRound(encoder, nnx.split(model)[1:], mesh)
      results = train.evaluate_model(evaluators, round_, str(tmp_path / "work"), "test")
    assert len(passes) == 1, "ccneg, retrieval and sugarcrepe_pp share one pass over the split"
    if round_index == 0:
      assert dict(compiled) == {"jit(encode_images)": 1, "jit(encode_texts)": len(lengths)}
    else:
      assert compiled.total() == 0, f"the second round recompiled {dict(compiled)}"
    assert results == pytest.approx(expected[round_index], abs=1e-6)
  assert results["test/sugarcrepe_pp/overall/items"] == results["test/ccneg/items"] > 0
  assert results != pytest.approx(expected[0], abs=1e-6)  # the new parameters were used


def test_evaluators_on_the_same_items_share_a_pass(sugarcrepe_csv, tmp_path):
  triples = sources.read_triples(str(sugarcrepe_csv), layout="sugarcrepe_pp")[:40]
  images = _write_images(tmp_path / "images", [t.image for t in triples])
  config = _data_config(batch_size=16)
  scpp = SugarCrepePPEvaluator(sources.TripleFileSource(triples, str(images)),
                               [sugarcrepe_pp.UNKNOWN] * 40, config)
  ccneg = CCNegEvaluator(sources.TripleFileSource(list(triples), str(images)), config)  # apart
  other = CCNegEvaluator(sources.TripleFileSource(triples[:20], str(images)), config)
  round_ = EvalRound.of_model(create_clip(get_preset("tiny")))
  for evaluator in (scpp, ccneg):
    list(evaluator.evaluate(round_))
  assert round_.passes == 1
  list(other.evaluate(round_))  # other items: their own pass
  assert round_.passes == 2
  list(CCNegEvaluator(other.source, _data_config(batch_size=8)).evaluate(round_))
  assert round_.passes == 3  # other pipeline settings: their own pass
  shared = round_.triples(ccneg.source, config)
  with pytest.raises(ValueError, match="read-only"):
    shared["image"][0, 0] = 0.0  # handed to several evaluators: none may change it
