"""Retrieval metrics: by image identity (against brute force and LAION's CLIP_benchmark), the
official SemCLIP code's per-row protocol, and the evaluators' `score` on hand-built embeddings."""

import hashlib
import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from semclip_jax.evaluators import EVALUATORS, metrics
from semclip_jax.evaluators.official import OfficialEvaluator
from semclip_jax.evaluators.retrieval import RetrievalEvaluator

KS = (1, 3, 5, 10)
# LAION CLIP_benchmark 1.6.2's clip_benchmark/metrics/zeroshot_retrieval.py, byte for byte (its
# wheel's RECORD hash): the package itself needs torchvision, which no release of imports beside
# the CPU torch we pin (tests/oracles/NOTICE.md).
CLIP_BENCHMARK = pathlib.Path(__file__).parent / "oracles" / "clip_benchmark_zeroshot_retrieval.py"
CLIP_BENCHMARK_SHA256 = "2c10f43e73a4ab31c0cf3c7a99a2da4652c05a52f210689c2ad1d4133aacfc04"


def _clip_benchmark():
  assert hashlib.sha256(CLIP_BENCHMARK.read_bytes()).hexdigest() == CLIP_BENCHMARK_SHA256
  spec = importlib.util.spec_from_file_location("clip_benchmark_zeroshot_retrieval", CLIP_BENCHMARK)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _text_image(rng, images, texts):
  """[texts] image indices, every one of `images` having at least one text, in shuffled order."""
  extra = rng.integers(0, images, texts - images)
  return rng.permutation(np.concatenate([np.arange(images), extra]))


def _brute_rows(queries, keys, k):
  """Per-row recall@k: query i's only match is key i; ties fail."""
  hits = 0
  for i in range(len(queries)):
    scores = [float(queries[i] @ keys[j]) for j in range(len(keys))]
    hits += sum(1 for j in range(len(keys)) if j != i and scores[j] >= scores[i]) < k
  return hits / len(queries)


def _brute_by_image(images, texts, text_image, k):
  """(t2i, i2t) recall@k by image identity; ties fail."""
  t2i = 0
  for t in range(len(texts)):
    scores = [float(texts[t] @ images[m]) for m in range(len(images))]
    own = scores[text_image[t]]
    t2i += sum(1 for m in range(len(images)) if m != text_image[t] and scores[m] >= own) < k
  i2t = 0
  for m in range(len(images)):
    scores = [float(images[m] @ texts[t]) for t in range(len(texts))]
    best = max(scores[t] for t in range(len(texts)) if text_image[t] == m)
    i2t += sum(1 for t in range(len(texts)) if text_image[t] != m and scores[t] >= best) < k
  return t2i / len(texts), i2t / len(images)


def test_perfect_embeddings_with_repeated_images_score_one_by_image_not_by_row():
  rng = np.random.default_rng(0)
  text_image = _text_image(rng, 7, 19)
  images = np.eye(7, 9)  # orthonormal
  texts = images[text_image]  # each caption equal to its image
  assert metrics.image_retrieval(images, texts, text_image, KS, chunk=4) == {
      "t2i": {k: 1.0 for k in KS}, "i2t": {k: 1.0 for k in KS}}

  rows = images[text_image]  # the per-row protocol's image i: row i's, repeats included
  t2i, i2t = metrics.row_retrieval(texts, rows, KS, chunk=4), metrics.row_retrieval(rows, texts, KS)
  for k in KS:
    assert t2i[k] == pytest.approx(_brute_rows(texts, rows, k)), k
    assert i2t[k] == pytest.approx(_brute_rows(rows, texts, k)), k
  assert t2i[1] < 0.5, "copies of the image tie with the match: the per-row protocol fails them"


def test_duplicating_every_row_leaves_recall_unchanged():
  rng = np.random.default_rng(1)
  text_image = _text_image(rng, 9, 25)
  keys = [f"image-{m}" for m in text_image]
  images, texts = _unit(rng.normal(size=(9, 6))), _unit(rng.normal(size=(25, 6)))
  gallery, index = metrics.image_groups(keys)
  once = metrics.image_retrieval(images[text_image][gallery], texts, index, (1, 2, 3, 5, 10))

  gallery2, index2 = metrics.image_groups(keys + keys)
  np.testing.assert_array_equal(gallery2, gallery)  # the same gallery: first rows
  twice = metrics.image_retrieval(images[text_image][gallery], np.concatenate([texts, texts]),
                                  index2, (1, 2, 4, 6, 10, 20))
  assert {k: twice["t2i"][k] for k in (1, 2, 10)} == {k: once["t2i"][k] for k in (1, 2, 10)}
  # Image->text: each non-matching text now appears twice, so its rank doubles; recall@1 is
  # unchanged and recall@2k of the doubled set is recall@k of the original.
  for k in (1, 2, 3, 5, 10):
    assert twice["i2t"][1 if k == 1 else 2 * k] == once["i2t"][k], k


def test_ties_count_against_and_chunks_do_not_matter():
  rng = np.random.default_rng(2)
  constant = np.tile(_unit(np.ones((1, 8))), (30, 1))
  text_image = _text_image(rng, 12, 30)
  assert metrics.image_retrieval(constant[:12], constant, text_image, (1, 5, 10)) == {
      "t2i": {1: 0.0, 5: 0.0, 10: 0.0}, "i2t": {1: 0.0, 5: 0.0, 10: 0.0}}
  assert metrics.row_retrieval(constant, constant, (1, 5, 10)) == {1: 0.0, 5: 0.0, 10: 0.0}

  images, texts = _unit(rng.normal(size=(12, 6))), _unit(rng.normal(size=(30, 6)))
  images[7] = images[3]  # two distinct images tie for every text
  texts[11] = texts[4]  # and two texts for every image
  ours = metrics.image_retrieval(images, texts, text_image, KS, chunk=7)
  for k in KS:
    assert (ours["t2i"][k], ours["i2t"][k]) == pytest.approx(
        _brute_by_image(images, texts, text_image, k)), k


def test_row_retrieval_brute_force_with_ties_and_uneven_chunks():
  rng = np.random.default_rng(3)
  queries, keys = _unit(rng.normal(size=(23, 6))), _unit(rng.normal(size=(23, 6)))
  keys[7] = keys[3]  # keys 3 and 7 tie for every query
  ours = metrics.row_retrieval(queries, keys, ks=(1, 2, 5), chunk=5)
  for k in (1, 2, 5):
    assert ours[k] == pytest.approx(_brute_rows(queries, keys, k)), k
  assert metrics.row_retrieval(np.eye(10), np.eye(10), ks=(1,)) == {1: 1.0}


def test_image_retrieval_equals_clip_benchmark():
  rng = np.random.default_rng(4)
  text_image = _text_image(rng, 13, 40)
  images, texts = _unit(rng.normal(size=(13, 8))), _unit(rng.normal(size=(40, 8)))
  ours = metrics.image_retrieval(images, texts, text_image, KS, chunk=6)

  # As CLIP_benchmark's zeroshot_retrieval.evaluate does, on the same embeddings.
  oracle = _clip_benchmark()
  batchify, recall_at_k = oracle.batchify, oracle.recall_at_k
  scores = torch.from_numpy(texts) @ torch.from_numpy(images).T
  positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
  positive_pairs[torch.arange(len(scores)), torch.from_numpy(text_image)] = True
  for k in KS:
    image_recall = batchify(recall_at_k, scores, positive_pairs, 7, "cpu", k=k) > 0
    text_recall = batchify(recall_at_k, scores.T, positive_pairs.T, 7, "cpu", k=k) > 0
    assert ours["t2i"][k] == pytest.approx(image_recall.float().mean().item()), k
    assert ours["i2t"][k] == pytest.approx(text_recall.float().mean().item()), k
  assert 0 < ours["t2i"][1] < ours["t2i"][10] < 1 and 0 < ours["i2t"][1] < 1  # not degenerate


def _official_topk(image, text, ks):
  """The official code's compute_topk_retrieval: item i's image is row i, torch.topk in batches."""
  image, text = torch.tensor(image), torch.tensor(text)
  correct = {k: 0 for k in ks}
  for start in range(0, len(text), 8):
    similarity = text[start:start + 8] @ image.T
    target = torch.arange(start, start + len(similarity)).unsqueeze(1)
    for k in ks:
      correct[k] += torch.any(similarity.topk(k, dim=1)[1] == target, dim=1).sum().item()
  return {k: count / len(text) for k, count in correct.items()}


def _read_only(z):
  for value in z.values():
    if isinstance(value, np.ndarray):
      value.setflags(write=False)
  return z


def test_official_evaluator_matches_the_official_formulas():
  rng = np.random.default_rng(5)
  image = _unit(rng.normal(size=(20, 4)))
  noise = {"caption": 0.7, "paraphrase": 0.9, "negation": 1.5}  # texts near their image
  z = _read_only({"ids": [str(i) for i in range(20)], "image": image,
                  **{kind: _unit(image + scale * rng.normal(size=image.shape))
                     for kind, scale in noise.items()}})
  assert EVALUATORS["official"] is OfficialEvaluator
  ours = dict(OfficialEvaluator(None, None).score(z))

  original, paraphrase = (_official_topk(z["image"], z[kind], (1, 3, 5))
                          for kind in ("caption", "paraphrase"))
  image, caption, negation = (torch.tensor(z[k]) for k in ("image", "caption", "negation"))
  accuracy = ((image * caption).sum(1) > (image * negation).sum(1)).sum().item() / 20
  scaled = max(0.0, (accuracy - 0.5) * 2.0)
  expected = {**{f"rows_t2i_top{k}_original": v for k, v in original.items()},
              **{f"rows_t2i_top{k}_paraphrase": v for k, v in paraphrase.items()},
              "accuracy": accuracy, "scaled_accuracy": scaled,
              "combined_score": (original[1] + paraphrase[1] + scaled) / 3.0}
  assert ours == pytest.approx(expected)
  assert 0 < original[1] < original[5] < 1 and scaled > 0  # not degenerate

  # Top-1 enters the combined score even when not asked for.
  only3 = dict(OfficialEvaluator(None, None, ks=(3,)).score(z))
  assert set(only3) == {"rows_t2i_top3_original", "rows_t2i_top3_paraphrase", "accuracy",
                        "scaled_accuracy", "combined_score"}
  assert only3["combined_score"] == pytest.approx(expected["combined_score"])


def test_image_groups_number_images_in_order_of_first_appearance():
  gallery, text_image = metrics.image_groups(["b", "a", "b", "c", "a"])
  np.testing.assert_array_equal(gallery, [0, 1, 3])
  np.testing.assert_array_equal(text_image, [0, 1, 0, 2, 1])


def test_retrieval_evaluator_scores_by_image_key():
  e = np.eye(3, 4)  # images a, b, c: orthonormal
  # Rows 0 and 2 show image a, rows 1 and 4 image b; every caption is its image, but row 0's
  # paraphrase describes image b.
  z = _read_only({"ids": list("vwxyz"), "image_keys": ["a", "b", "a", "c", "b"],
                  "image": e[[0, 1, 0, 2, 1]], "caption": e[[0, 1, 0, 2, 1]],
                  "paraphrase": e[[1, 1, 0, 2, 1]], "negation": -e[[0, 1, 0, 2, 1]]})
  ours = dict(RetrievalEvaluator(None, None, ks=(1, 5)).score(z))
  assert ours == pytest.approx({
      "t2i_recall@1_original": 1.0, "t2i_recall@5_original": 1.0,
      "i2t_recall@1_original": 1.0, "i2t_recall@5_original": 1.0,
      # Row 0's paraphrase ranks image a behind b (rank 1) and level with c (a tie): rank 2.
      "t2i_recall@1_paraphrase": 4 / 5, "t2i_recall@5_paraphrase": 1.0,
      # Image b's best text (score 1) ties with row 0's paraphrase, another image's text.
      "i2t_recall@1_paraphrase": 2 / 3, "i2t_recall@5_paraphrase": 1.0,
      "images": 3.0, "texts": 5.0})
  assert {name for name, _ in RetrievalEvaluator(None, None).score(z)} >= {
      f"{d}_recall@{k}_{n}" for d in ("t2i", "i2t") for k in (1, 5, 10)
      for n in ("original", "paraphrase")}


def test_equal_keys_tie_exactly_wherever_blas_puts_them():
  """Keys with equal embeddings score exactly equal whatever their position: BLAS computes the
  edge rows and columns of a product with other kernels, whose sums round differently, so a
  plain float64 or float32 matmul scores them some ulps apart on some machines (an AMD EPYC here:
  14 of 20 such products at D=64), and the tie a repeated image must be turned into a hit or a
  miss by its position."""
  rng = np.random.default_rng(5)
  for dtype in (np.float64, np.float32):
    for _ in range(20):
      queries = _unit(rng.normal(size=(30, 512))).astype(dtype)
      keys = np.tile(_unit(rng.normal(size=(1, 512))), (30, 1)).astype(dtype)
      scores = metrics.cosines(queries, keys)
      assert scores.dtype == np.float32 and np.all(scores == scores[:, :1])
      assert metrics.row_retrieval(queries, keys, (1, 5, 29, 30)) == {1: 0.0, 5: 0.0, 29: 0.0,
                                                                      30: 1.0}
