"""Cached image embeddings for frozen image towers: the same training, keyed so a stale cache is
never read, resumable after a kill, split across processes, refused where it cannot apply."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from semclip_jax import config as config_lib
from semclip_jax import image_embedding_cache as cache_lib
from semclip_jax import sharding, storage, train
from semclip_jax.bench.input_rate import write_jpeg_dataset
from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.data.tokenizer import CLIPTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(cache: bool, total_steps: int = 20, **data):
  c = config_lib.shrink_for_cpu(config_lib.base_config())
  c.update(total_steps=total_steps, log_every_steps=1, evals={}, export_hf=False,
           progress_bar=False)
  c.optim.freeze = config_lib.FREEZE_IMAGE_TOWER
  # One token length (no buckets) and one device: one compilation of each step, on 2 cores.
  c.data.update(**{"train_crop": "center", "cache_image_embeddings": cache, "shapes_size": 96,
                   "batch_size": 8, "length_buckets": (), **data})
  c.mesh.num_devices = 1
  c.checkpoint.update(every_steps=10, keep=3, async_save=False)
  return c


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_cached_run_trains_as_the_uncached_one_and_shares_its_checkpoints(tmp_path):
  uncached, cached, switched = tmp_path / "uncached", tmp_path / "cached", tmp_path / "switched"
  train.train_and_evaluate(_config(False), str(uncached))
  train.train_and_evaluate(_config(True), str(cached))
  expected, got = _losses(uncached), _losses(cached)
  assert sorted(expected) == sorted(got) == list(range(1, 21))
  for step in expected:
    assert abs(got[step] - expected[step]) <= 1e-5, (step, got[step], expected[step])
  folders = os.listdir(cached / "image_embedding_cache")
  assert len(folders) == 1
  meta = json.loads((cached / "image_embedding_cache" / folders[0] / "meta.json").read_text())
  assert meta["records"] == 96 and meta["transform"]["crop"] == "center"
  # A cached run's checkpoint resumes without the cache (and the reverse is the same state).
  shutil.copytree(cached / "checkpoints" / "10", switched / "checkpoints" / "10")
  train.train_and_evaluate(_config(False), str(switched))
  resumed = _losses(switched)
  assert sorted(resumed) == list(range(11, 21))
  for step in resumed:
    assert abs(resumed[step] - expected[step]) <= 1e-5, (step, resumed[step], expected[step])


def test_refused_when_the_tower_trains_or_the_crop_is_random(tmp_path):
  trains = _config(True)
  trains.optim.freeze = ()
  with pytest.raises(cache_lib.ImageEmbeddingCacheError, match=r"image tower trains.*model\.vision"):
    train.train_and_evaluate(trains, str(tmp_path / "a"))
  random_crop = _config(True, train_crop="random_resized")
  with pytest.raises(cache_lib.ImageEmbeddingCacheError, match="training crop is random"):
    cache_lib.check_cacheable(random_crop, ["model.text.final_norm.scale"])
  squash = _config(True, train_crop="random_resized", resize="squash")  # squash never crops
  cache_lib.check_cacheable(squash, ["model.text.final_norm.scale"])


def test_a_changed_tower_transform_or_split_gets_a_new_cache(tmp_path):
  def folder_of(config, source):
    graphdef, state, _, _ = train.build_train_state(config, train.make_mesh(config))
    return cache_lib.prepare(config, str(tmp_path), graphdef, state, source).folder

  source = ShapesSource(split="train", size=12, image_size=32)
  base = folder_of(_config(True), source)
  assert folder_of(_config(True), source) == base  # found again, not rebuilt
  changed = [folder_of(_config(True, normalization="imagenet"), source),
             folder_of(_config(True, jpeg_draft=False), source),
             folder_of(_config(True), ShapesSource(split="train", size=13, image_size=32))]
  other_seed = _config(True)
  other_seed.seed = 1
  changed.append(folder_of(other_seed, source))
  assert len({base, *changed}) == 5
  # Any one changed bit of any tower parameter changes the weights' fingerprint.
  weights = {"a": np.arange(32, dtype=np.float32).reshape(4, 8), "b": np.ones(5, np.float32)}
  flipped = {**weights, "b": weights["b"].copy()}
  flipped["b"].view(np.uint32)[3] ^= 1
  assert cache_lib.weights_fingerprint(weights) == cache_lib.weights_fingerprint(dict(weights))
  assert cache_lib.weights_fingerprint(weights) != cache_lib.weights_fingerprint(flipped)
  # Computed where the parameters live: split over a 2 x 4 mesh, the same fingerprint.
  mesh = sharding.make_mesh(2, 4)
  placed = {"a": jax.device_put(weights["a"], NamedSharding(mesh, P("data", "fsdp"))),
            "b": jax.device_put(weights["b"], sharding.replicated(mesh))}
  assert cache_lib.weights_fingerprint(placed) == cache_lib.weights_fingerprint(weights)


def _jpegs(folder, n=24, broken=()):
  path = write_jpeg_dataset(str(folder), n, size=(40, 30))
  for i in broken:
    (folder / "images" / f"{i:06d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return sources.csv_source(path, str(folder / "images"), split=None)


def _preprocess():
  return input_pipeline.Preprocess(CLIPTokenizer(), 16, 12, "center", (0.9, 1.0))


def _mean_colour(images):  # a deterministic stand-in encoder: [B, 16, 16, 3] -> [B, 3]
  return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


def test_bad_images_are_skipped_and_counted_as_without_the_cache(tmp_path):
  source = _jpegs(tmp_path, broken=(3, 17))
  cache = cache_lib.ImageEmbeddingCache(str(tmp_path / "cache"), cache_lib.Plan.of(source),
                                        shard_rows=8)
  assert cache.build(source, _preprocess(), _mean_colour, 4, 3) == [0, 1, 2]
  cached = cache_lib.CachedSource(source, cache)
  config = input_pipeline.default_config()
  config.update(batch_size=4, image_size=16, context_length=12, worker_count=0, num_epochs=1,
                train_crop="center", max_bad_fraction=0.5)
  runs = {}
  for name, src in (("raw", source), ("cached", cached)):
    pipeline = input_pipeline.make_pipeline(src, config, train=True, process_index=0,
                                            process_count=1)
    runs[name] = (list(pipeline), pipeline.skipped)
    pipeline.close()
  (raw, raw_skipped), (hits, hit_skipped) = runs["raw"], runs["cached"]
  assert raw_skipped == hit_skipped == 2
  assert [list(b["id"]) for b in raw] == [list(b["id"]) for b in hits]
  for a, b in zip(raw, hits):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_allclose(b["image_embedding"], _mean_colour(a["image"]), atol=1e-6)
    assert "image" not in b


def test_repeated_images_are_encoded_once(tmp_path):
  records = [{"id": f"r{i}", "image_key": f"img{i % 3}", "caption": "a", "paraphrase": "b",
              "negation": "c", "image": np.full((20, 20, 3), 40 * (i % 3), np.uint8)}
             for i in range(7)]
  plan = cache_lib.Plan.of(records)
  assert plan.keys == ["img0", "img1", "img2"] and list(plan.first_record) == [0, 1, 2]
  assert list(plan.row_of) == [0, 1, 2, 0, 1, 2, 0]
  cache = cache_lib.ImageEmbeddingCache(str(tmp_path), plan)
  cache.build(records, _preprocess(), _mean_colour, 4, 3)
  assert np.load(cache.shard_path(0)).shape == (3, 3)
  cached = cache_lib.CachedSource(records, cache)
  assert [float(cached[i]["image_embedding"][0]) for i in range(7)] == [
      0.0, 40.0, 80.0, 0.0, 40.0, 80.0, 0.0]


def test_shards_split_across_processes_equal_one_process(tmp_path):
  source = _jpegs(tmp_path / "data")
  plan = cache_lib.Plan.of(source)
  alone = cache_lib.ImageEmbeddingCache(str(tmp_path / "alone"), plan, shard_rows=5)
  assert alone.build(source, _preprocess(), _mean_colour, 4, 3) == [0, 1, 2, 3, 4]
  shared = cache_lib.ImageEmbeddingCache(str(tmp_path / "shared"), plan, shard_rows=5)
  first = shared.build(source, _preprocess(), _mean_colour, 4, 3, process_index=0, process_count=2)
  assert first == [0, 2, 4] and shared.missing_shards() == [1, 3]
  second = shared.build(source, _preprocess(), _mean_colour, 4, 3, process_index=1,
                        process_count=2)
  assert second == [1, 3] and not shared.missing_shards()
  for j in range(5):
    np.testing.assert_array_equal(np.load(alone.shard_path(j)), np.load(shared.shard_path(j)))


_KILLED_BUILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from semclip_jax import image_embedding_cache as cache_lib
    from semclip_jax.data import input_pipeline, sources
    from semclip_jax.data.tokenizer import CLIPTokenizer

    source = sources.csv_source(sys.argv[1], sys.argv[2], split=None)
    cache = cache_lib.ImageEmbeddingCache(sys.argv[3], cache_lib.Plan.of(source), shard_rows=4)
    def slow(images):  # slow enough to be killed between shards
      time.sleep(0.3)
      return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)
    cache.build(source, input_pipeline.Preprocess(CLIPTokenizer(), 16, 12, "center", (0.9, 1.0)),
                slow, 4, 3)
""")


def test_a_killed_build_continues_where_it_stopped(tmp_path):
  source = _jpegs(tmp_path / "data")
  folder = tmp_path / "cache"
  process = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(tmp_path / "data" / "triples.csv"),
                              str(tmp_path / "data" / "images"), str(folder)], cwd=REPO)
  try:
    deadline = time.monotonic() + 120
    while len(list(folder.glob("shard-*.npy"))) < 2:
      assert process.poll() is None and time.monotonic() < deadline, "build ended before the kill"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
  finally:
    process.wait()
  done = sorted(folder.glob("shard-*.npy"))
  assert 2 <= len(done) < 6
  before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}
  cache = cache_lib.ImageEmbeddingCache(str(folder), cache_lib.Plan.of(source), shard_rows=4)
  written = cache.build(source, _preprocess(), _mean_colour, 4, 3)
  assert written == list(range(len(done), 6)) and not cache.missing_shards()
  assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == before
  assert not list(folder.glob("*.tmp"))
  fresh = cache_lib.ImageEmbeddingCache(str(tmp_path / "fresh"), cache_lib.Plan.of(source),
                                        shard_rows=4)
  fresh.build(source, _preprocess(), _mean_colour, 4, 3)
  for j in range(6):
    np.testing.assert_array_equal(np.load(cache.shard_path(j)), np.load(fresh.shard_path(j)))


def test_a_cache_in_a_bucket_reads_as_the_one_on_disk(tmp_path, gcs_bucket, monkeypatch):
  """Built into gs:// by two processes' shares, the shards are the local build's objects, and the
  source reads the host's checked copies of them (XDG_CACHE_HOME) as it reads the local cache."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "host_cache"))
  source = _jpegs(tmp_path / "data", n=12, broken=(3,))
  plan = cache_lib.Plan.of(source)
  local = cache_lib.ImageEmbeddingCache(str(tmp_path / "cache"), plan, shard_rows=5)
  assert local.build(source, _preprocess(), _mean_colour, 4, 3) == [0, 1, 2]
  remote = cache_lib.ImageEmbeddingCache(f"{gcs_bucket}/run/image_embedding_cache/f", plan,
                                         shard_rows=5)
  assert remote.missing_shards() == [0, 1, 2]
  assert remote.build(source, _preprocess(), _mean_colour, 4, 3, process_count=2) == [0, 2]
  assert remote.missing_shards() == [1]
  assert remote.build(source, _preprocess(), _mean_colour, 4, 3, process_index=1,
                      process_count=2) == [1]
  assert not remote.missing_shards()
  assert storage.listdir(remote.folder) == sorted(os.listdir(local.folder))
  for j in range(3):
    np.testing.assert_array_equal(np.load(io.BytesIO(storage.read_bytes(remote.shard_path(j)))),
                                  np.load(local.shard_path(j)))
  from_disk = cache_lib.CachedSource(source, local)
  from_bucket = cache_lib.CachedSource(source, remote)
  copies = [p for pair in from_bucket._paths for p in pair]  # pylint: disable=protected-access
  assert len(copies) == 6 and all(p.startswith(str(tmp_path / "host_cache")) for p in copies)
  for i in range(len(source)):
    a, b = from_disk[i], from_bucket[i]
    assert a.keys() == b.keys() and ("error" in a) == (i == 3)
    for key in set(a) - {"error"}:
      np.testing.assert_array_equal(a[key], b[key])
    if "error" in a:  # the reason, as written (it names a BytesIO object of the build)
      assert a["error"].startswith("undecodable image") and b["error"].startswith("undecodable")
