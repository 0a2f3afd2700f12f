"""triples.files: ArrayRecord shards in, shards and CSV out, images kept."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from semclip_jax.data import prepare, sources
from semclip_jax.data.triples import files, rules
from triples_helpers import read_csv


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
