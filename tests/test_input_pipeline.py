"""Sources and the grain pipeline: keys and shapes, image keys, transforms against references,
splits (by image, the official row split, CC-Neg's), determinism, sharding, exact resume, bad
input."""

import csv
import hashlib
import io
import json
import logging
import os
import struct
import threading
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from semclip_jax import data as data_lib
from semclip_jax import storage, train_step
from semclip_jax.data import input_pipeline, sources, transforms
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.hf import preprocessor_config

N = 24


@pytest.fixture(scope="module")
def tokenizer():
  return CLIPTokenizer()


def _write_dataset(folder, n=N, bad=()):
  """n JPEGs of varied sizes and a SugarCrepe++-layout CSV; `bad` names defects to plant."""
  rng = np.random.default_rng(0)
  (folder / "images").mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(n):
    pixels = rng.integers(0, 256, (20 + 3 * i, 48 - i, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "images" / f"{i:03d}.jpg", quality=95)
    rows.append({"filename": f"{i:03d}.jpg", "caption": f"a photo number {i}",
                 "paraphrased": f"picture number {i}", "negation": f"not a photo number {i}"})
  if "missing" in bad:
    rows[3]["filename"] = "nowhere.jpg"
  if "corrupt" in bad:
    (folder / "images" / "005.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  if "truncated" in bad:
    data = (folder / "images" / "007.jpg").read_bytes()
    (folder / "images" / "007.jpg").write_bytes(data[:len(data) // 2])
  if "empty_caption" in bad:
    rows[11]["negation"] = "   "
  with open(folder / "triples.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return folder / "triples.csv", folder / "images"


def _config(**overrides):
  config = input_pipeline.default_config()
  config.update(batch_size=4, image_size=16, context_length=12, worker_count=0, seed=3)
  config.update(**overrides)
  return config


def _take(pipeline, k):
  batches = [next(pipeline) for _ in range(k)]
  pipeline.close()
  return batches


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_csv_source_yields_documented_keys(tmp_path):
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  record = source[0]
  assert set(record) == {"id", "image_key", "image", "caption", "paraphrase", "negation"}
  assert isinstance(record["image"], bytes) and record["caption"] == "a photo number 0"
  assert record["image_key"] == "000.jpg"
  assert len(source) == N


def test_csv_and_images_in_a_bucket_read_as_local_ones(tmp_path, gcs_bucket, tokenizer):
  path, images = _write_dataset(tmp_path, bad=("missing",))
  storage.upload(str(path), f"{gcs_bucket}/data/triples.csv")
  storage.upload_folder(str(images), f"{gcs_bucket}/data/images")
  local = sources.csv_source(str(path), str(images), split=None)
  remote = sources.csv_source(f"{gcs_bucket}/data/triples.csv", f"{gcs_bucket}/data/images",
                              split=None)
  assert remote.triples == local.triples and len(remote) == N
  for i in range(N):
    want, got = local[i], remote[i]
    assert got.keys() == want.keys() and got.get("image") == want.get("image"), i
  assert got.get("image") is not None
  assert remote[3]["image"] is None and "nowhere.jpg" in remote[3]["error"]  # skipped, not raised
  # Through the pipeline: the same batches.
  _same(*(_take(input_pipeline.make_pipeline(source, _config(), train=True, tokenizer=tokenizer), 2)
          for source in (local, remote)))
  # The data config builder takes the bucket's paths.
  config = data_lib.default_config()
  config.update(kind="csv", path=f"{gcs_bucket}/data/triples.csv",
                image_dir=f"{gcs_bucket}/data/images")
  source = data_lib.make_source(config, "val")
  config.update(path=str(path), image_dir=str(images))
  assert source.triples == data_lib.make_source(config, "val").triples
  config.update(image_dir=f"{gcs_bucket}/data/nothing_here")
  with pytest.raises(FileNotFoundError, match="config.data.image_dir"):
    data_lib.make_source(config, "val")


@pytest.mark.parametrize("train", [True, False])
def test_batches_have_configured_shapes(tmp_path, tokenizer, train):
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  batch = _take(input_pipeline.make_pipeline(source, _config(), train=train, tokenizer=tokenizer), 1)[0]
  assert set(batch) == {"image", "tokens", "id", "image_key"}
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["tokens"].shape == (4, 3, 12) and batch["tokens"].dtype == np.int32
  assert batch["id"].shape == batch["image_key"].shape == (4,)
  row = list(batch["id"]).index(batch["id"][0])
  caption = source.triples[int(str(batch["id"][row]).split(":")[1]) - 2]
  np.testing.assert_array_equal(batch["tokens"][row], tokenizer(
      [caption.caption, caption.paraphrase, caption.negation], context_length=12))


def _batch_of(records, config, train, tokenizer):
  """The one batch the pipeline makes of `records` (a list is a random-access source)."""
  pipeline = input_pipeline.make_pipeline(records, config, train=train, tokenizer=tokenizer,
                                          process_index=0, process_count=1)
  return _take(pipeline, 1)[0]


def test_image_key_names_the_image_file(tmp_path, tokenizer):
  path, images = _write_dataset(tmp_path, n=6)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  for row, name in zip(rows, ["000.jpg", "001.jpg", "000.jpg", "002.jpg", "001.jpg", "003.jpg"]):
    row["filename"] = name
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  source = sources.csv_source(str(path), str(images), split=None)
  batch = _batch_of(source, _config(batch_size=6), False, tokenizer)
  by_id = dict(zip(batch["id"], batch["image_key"]))
  assert batch["image_key"].dtype.kind == batch["id"].dtype.kind == "U"  # numpy strings
  assert [by_id[f"triples.csv:{row}"] for row in range(2, 8)] == [r["filename"] for r in rows]


def test_array_record_image_key_is_stored_else_the_content_hash(tmp_path, tokenizer):
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter

  jpegs = []
  for seed in range(3):
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 9, 3), dtype=np.uint8)
                    ).save(out, format="JPEG")
    jpegs.append(out.getvalue())
  writer = ArrayRecordWriter(str(tmp_path / "triples-00000.array_record"), "group_size:1")
  texts = ("a cat", "a feline", "no cat")
  writer.write(sources.encode_record("named", jpegs[0], *texts, image_key="cats/1.jpg"))
  writer.write(sources.encode_record("unnamed", jpegs[1], *texts))
  writer.write(sources.encode_record("same bytes", jpegs[1], *texts))
  writer.write(sources.encode_record("other", jpegs[2], *texts))
  writer.close()
  source = sources.ArrayRecordSource(str(tmp_path))
  batch = _batch_of(source, _config(batch_size=4), False, tokenizer)
  keys = dict(zip(batch["id"], batch["image_key"]))
  assert keys["named"] == "cats/1.jpg"
  assert keys["unnamed"] == keys["same bytes"] == hashlib.sha1(jpegs[1]).hexdigest()
  assert keys["other"] == hashlib.sha1(jpegs[2]).hexdigest()


@pytest.mark.parametrize("train", [True, False])
def test_squash_and_imagenet_equal_the_official_transform(tokenizer, train):
  # The official code: torchvision Resize((S, S)) (PIL bilinear on PIL images), ToTensor (/255),
  # Normalize with ImageNet's mean/std; the same for training and evaluation (no crop).
  pixels = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  record = {"id": "x", "image": out.getvalue(), "caption": "a", "paraphrase": "b", "negation": "c"}
  config = _config(batch_size=1, image_size=16, resize="squash", normalization="imagenet")
  image = transforms.normalize(_batch_of([record], config, train, tokenizer)["image"][0], "imagenet")
  resized = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BILINEAR), np.float64)
  expected = (resized / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(image, expected, rtol=0, atol=1e-6)


def test_unknown_resize_or_normalization_names_the_field(tokenizer):
  with pytest.raises(ValueError, match=r"data\.resize 'stretch'"):
    input_pipeline.Preprocess(tokenizer, 16, 8, "center", (0.9, 1.0), resize="stretch")
  with pytest.raises(ValueError, match=r"data\.normalization 'laion'"):
    train_step.make_train_step(None, None, normalization="laion")


def test_random_resized_crop_keeps_the_asked_area():
  # Redrawing boxes that do not fit (not clipping them) keeps the area fraction within crop_scale:
  # clipping kept ~0.85 of a 640x480 image on average for scale (0.9, 1.0).
  rng = np.random.default_rng(0)
  boxes = np.array([transforms.random_resized_crop_box(640, 480, rng, (0.9, 1.0))
                    for _ in range(2000)])
  left, top, right, bottom = boxes.T
  assert np.all((0 <= left) & (left < right) & (right <= 640))
  assert np.all((0 <= top) & (top < bottom) & (bottom <= 480))
  kept = (right - left) * (bottom - top) / (640 * 480)
  assert 0.9 <= kept.mean() <= 1.0
  # A box that fits on no try (an extreme aspect) falls back to the central crop, ratio clamped.
  assert transforms.random_resized_crop_box(1000, 100, rng, (0.9, 1.0)) == (433, 0, 566, 100)


def test_eval_transform_equals_transformers_clip_image_processor():
  rng = np.random.default_rng(1)
  processor = CLIPImageProcessorPil(**{k: v for k, v in preprocessor_config(32).items()
                                       if k not in ("image_processor_type", "processor_class")})
  for shape in [(50, 70, 3), (91, 37, 3), (300, 400, 3)]:
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    expected = np.asarray(processor(images=[image])["pixel_values"][0]).transpose(1, 2, 0)
    ours = transforms.normalize(transforms.resize_shortest_and_center_crop(image, 32))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_uint8_batches_normalised_on_the_device_equal_host_normalisation(tmp_path, tokenizer):
  """The pipeline ships uint8; the train step normalises inside its jit (`model_images`): the
  same pixels as normalising on the host, up to float rounding."""
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  for normalization in transforms.NORMALIZATIONS:
    batch = _take(input_pipeline.make_pipeline(source, _config(normalization=normalization),
                                               train=True, tokenizer=tokenizer), 1)[0]
    on_device = jax.jit(train_step.model_images, static_argnums=1)(batch["image"], normalization)
    assert on_device.dtype == jnp.float32
    host = transforms.normalize(batch["image"], normalization)
    assert host.dtype == np.float32
    np.testing.assert_allclose(np.asarray(on_device), host, rtol=0, atol=2e-6)
  floats = np.ones((1, 2, 2, 3), np.float32)  # float input is taken as already normalised
  assert train_step.model_images(floats, "clip") is floats


def _jpeg(width, height, seed=0):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(out, "JPEG",
                                                                                quality=90)
  return out.getvalue()


@pytest.mark.parametrize("resize,crop", [("shortest_side_crop", "random_resized"),
                                         ("shortest_side_crop", "center"), ("squash", "center")])
def test_jpeg_draft_decodes_large_images_smaller_with_the_same_result(tokenizer, resize, crop):
  """Training decodes a JPEG >= 2x what the crop needs at a reduced DCT scale; the crop is the
  same region (the same rng draws), within about one grey level of a full decode (measured: mean
  0.5, 99th percentile 2 of 255 at 224 from 1024x768)."""
  record = {"id": "x", "image": _jpeg(1024, 768), "caption": "a", "paraphrase": "b",
            "negation": "c"}
  kwargs = dict(resize=resize)
  drafted = input_pipeline.Preprocess(tokenizer, 224, 8, crop, (0.9, 1.0), jpeg_draft=True,
                                      **kwargs)
  full = input_pipeline.Preprocess(tokenizer, 224, 8, crop, (0.9, 1.0), jpeg_draft=False, **kwargs)
  for seed in range(4):
    a = drafted(record, np.random.default_rng(seed))["image"].astype(np.float32)
    b = full(record, np.random.default_rng(seed))["image"].astype(np.float32)
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a - b).mean() < 1.0 and np.percentile(np.abs(a - b), 99) <= 3
  pil = transforms.open_image(record["image"])
  decoded, factor = transforms.decode_rgb(pil, transforms.draft_size(1024, 768, 224, resize))
  assert factor == 2 and decoded.size == (512, 384)
  # Not at least twice as large as needed: decoded in full.
  pil = transforms.open_image(record["image"])
  assert transforms.decode_rgb(pil, transforms.draft_size(1024, 768, 500, resize))[1] == 1


def test_eval_never_drafts(tmp_path, tokenizer):
  """The eval transform stays CLIPImageProcessor's: the pipeline's eval batch of a large JPEG is
  the full decode's shortest-side resize + centre crop, exactly."""
  record = {"id": "x", "image": _jpeg(1024, 768, seed=1), "caption": "a", "paraphrase": "b",
            "negation": "c"}
  image = _batch_of([record], _config(batch_size=1, image_size=32), False, tokenizer)["image"][0]
  expected = transforms.resize_shortest_and_center_crop(transforms.to_pil(record["image"]), 32)
  np.testing.assert_array_equal(image, expected)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_and_exact_resume(tmp_path, tokenizer, workers):
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  config = _config(worker_count=workers)
  make = lambda: input_pipeline.make_pipeline(source, config, train=True, tokenizer=tokenizer)
  uninterrupted = _take(make(), 10)  # 40 records: crosses the 24-record epoch boundary
  # A second pipeline of the same seed gives the same batches: `first`'s head, then the resumed.
  first = make()
  head = [next(first) for _ in range(4)]
  state = json.loads(json.dumps(first.get_state()))  # the state survives a JSON round trip
  first.close()
  resumed = make()
  resumed.set_state(state)
  _same(head + _take(resumed, 6), uninterrupted)

  if not workers:  # the order is the sampler's, whoever decodes: one seed check is enough
    other_seed = _take(input_pipeline.make_pipeline(source, _config(seed=4), train=True,
                                                    tokenizer=tokenizer), 1)
    assert not np.array_equal(other_seed[0]["id"], uninterrupted[0]["id"])


def test_epochs_are_reshuffled_and_cover_the_data(tmp_path, tokenizer):
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  batches = _take(input_pipeline.make_pipeline(source, _config(batch_size=6), train=True,
                                               tokenizer=tokenizer), 8)
  ids = np.concatenate([b["id"] for b in batches])
  first, second = ids[:N], ids[N:]
  assert sorted(first) == sorted(second) == sorted(t.id for t in source.triples)
  assert list(first) != list(second)


def test_processes_get_disjoint_shards_that_cover_the_dataset(tmp_path, tokenizer):
  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  seen = []
  for process in range(3):
    pipeline = input_pipeline.make_pipeline(source, _config(batch_size=3), train=False,
                                            tokenizer=tokenizer, process_index=process,
                                            process_count=3)
    seen.append([i for batch in pipeline for i in batch["id"]])
    pipeline.close()
  assert all(len(ids) == N // 3 for ids in seen)
  assert set().union(*map(set, seen)) == {t.id for t in source.triples}
  assert sum(map(len, seen)) == N


def test_bad_records_are_skipped_and_counted(tmp_path, tokenizer, caplog):
  path, images = _write_dataset(tmp_path, bad=("missing", "corrupt", "truncated", "empty_caption"))
  source = sources.csv_source(str(path), str(images), split=None)
  pipeline = input_pipeline.make_pipeline(source, _config(batch_size=5, max_bad_fraction=0.2),
                                          train=False, tokenizer=tokenizer)
  ids = [i for batch in pipeline for i in batch["id"]]
  bad = {"triples.csv:5", "triples.csv:7", "triples.csv:9", "triples.csv:13"}  # CSV line numbers
  assert len(ids) == N - 4 and not bad & set(ids)
  assert pipeline.skipped == 4
  logged = "\n".join(r.getMessage() for r in caplog.records)
  for ident, reason in [("triples.csv:5", "nowhere.jpg"), ("triples.csv:7", "undecodable image"),
                        ("triples.csv:9", "truncated"), ("triples.csv:13", "'negation' is empty")]:
    assert ident in logged and reason in logged, (ident, reason)


def test_too_many_bad_records_raise_naming_offenders(tmp_path, tokenizer):
  path, images = _write_dataset(tmp_path, bad=("missing", "corrupt", "truncated", "empty_caption"))
  source = sources.csv_source(str(path), str(images), split=None)
  for workers in (0, 2):
    pipeline = input_pipeline.make_pipeline(source, _config(batch_size=4, worker_count=workers),
                                            train=True, tokenizer=tokenizer)
    with pytest.raises(input_pipeline.BadDataError, match=r"(?s)max_bad_fraction=0.01.*triples\.csv:"):
      for _ in range(20):
        next(pipeline)
    pipeline.close()


def _next_error_within(pipeline, seconds: float) -> BaseException | None:
  """What next(pipeline) raises; fails the test instead of hanging when it draws for longer."""
  outcome = {}

  def draw():
    try:
      next(pipeline)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      outcome["error"] = e

  drawer = threading.Thread(target=draw, daemon=True)
  drawer.start()
  drawer.join(seconds)
  assert not drawer.is_alive(), f"no batch and no error after {seconds} s"
  return outcome.get("error")


def test_training_data_whose_every_record_is_bad_is_an_error_not_a_hang(tmp_path, tokenizer):
  """A wrong image_dir makes every record bad: a repeating dataset never yields the good record
  whose arrival checks the counts, so the reader itself stops after more bad records in a row
  than max_bad_fraction lets pass, in the main process and in each worker."""
  path, _ = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(tmp_path / "elsewhere"), split=None)
  for workers, fraction in [(0, 0.01), (2, 0.01), (0, 1.0)]:
    pipeline = input_pipeline.make_pipeline(
        source, _config(worker_count=workers, max_bad_fraction=fraction), train=True,
        tokenizer=tokenizer)
    try:
      error = _next_error_within(pipeline, 60)
    finally:
      pipeline.close()
    assert isinstance(error, input_pipeline.BadDataError), (workers, fraction, error)
    assert f"max_bad_fraction={fraction} allows in epochs of {N} records" in str(error)
    assert "elsewhere/000.jpg" in str(error) or "elsewhere/0" in str(error)
    assert "\n" not in str(error)  # main ends with it as one line


def test_the_bound_on_bad_records_in_a_row_is_what_the_fraction_implies():
  bound = input_pipeline.bad_records_in_a_row_bound
  assert bound(0.01, 1000) == 20 and bound(0.0, 1000) == 0
  assert bound(0.01, 1000, workers=8) == 20
  # f·W ≥ 1: a reader's share of an epoch may be all bad within the fraction; two epochs' worth.
  assert bound(0.2, 1000, workers=8) == 2000 and bound(1.0, 1000) == 2000
  # Exhaustively on small cases: a stream of bad records longer than the bound, wherever it
  # starts, puts more than f·E bad records into one epoch (E/W records per reader and epoch).
  for epoch, workers, fraction in [(12, 1, 0.1), (12, 3, 0.2), (20, 4, 0.05), (9, 1, 0.5)]:
    share = epoch // workers
    n = bound(fraction, epoch, workers) + 1
    if fraction * max(workers, 1) >= 1:
      continue
    for start in range(share):
      per_epoch = [0] * (n // share + 3)
      for k in range(start, start + n):
        per_epoch[k // share] += 1
      assert max(per_epoch) > fraction * epoch, (epoch, workers, fraction, start)


def test_zero_size_and_non_string_fields():
  preprocess = input_pipeline.Preprocess(CLIPTokenizer(), 16, 8, "center", (0.9, 1.0))
  good = {"id": "a", "caption": "x", "paraphrase": "y", "negation": "z"}
  assert preprocess({**good, "image": np.zeros((0, 5, 3), np.uint8)})["error"] == "zero-size image"
  assert "not a string" in preprocess({**good, "negation": None, "image": b""})["error"]
  ok = preprocess({**good, "image": np.full((9, 13, 3), 200, np.uint8)})
  assert ok["image"].shape == (16, 16, 3) and "error" not in ok


def test_missing_column_fails_at_start_naming_column_and_file(tmp_path):
  path, images = _write_dataset(tmp_path)
  text = path.read_text().replace("negation", "negated")
  path.write_text(text)
  with pytest.raises(ValueError, match=r"triples\.csv.*(match no known layout|'negation')"):
    sources.csv_source(str(path), str(images))
  columns = {"image": "filename", "caption": "caption", "paraphrase": "paraphrased",
             "negation": "negation"}
  with pytest.raises(ValueError, match=r"triples\.csv: required column 'negation'"):
    sources.csv_source(str(path), str(images), columns=columns)


def test_split_column_and_ccneg_layout(tmp_path):
  rows = [{"image_number": str(i), "caption": f"c{i}", "paraphrased": f"p{i}", "negation": f"n{i}",
           "split": ["train", "validation", "test"][i % 3]} for i in range(9)]
  path = tmp_path / "ccneg.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows))
  triples = sources.read_triples(str(path))
  assert triples[4].image == "000000004.jpg"
  val = sources.csv_source(str(path), str(tmp_path), split="val", split_column="split")
  assert [t.caption for t in val.triples] == ["c1", "c4", "c7"]
  assert len(sources.ccneg_official_split(triples * 5000, "test")) == sources.CCNEG_EVAL_ITEMS
  with pytest.raises(ValueError, match="official split needs more than"):
    sources.ccneg_official_split(triples, "train")


def test_real_sugarcrepe_csv_parses_and_splits_by_image(sugarcrepe_csv):
  triples = sources.read_triples(str(sugarcrepe_csv))
  assert len(triples) == 4757 and len({t.image for t in triples}) == 1542
  assert all(isinstance(getattr(t, f), str) and getattr(t, f) for t in triples for f in sources.FIELDS)
  splits = {s: sources.split_by_image(triples, s) for s in sources.SPLITS}
  images = {s: {t.image for t in ts} for s, ts in splits.items()}
  assert sum(len(ts) for ts in splits.values()) == 4757
  assert not images["train"] & images["val"] and not images["train"] & images["test"]
  assert not images["val"] & images["test"]
  assert 0.75 < len(images["train"]) / 1542 < 0.85
  again = sources.split_by_image(triples, "test")
  assert [t.id for t in again] == [t.id for t in splits["test"]]


def _pandas_row_split(n, seed=42, val_ratio=0.1, test_ratio=0.1):
  """The official code's split, literally: df.sample(frac=1.0, random_state=seed) draws
  RandomState(seed).choice(n, n, replace=False); then the iloc slices."""
  order = np.random.RandomState(seed).choice(n, size=n, replace=False)
  test_size, val_size = int(n * test_ratio), int(n * val_ratio)
  train_size = n - test_size - val_size
  return {"train": order[:train_size], "val": order[train_size:train_size + val_size],
          "test": order[train_size + val_size:]}


def _triples(n, per_image=1):
  return [sources.Triple(f"row{i}", f"{i // per_image}.jpg", "c", "p", "n") for i in range(n)]


def test_row_split_equals_the_official_code(sugarcrepe_csv):
  real = sources.read_triples(str(sugarcrepe_csv))
  for triples in (real, _triples(101, per_image=3)):
    n = len(triples)
    expected = _pandas_row_split(n)
    got = {s: sources.select_split(triples, s, ratios=(0.8, 0.1, 0.1), seed=42, split_by="rows")
           for s in sources.SPLITS}
    for split in sources.SPLITS:
      assert [t.id for t in got[split]] == [triples[i].id for i in expected[split]], (n, split)
    ids = [t.id for split in sources.SPLITS for t in got[split]]
    assert len(ids) == len(set(ids)) == n
  assert [len(got[s]) for s in sources.SPLITS] == [81, 10, 10]
  # csv_source (and so make_source) honours split_by.
  test = sources.csv_source(str(sugarcrepe_csv), "", split="test", split_seed=42, split_by="rows")
  assert [t.id for t in test.triples] == [real[i].id for i in _pandas_row_split(4757)["test"]]
  with pytest.raises(ValueError, match=r"split_by 'row'.*data\.split_by"):
    sources.select_split(real, "test", split_by="row")


def test_ccneg_official_split_carves_val_by_image():
  triples = _triples(sources.CCNEG_EVAL_ITEMS + 6_000, per_image=2)
  split = lambda name, seed=0: sources.ccneg_official_split(triples, name, val_fraction=0.05,
                                                            seed=seed)
  train, val, test = split("train"), split("val"), split("test")
  assert test == triples[-sources.CCNEG_EVAL_ITEMS:]
  assert not {t.image for t in train} & {t.image for t in val}
  rest = triples[:-sources.CCNEG_EVAL_ITEMS]
  assert sorted(t.id for t in train + val) == sorted(t.id for t in rest)
  assert len({t.image for t in val}) == round(0.05 * 3_000)
  assert split("val") == val and split("val", seed=1) != val


def test_ccneg_official_split_warns_unless_the_release_row_count(caplog):
  triple = sources.Triple("x", "1.jpg", "c", "p", "n")
  with caplog.at_level(logging.WARNING, logger="semclip_jax.data.sources"):
    sources.ccneg_official_split([triple] * sources.CCNEG_ROWS, "test")
    assert not caplog.records
    sources.ccneg_official_split([triple] * 45_000, "test")
  assert len(caplog.records) == 1
  assert "45000 rows" in caplog.text
  assert "only for the full file in its original order" in caplog.text


def test_trim_to_bucket():
  tokens = np.zeros((2, 3, 77), np.int32)
  tokens[:, :, 0] = 49406
  tokens[0, 1, 1:19] = 5
  tokens[0, 1, 19] = 49407  # the longest caption ends at position 19: 20 tokens
  trimmed = input_pipeline.trim_to_bucket(tokens, (16, 24, 32, 77))
  assert trimmed.shape == (2, 3, 24) and np.array_equal(trimmed, tokens[..., :24])
  assert input_pipeline.trim_to_bucket(tokens, (8, 16)).shape[-1] == 77  # no bucket fits: keep all
  assert input_pipeline.trim_to_bucket(tokens[..., :12], (16, 24)).shape[-1] == 12  # never longer


def test_length_buckets_leave_embeddings_unchanged(tmp_path, tokenizer):
  from semclip_jax.models import create_clip, get_preset  # pylint: disable=import-outside-toplevel

  path, images = _write_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  bucketed = _take(input_pipeline.make_pipeline(source, _config(context_length=77, batch_size=8),
                                                train=False, tokenizer=tokenizer), 1)[0]
  full = _take(input_pipeline.make_pipeline(source, _config(context_length=77, batch_size=8,
                                                            length_buckets=()),
                                            train=False, tokenizer=tokenizer), 1)[0]
  assert bucketed["tokens"].shape == (8, 3, 16) and full["tokens"].shape == (8, 3, 77)
  np.testing.assert_array_equal(bucketed["image"], full["image"])
  model = create_clip(get_preset("tiny"), seed=1)
  for k in range(3):
    np.testing.assert_allclose(model.encode_text(bucketed["tokens"][:, k]),
                               model.encode_text(full["tokens"][:, k]), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Untrusted input: image paths that leave the image folder, oversized images, CSV encodings.
# ----------------------------------------------------------------------------------------------
def _call_or_unblock(fn, fifo, timeout=60):
  """fn() in a thread; one still blocked after `timeout` s (opening the FIFO, which waits for a
  writer) is unblocked and the test fails, rather than hanging."""
  result = []
  thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
  thread.start()
  thread.join(timeout)
  if thread.is_alive():
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
    thread.join(timeout)
    pytest.fail(f"blocked reading the FIFO {fifo}")
  assert result, "fn raised (see the thread's traceback above)"
  return result[0]


def _escaping_dataset(tmp_path):
  """The dataset with rows 0-4 naming images outside `images` or no regular file: `..`, an
  absolute path, a symlink out, a FIFO, a device; row 5 a symlink inside (allowed). Returns
  (csv, the images folder reached through a symlink, the FIFO)."""
  path, images = _write_dataset(tmp_path / "data")
  (tmp_path / "secret.jpg").write_bytes((images / "000.jpg").read_bytes())  # outside the folder
  os.symlink(tmp_path / "secret.jpg", images / "link_out.jpg")
  os.symlink(images / "001.jpg", images / "link_in.jpg")
  os.mkfifo(images / "fifo.jpg")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  for row, name in zip(rows, ["../../secret.jpg", str(tmp_path / "secret.jpg"), "link_out.jpg",
                              "fifo.jpg", "/dev/null", "link_in.jpg"]):
    row["filename"] = name
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  linked = tmp_path / "linked_images"  # image_dir may itself be a symlink
  os.symlink(images, linked)
  return path, linked, images / "fifo.jpg"


def test_image_paths_outside_the_image_folder_are_bad_records(tmp_path, tokenizer, caplog):
  path, images, fifo = _escaping_dataset(tmp_path)
  source = sources.csv_source(str(path), str(images), split=None)
  records = _call_or_unblock(lambda: [source[i] for i in range(6)], str(fifo))
  for record, reason in zip(records, ["leads outside", "leads outside", "leads outside",
                                      "not a regular file", "leads outside"]):
    assert record["image"] is None and reason in record["error"], record
  assert records[5]["image"] == (tmp_path / "data" / "images" / "001.jpg").read_bytes()
  # In the pipeline they are skipped and counted, as unreadable images are.
  pipeline = input_pipeline.make_pipeline(source, _config(batch_size=6, max_bad_fraction=0.25),
                                          train=False, tokenizer=tokenizer)
  ids = [i for batch in pipeline for i in batch["id"]]
  assert pipeline.skipped == 5 and len(ids) == N - 5
  assert "triples.csv:2" in caplog.text and "'../../secret.jpg' leads outside" in caplog.text


def test_image_names_stay_inside_local_and_bucket_folders(tmp_path):
  inside = storage.join_inside
  assert inside("gs://b/images", "a/../x.jpg") == "gs://b/images/x.jpg"
  assert inside("gs://b/images/", "sub/./x.jpg") == "gs://b/images/sub/x.jpg"
  for name in ("../x.jpg", "a/../../x.jpg", "../images2/x.jpg", "/etc/passwd"):
    with pytest.raises(storage.OutsideFolderError, match="leads outside"):
      inside("gs://b/images", name)
  (tmp_path / "images").mkdir()
  for name in ("/dev/zero", "../x.jpg", str(tmp_path / "x.jpg")):
    with pytest.raises(storage.OutsideFolderError, match="leads outside"):
      inside(str(tmp_path / "images"), name)
  os.mkfifo(tmp_path / "images" / "fifo")
  with pytest.raises(storage.NotRegularFileError):  # at once: no writer is waited for
    sources.read_image_file(str(tmp_path / "images"), "fifo")
  with pytest.raises(storage.NotRegularFileError):
    sources.read_image_file(str(tmp_path), "images")


def _png_header(width, height):
  """A greyscale PNG whose header declares width × height, with almost no pixel data: PIL reads
  its size without decoding (and refuses to decode it)."""
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                              + struct.pack(">I", zlib.crc32(kind + body)))
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _thin_png(width=3_000_000):
  """A real width × 1 PNG (3 KB): 3 M pixels, but a 224 × 672,000,000 shortest-side resize."""
  out = io.BytesIO()
  Image.new("L", (width, 1), 128).save(out, "PNG")
  return out.getvalue()


def test_oversized_images_are_bad_records_before_decoding(tokenizer):
  record = {"id": "x", "caption": "a", "paraphrase": "b", "negation": "c"}
  # Training's random crop: the header's size decides.
  crop = input_pipeline.Preprocess(tokenizer, 16, 8, "random_resized", (0.9, 1.0),
                                   max_image_pixels=1000)
  rng = np.random.default_rng(0)
  assert "error" not in crop({**record, "image": _jpeg(32, 31)}, rng)  # 992 pixels
  out = crop({**record, "image": _jpeg(32, 32)}, rng)
  assert "32 x 32 = 1,024 pixels, more than max_image_pixels=1,000" in out["error"]
  # The centre crop resizes the whole image first: a 3 KB PNG of 3,000,000 x 1 would need 150 G
  # pixels at 224; the random crop resizes only its box, so the same image is fine there.
  thin = _thin_png()
  assert len(thin) < 10_000
  center = input_pipeline.Preprocess(tokenizer, 224, 8, "center", (0.9, 1.0))
  out = center({**record, "image": thin})
  assert "image too large" in out["error"] and "shortest-side resize" in out["error"]
  assert crop.max_image_pixels == 1000 and "error" not in input_pipeline.Preprocess(
      tokenizer, 16, 8, "random_resized", (0.9, 1.0))({**record, "image": thin}, rng)
  # PIL's own refusals count the same: its error (over 2 × Image.MAX_IMAGE_PIXELS), and its
  # warning where warnings are errors.
  unlimited = input_pipeline.Preprocess(tokenizer, 16, 8, "center", (0.9, 1.0),
                                        max_image_pixels=None)
  out = unlimited({**record, "image": _png_header(20_000, 10_000)})
  assert out["error"].startswith("image too large") and "decompression bomb" in out["error"]
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    out = unlimited({**record, "image": _png_header(10_000, 10_000)})
  assert out["error"].startswith("image too large"), out


def test_a_long_thin_image_does_not_stop_evaluation(tmp_path, tokenizer):
  path, images = _write_dataset(tmp_path)
  (images / "009.jpg").write_bytes(_thin_png())  # PIL reads the content, not the name
  source = sources.csv_source(str(path), str(images), split=None)
  config = _config(batch_size=8, image_size=224, max_bad_fraction=1.0)
  assert config.max_image_pixels == data_lib.default_config().max_image_pixels == 50_000_000
  pipeline = input_pipeline.make_pipeline(source, config, train=False, tokenizer=tokenizer)
  ids = [i for batch in pipeline for i in batch["id"]]
  assert pipeline.skipped == 1 and "triples.csv:11" not in ids and len(ids) == N - 1


def test_csv_encodings_and_oversized_fields(tmp_path):
  path, _ = _write_dataset(tmp_path, n=4)
  text = path.read_text(encoding="utf-8")
  want = sources.read_triples(str(path))
  path.write_text(text, encoding="utf-8-sig")  # Excel's "CSV UTF-8": a byte-order mark first
  assert sources.read_triples(str(path)) == want
  lines = text.splitlines(keepends=True)
  lines[3] = lines[3].replace("a photo", "a café photo")
  path.write_bytes("".join(lines).encode("latin-1"))
  with pytest.raises(ValueError, match=r"triples\.csv: line 4: not UTF-8 text \(byte 0xe9"):
    sources.read_triples(str(path))
  lines[3] = lines[3].replace("a café photo", "x" * 131_073)
  path.write_text("".join(lines), encoding="utf-8")
  with pytest.raises(ValueError, match=r"triples\.csv: row 4 \(line 4\): field larger than field "
                     r"limit \(131072\)"):
    sources.read_triples(str(path))
