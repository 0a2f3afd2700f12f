"""NegBench evaluators: metrics against brute force, NegBench's CSV formats and their errors, image
paths against image_root, and one run of each evaluator on the tiny model. Kept cheap: one tiny
model round for the whole file, 32x32 images, a handful of rows."""

import csv
import os
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from semclip_jax import storage
from semclip_jax.data import input_pipeline
from semclip_jax.evaluators import (EVALUATORS, make_evaluator, missing_data, negbench,
                                    reads_own_data)
from semclip_jax.evaluators.embed import EvalRound
from semclip_jax.models import create_clip, get_preset

# Where NegBench's released files say the images are: not on this machine.
FOREIGN = "/data/healthy-ml/scratch/negbench/data/coco/val2017"
COLORS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200))
OBJECTS = (("dog", "cat", "car"), ("tree", "bench", "kite"), ("cup", "fork", "bowl"),
           ("boat", "bird", "sky"), ("bus", "sign", "road"))


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data_config():
  config = input_pipeline.default_config()
  config.update(batch_size=8, image_size=32, context_length=32, worker_count=0)
  return config


def _write_csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:  # as pandas' to_csv quotes
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _images(root, count=len(COLORS)):
  """count tiny images under root/val2017 (and one in a subfolder); their paths as NegBench's
  files give them, under FOREIGN."""
  names = [f"{i:012d}.png" if i else f"sub/{i:012d}.png" for i in range(count)]
  for name, color in zip(names, COLORS):
    os.makedirs(os.path.dirname(root / "val2017" / name), exist_ok=True)
    Image.new("RGB", (32, 24), color).save(root / "val2017" / name)
  return [f"{FOREIGN}/{name}" for name in names]


def _mcq_rows(paths, templates=("positive", "negative", "hybrid")):
  """create_mcq.py's rows: the true caption first, then its three wrong ones in fixed order."""
  rows = []
  for path, (a, b, n) in zip(paths, OBJECTS):
    for template in templates:
      right = {"positive": f"This image features {a} and {b}",
               "negative": f"This image does not feature {n}",
               "hybrid": f"This image features {b}, but not {n}"}[template]
      rows.append([0, right, f"This image features {n}, but not {b}",
                   f"This image features {n}", f"This image does not feature {a}",
                   template, path])
  return rows


MCQ_HEADER = ["correct_answer", "caption_0", "caption_1", "caption_2", "caption_3",
              "correct_answer_template", "image_path"]


@pytest.fixture(name="round_", scope="module")
def fixture_round():
  """One tiny-model round for the file: both evaluators share its compiled towers."""
  return EvalRound.of_model(create_clip(get_preset("tiny"), seed=0))


# ----------------------------------------------------------------------------------------------
# Metrics against brute force.
# ----------------------------------------------------------------------------------------------
def _mcq_reference(images, options, correct, templates, option_types):
  """mcq.py's counting with loops, ties failing, the first best other option as the choice."""
  n, k = options.shape[:2]
  right, chosen = [], []
  for row in range(n):
    s = [float(np.dot(images[row], options[row, j])) for j in range(k)]
    others = [j for j in range(k) if j != correct[row]]
    best = max(s[j] for j in others)
    right.append(s[correct[row]] > best)
    chosen.append(min(j for j in others if s[j] == best))
  out = {"accuracy": sum(right) / n, "items": float(n)}
  wrong = [r for r in range(n) if not right[r]]
  share = lambda hits, total: hits / total if total else None  # a share of nothing: left out
  for t in ("positive", "negative", "hybrid"):
    rows = [r for r in range(n) if templates[r] == t]
    out[f"accuracy/{t}"] = share(sum(right[r] for r in rows), len(rows))
    out[f"items/{t}"] = float(len(rows))
  for j in range(k):
    out[f"wrong_choice/option_{j}"] = share(sum(chosen[r] == j for r in wrong), len(wrong))
  for kind in ("positive", "hybrid", "negative"):
    out[f"wrong_choice/{kind}"] = share(sum(option_types[chosen[r]] == kind for r in wrong),
                                        len(wrong))
    for t in ("positive", "negative", "hybrid"):
      of_t = [r for r in wrong if templates[r] == t]
      out[f"wrong_choice/{t}/{kind}"] = share(sum(option_types[chosen[r]] == kind for r in of_t),
                                              len(of_t))
  return {key: value for key, value in out.items() if value is not None}


def test_mcq_metrics_match_brute_force_with_ties():
  rng = np.random.default_rng(0)
  n, k, d = 60, 4, 8
  images, options = _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, k, d)))
  correct = rng.integers(0, k, n)
  options[:10, :] = options[:10, :1]  # all options equal: ties, failures
  options[10:20] = images[10:20, None]  # every option the image: ties again
  options[np.arange(20, 30), np.arange(20, 30) % k] = images[20:30]  # one option the image
  correct[20:30] = np.arange(20, 30) % k  # ... the true one: right
  templates = rng.choice(["positive", "negative", "hybrid"], n).tolist()
  option_types = negbench.OPTION_TYPES["negbench_synthetic"]
  ours = negbench.mcq_metrics(negbench.mcq_scores(images, options), correct, templates,
                              option_types)
  expected = _mcq_reference(images, options, correct, templates, option_types)
  assert set(ours) == set(expected)
  for key, value in expected.items():
    assert ours[key] == pytest.approx(value), key
  # "hybrid" is two positions here: its share sums both (mcq.py's dict keeps only the last's).
  assert ours["wrong_choice/hybrid"] == pytest.approx(
      ours["wrong_choice/option_1"] + ours["wrong_choice/option_2"])


def test_mcq_perfect_and_constant_embeddings():
  rng = np.random.default_rng(1)
  images = _unit(rng.normal(size=(12, 16)))
  options = _unit(rng.normal(size=(12, 4, 16)))
  options[:, 0] = images  # the true option is the image itself
  correct = np.zeros(12, int)
  perfect = negbench.mcq_metrics(negbench.mcq_scores(images, options), correct,
                                 ["negative"] * 12, negbench.OPTION_TYPES["negbench"])
  assert perfect["accuracy"] == perfect["accuracy/negative"] == 1.0
  assert perfect["items/positive"] == 0 and "accuracy/positive" not in perfect  # no such question
  assert "wrong_choice/hybrid" not in perfect  # no wrong answer to share out
  constant = np.ones((12, 4, 16)) / 4.0
  scores = negbench.mcq_scores(np.ones((12, 16)) / 4.0, constant)
  tied = negbench.mcq_metrics(scores, correct, None, negbench.OPTION_TYPES["negbench"])
  assert tied["accuracy"] == 0.0 and "accuracy/negative" not in tied
  assert tied["wrong_choice/option_1"] == tied["wrong_choice/hybrid"] == 1.0  # first other


def _recall_reference(queries, query_labels, keys, key_labels, k):
  hits = 0
  for q, label in zip(queries, query_labels):
    scores = [float(np.dot(q, key)) for key in keys]
    matches = [s for s, l in zip(scores, key_labels) if l == label]
    if matches:
      rank = sum(s >= max(matches) for s, l in zip(scores, key_labels) if l != label)
      hits += rank < k
  return hits / len(queries)


def test_retrieval_metrics_match_brute_force():
  rng = np.random.default_rng(2)
  images = _unit(rng.normal(size=(7, 8)))
  text_image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 1, 3, 0, 5])
  texts = _unit(images[text_image] + 0.9 * rng.normal(size=(15, 8)))
  texts[3] = images[4]  # an exact tie with a distractor image
  ours = negbench.retrieval_metrics(images, texts, text_image, (1, 2, 5))
  ids = np.arange(7)
  for k in (1, 2, 5):
    assert ours[f"t2i_recall@{k}"] == pytest.approx(
        _recall_reference(texts, text_image, images, ids, k))
    assert ours[f"i2t_recall@{k}"] == pytest.approx(
        _recall_reference(images, ids, texts, text_image, k))
  assert ours["images"] == 7 and ours["texts"] == 15
  perfect = negbench.retrieval_metrics(images, images[text_image], text_image, (1,))
  assert perfect["t2i_recall@1"] == perfect["i2t_recall@1"] == 1.0
  constant = np.tile(np.eye(8)[:1], (15, 1))  # exact ties, whatever order BLAS sums in
  tied = negbench.retrieval_metrics(constant[:7], constant, text_image, (1, 5))
  assert tied["t2i_recall@5"] == tied["i2t_recall@5"] == 0.0


# ----------------------------------------------------------------------------------------------
# Files: formats, image paths, errors.
# ----------------------------------------------------------------------------------------------
def test_image_paths_resolve_under_image_root(tmp_path):
  paths = _images(tmp_path, 2)
  local = str(tmp_path / "val2017" / "000000000001.png")
  root = str(tmp_path / "val2017")
  resolved = negbench.resolve_image_paths("f.csv", [2, 3, 4, 5],
                                          [paths[0], paths[1], "000000000001.png", local], root)
  # The foreign prefix common to all absolute rows (FOREIGN) is replaced, sub-folders kept; a
  # relative path is joined to the root; an absolute path that exists is kept.
  assert resolved == [os.path.join(root, "sub", "000000000000.png"), local, local, local]
  for escape in ("../outside.png", f"{FOREIGN}/../../../../../../outside/x.png"):
    with pytest.raises(ValueError, match=r"f\.csv: row 3: image path .*leads out of image_root"):
      negbench.resolve_image_paths("f.csv", [2, 3], [paths[1], escape], root)


def test_read_mcq_and_its_errors(tmp_path):
  paths = _images(tmp_path)
  rows = _mcq_rows(paths)
  good = _write_csv(tmp_path / "mcq.csv", MCQ_HEADER, rows)
  items = negbench.read_mcq(good, str(tmp_path / "val2017"))
  assert len(items.rows) == len(rows) and items.rows[0] == 2  # the header is row 1
  assert items.options[0][2] == "This image features car" and items.templates[1] == "negative"
  assert items.images[0] == str(tmp_path / "val2017" / "sub" / "000000000000.png")
  assert negbench.resolve_option_types(negbench.AUTO, items) == negbench.OPTION_TYPES["negbench"]

  def fails(name, header, bad_rows, error, match):
    with pytest.raises(error, match=match):
      negbench.read_mcq(_write_csv(tmp_path / name, header, bad_rows), str(tmp_path / "val2017"))

  fails("empty.csv", [], [], ValueError, r"empty\.csv is empty")
  fails("no_rows.csv", MCQ_HEADER, [], ValueError, "has a header but no rows")
  fails("no_answer.csv", MCQ_HEADER[1:], [r[1:] for r in rows], ValueError,
        r"no_answer\.csv: required column 'correct_answer' is missing")
  fails("gap.csv", [c.replace("caption_2", "caption_7") for c in MCQ_HEADER], rows, ValueError,
        r"gap\.csv: MCQ options must be columns caption_0 \.\.\. caption_<K-1>")
  fails("range.csv", MCQ_HEADER, rows[:2] + [[4, *rows[2][1:]]], ValueError,
        r"range\.csv: row 4: field 'correct_answer' is '4'; it must be an option index 0\.\.3")
  fails("blank.csv", MCQ_HEADER, rows[:1] + [[0, "", *rows[1][2:]]], ValueError,
        r"blank\.csv: row 3: field 'caption_0' is empty")
  os.remove(tmp_path / "val2017" / "000000000002.png")
  gone = f"{FOREIGN}/000000000002.png"
  first = 2 + next(i for i, r in enumerate(rows) if r[-1] == gone)
  count = sum(r[-1] == gone for r in rows)
  fails("missing.csv", MCQ_HEADER, rows, FileNotFoundError,
        rf"missing\.csv: row {first}: image '{gone}' not found .*000000000002\.png\); {count} of "
        rf"{len(rows)} rows \(1 distinct files\) name missing images")


def test_csv_and_images_in_a_bucket(tmp_path, gcs_bucket):
  paths = _images(tmp_path, 3)
  root = f"{gcs_bucket}/coco/val2017"
  storage.upload_folder(str(tmp_path / "val2017"), root)
  rows = _mcq_rows(paths[:2]) + [_mcq_rows([f"{root}/000000000002.png"])[0]]  # a gs:// row too
  storage.upload(_write_csv(tmp_path / "mcq.csv", MCQ_HEADER, rows), f"{gcs_bucket}/mcq.csv")
  items = negbench.read_mcq(f"{gcs_bucket}/mcq.csv", root)
  assert items.images[::3] == [f"{root}/sub/000000000000.png", f"{root}/000000000001.png",
                               f"{root}/000000000002.png"]
  local = negbench.read_mcq(_write_csv(tmp_path / "local.csv", MCQ_HEADER, rows[:-1]),
                            str(tmp_path / "val2017"))
  assert local.options == items.options[:-1]
  files = negbench._ImageFiles([items.images[0], local.images[0]])  # pylint: disable=protected-access
  np.testing.assert_array_equal(files[0]["image"], files[1]["image"])
  storage.remove(f"{root}/000000000001.png")
  with pytest.raises(FileNotFoundError, match=rf"looked for {root}/000000000001\.png\); 3 of 7"):
    negbench.read_mcq(f"{gcs_bucket}/mcq.csv", root)
  with pytest.raises(ValueError, match="leads out of image_root"):
    negbench.resolve_image_paths("f.csv", [2], ["../../x.png"], root)


def test_read_retrieval_and_its_errors(tmp_path):
  paths = _images(tmp_path, 3)
  header = ["image_id", "captions", "filepath"]
  rows = [[i, repr([f"a photo of a {o}" for o in OBJECTS[i]]), p] for i, p in enumerate(paths)]
  items = negbench.read_retrieval(_write_csv(tmp_path / "r.csv", header, rows),
                                  str(tmp_path / "val2017"))
  assert items.captions[2] == ["a photo of a cup", "a photo of a fork", "a photo of a bowl"]
  beside = _write_csv(tmp_path / "val2017" / "rel.csv", header, [[1, "['a cup']", paths[1][-16:]]])
  assert negbench.read_retrieval(beside).images == [str(tmp_path / "val2017" / paths[1][-16:])]

  def fails(bad, match):
    path = _write_csv(tmp_path / "bad.csv", header, rows[:1] + [[1, bad, paths[1]]])
    with pytest.raises(ValueError, match=match):
      negbench.read_retrieval(path, str(tmp_path / "val2017"))

  fails("['a dog', 'a cat'", r"bad\.csv: row 3: field 'captions' is not a Python list literal")
  fails("__import__('os').system('false')", "is not a Python list literal")  # never run
  fails("'a dog'", r"bad\.csv: row 3: field 'captions' must be a list of strings")
  fails("['a dog', 3]", "must be a list of strings")
  fails("['a dog', ' ']", "holds an empty caption")
  no_captions = _write_csv(tmp_path / "nc.csv", ["filepath"], [[p] for p in paths])
  with pytest.raises(ValueError, match=r"nc\.csv: required column 'captions' is missing"):
    negbench.read_retrieval(no_captions, str(tmp_path / "val2017"))


def test_config_registration_and_missing_path(tmp_path):
  config = ml_collections.ConfigDict({"type": "negbench_mcq", "path": "", "image_root": ""})
  assert reads_own_data(config)
  assert missing_data("nb", config, _data_config()) == "config.evals.nb.path"
  assert EVALUATORS["negbench_retrieval"] is negbench.NegBenchRetrievalEvaluator
  paths = _images(tmp_path, 2)
  path = _write_csv(tmp_path / "m.csv", MCQ_HEADER, _mcq_rows(paths)[:2])
  typo = ml_collections.ConfigDict({"type": "negbench_mcq", "path": path, "image_dir": "x"})
  with pytest.raises(ValueError, match=r"unknown config fields \['image_dir'\]"):
    make_evaluator(typo, _data_config())


# ----------------------------------------------------------------------------------------------
# End to end.
# ----------------------------------------------------------------------------------------------
def _fake_embeddings(monkeypatch, image_vectors, text_vectors):
  """Replaces the towers by lookups: path -> vector, text -> vector (the evaluator's grouping,
  indexing and scoring still run)."""
  monkeypatch.setattr(negbench, "embed_image_files",
                      lambda _, paths, __: np.stack([image_vectors[p] for p in paths]))
  monkeypatch.setattr(negbench, "embed_texts",
                      lambda _, texts, __: np.stack([text_vectors[t] for t in texts]))


def test_mcq_scores_each_row_against_its_own_image(tmp_path, monkeypatch):
  paths = _images(tmp_path)
  rows = _mcq_rows(paths)
  evaluator = negbench.NegBenchMCQEvaluator(
      _write_csv(tmp_path / "mcq.csv", MCQ_HEADER, rows), _data_config(),
      image_root=str(tmp_path / "val2017"))
  rng = np.random.default_rng(3)
  images = {p: v for p, v in zip(evaluator.items.images, _unit(rng.normal(size=(len(rows), 16))))}
  texts = {c: _unit(rng.normal(size=16)) for r in rows for c in r[1:5]}
  for image, options in zip(evaluator.items.images, evaluator.items.options):
    texts[options[0]] = images[image]  # each true caption is its image: perfect
  _fake_embeddings(monkeypatch, images, texts)
  no_device = types.SimpleNamespace(mesh=None)  # the towers are replaced: no round needed
  perfect = dict(evaluator.evaluate(no_device))
  assert perfect["accuracy"] == perfect["accuracy/hybrid"] == 1.0
  assert perfect["items"] == len(rows)
  for image, options in zip(evaluator.items.images, evaluator.items.options):
    texts[options[0]] = -images[image]
    texts[options[2]] = images[image]  # "features N": the affirmation of the absent object
  wrong = dict(evaluator.evaluate(no_device))
  assert wrong["accuracy"] == 0.0
  assert wrong["wrong_choice/positive"] == wrong["wrong_choice/negative/positive"] == 1.0


def test_evaluators_run_on_the_tiny_model(tmp_path, round_):
  paths = _images(tmp_path)
  root = str(tmp_path / "val2017")
  rows = _mcq_rows(paths)
  mcq = make_evaluator(ml_collections.ConfigDict(
      {"type": "negbench_mcq", "path": _write_csv(tmp_path / "mcq.csv", MCQ_HEADER, rows),
       "image_root": root}), _data_config())
  results = dict(mcq.evaluate(round_))
  assert results["items"] == len(rows)
  assert sum(results[f"items/{t}"] for t in ("positive", "negative", "hybrid")) == len(rows)
  assert 0.0 <= results["accuracy"] <= 1.0
  shares = [results[f"wrong_choice/{t}"] for t in ("hybrid", "positive", "negative")]
  assert results["accuracy"] == 1.0 or sum(shares) == pytest.approx(1.0)

  header = ["image_id", "captions", "filepath"]
  # Row 5 repeats image 0: one gallery image with both rows' captions.
  captions = [[f"a photo of a {o}" for o in OBJECTS[i % 5]] for i in range(6)]
  plain = [[i, repr(c), paths[i % 5]] for i, c in enumerate(captions)]
  negated = [[i, repr([f"a photo of a {o[0]} and no {o[2]}" for o in [OBJECTS[i]]]), p]
             for i, p in enumerate(paths[:4])]
  retrieval = make_evaluator(ml_collections.ConfigDict(
      {"type": "negbench_retrieval", "path": _write_csv(tmp_path / "r.csv", header, plain),
       "negated_path": _write_csv(tmp_path / "n.csv", header, negated), "image_root": root}),
      _data_config())
  results = dict(retrieval.evaluate(round_))
  assert results["images"] == 5 and results["texts"] == 18
  assert results["negated/images"] == 4 and results["negated/texts"] == 4
  assert results["t2i_recall@10"] == results["negated/i2t_recall@5"] == 1.0  # k >= gallery
  for key in ("t2i_recall@1", "i2t_recall@1", "negated/t2i_recall@1", "negated/i2t_recall@1"):
    assert 0.0 <= results[key] <= 1.0

  broken = tmp_path / "val2017" / "broken.png"
  broken.write_bytes(b"not an image")
  with pytest.raises(ValueError, match=f"cannot read NegBench image {broken}"):
    negbench.embed_image_files(round_, [str(broken)], _data_config())


def test_image_files_are_read_only_when_regular_and_of_bounded_size(tmp_path):
  """A FIFO named as an image would block the reader forever, and a huge header would allocate
  before decoding: each is one error naming the file, raised before any pixel is read."""
  fifo, huge, fine = tmp_path / "fifo.png", tmp_path / "huge.png", tmp_path / "fine.png"
  os.mkfifo(fifo)
  Image.new("L", (3000, 2000)).save(huge)  # 6 M pixels in a few KB
  Image.new("RGB", (40, 30), (200, 10, 10)).save(fine)
  files = negbench._ImageFiles([str(fifo), str(huge), str(fine)], max_image_pixels=1_000_000)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"cannot read NegBench image .*fifo\.png: "
                     r"NotRegularFileError"):
    files[0]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match=r"huge\.png: ImageTooLargeError: 3000 x 2000"):
    files[1]  # pylint: disable=pointless-statement
  assert files[2]["image"].shape == (30, 40, 3)
