"""triples.files: ArrayRecord shards in, shards and CSV out, images kept."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from semclip_jax import storage
from semclip_jax.data import prepare, sources
from semclip_jax.data.triples import files, rules
from semclip_jax.data.triples.__main__ import main
from triples_helpers import cached_pairs, http_backends, read_csv
from triples_helpers import server  # pylint: disable=unused-import  (a pytest fixture)


def _jpeg(seed):
  out = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(out, format="JPEG")
  return out.getvalue()


def test_array_record_in_and_out(tmp_path):
  (tmp_path / "images").mkdir()
  captions = ["A dog is running on the grass.", "Two cats sleep on a sofa.", ""]
  with open(tmp_path / "triples.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["filename", "caption", "paraphrased", "negation"])
    for i, caption in enumerate(captions):
      (tmp_path / "images" / f"{i}.jpg").write_bytes(_jpeg(i))
      writer.writerow([f"{i}.jpg", caption or "placeholder", "x", "y"])
  prepare.prepare("csv", [str(tmp_path / "triples.csv")], str(tmp_path / "in"),
                  image_dir=str(tmp_path / "images"), log=lambda m: None)
  files.run(str(tmp_path / "in"), str(tmp_path / "out"), rules.RulesBackend(),
            log=lambda m: None)
  before, after = sources.ArrayRecordSource(str(tmp_path / "in")), sources.ArrayRecordSource(
      str(tmp_path / "out"))
  assert len(after) == 3
  for i in range(3):
    assert after[i]["image"] == before[i]["image"] and after[i]["id"] == before[i]["id"]
    assert after[i]["paraphrase"] == rules.paraphrase(before[i]["caption"])
    assert after[i]["negation"] == rules.negate(before[i]["caption"])
  files.run(str(tmp_path / "in"), str(tmp_path / "out.csv"), rules.RulesBackend(),
            log=lambda m: None)
  assert [r["negation"] for r in read_csv(tmp_path / "out.csv")] == [
      rules.negate(before[i]["caption"]) for i in range(3)]
  with pytest.raises(ValueError, match="ArrayRecord input"):
    files.run(str(tmp_path / "out.csv"), str(tmp_path / "shards"), rules.RulesBackend())


def test_bucket_input_and_outputs_with_a_local_answer_cache(tmp_path, gcs_bucket, server,
                                                            monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would appear here
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  (tmp_path / "images").mkdir()
  captions = ["A dog runs on the beach.", "Two cats sleep on a sofa."]
  rows = [{"filename": f"{i}.jpg", "caption": c, "paraphrased": "x", "negation": "y"}
          for i, c in enumerate(captions)]
  with open(tmp_path / "triples.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  for i in range(len(captions)):
    (tmp_path / "images" / f"{i}.jpg").write_bytes(_jpeg(i))
  # Shards in the bucket -> shards in the bucket: the records of the same local run.
  quiet = lambda m: None
  for root in (str(tmp_path), gcs_bucket):
    prepare.prepare("csv", [str(tmp_path / "triples.csv")], f"{root}/in",
                    image_dir=str(tmp_path / "images"), log=quiet)
    files.run(f"{root}/in", f"{root}/out", rules.RulesBackend(), log=quiet)
  local = sources.ArrayRecordSource(str(tmp_path / "out"))
  remote = sources.ArrayRecordSource(f"{gcs_bucket}/out", cache_dir=str(tmp_path / "shards"))
  assert [remote[i] for i in range(2)] == [local[i] for i in range(2)]
  assert remote[0]["negation"] == rules.negate(captions[0])
  assert storage.isfile(f"{gcs_bucket}/out/triples_stats.json")
  # Captions in the bucket -> a CSV in the bucket; the answer cache (SQLite) stays on this host.
  storage.upload(str(tmp_path / "triples.csv"), f"{gcs_bucket}/captions.csv")
  for source, out in ((str(tmp_path / "triples.csv"), str(tmp_path / "out.csv")),
                      (f"{gcs_bucket}/captions.csv", f"{gcs_bucket}/out.csv")):
    files.run(source, out, *http_backends("ollama", server.url), log=quiet)
  assert storage.read_bytes(f"{gcs_bucket}/out.csv") == (tmp_path / "out.csv").read_bytes()
  assert storage.isfile(f"{gcs_bucket}/out.csv.stats.json")
  cache = tmp_path / "xdg" / "semclip_jax" / "triples_cache" / "gs" / gcs_bucket[5:] / (
      "out.csv.cache.sqlite")
  assert len(cached_pairs(cache)) == 8  # 2 captions: paraphrase, negation, their verifications
  assert not (tmp_path / "gs:").exists()
  # A cache in the bucket is refused before anything runs, naming the option.
  capsys.readouterr()
  assert main([f"--input={gcs_bucket}/captions.csv", f"--output={gcs_bucket}/again.csv",
               "--backend=rules", f"--cache={gcs_bucket}/cache.sqlite"]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("error: --cache: ")
  assert not storage.exists(f"{gcs_bucket}/again.csv") and not (tmp_path / "gs:").exists()
