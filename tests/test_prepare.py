"""prepare (the command line over `readers` and `shard_writer`): each input format to ArrayRecord
shards, bad records skipped by reason, exact resume."""

import csv
import io
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from semclip_jax import data as data_lib
from semclip_jax import storage
from semclip_jax.data import input_pipeline, prepare, readers, shard_writer, sources


def _jpeg(seed, size=(40, 30)):
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=90)
  return out.getvalue()


def _write_csv(path, rows, fields=("filename", "caption", "paraphrased", "negation")):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _csv_dataset(folder, n):
  """n JPEGs and a SugarCrepe++-layout CSV over them."""
  (folder / "images").mkdir(parents=True)
  rows = []
  for i in range(n):
    (folder / "images" / f"{i:03d}.jpg").write_bytes(_jpeg(i))
    rows.append({"filename": f"{i:03d}.jpg", "caption": f"a photo number {i}",
                 "paraphrased": f"picture number {i}", "negation": f"not a photo number {i}"})
  _write_csv(folder / "triples.csv", rows)
  return rows


def _csv_args(folder, out, *extra):
  return ["--format=csv", f"--input={folder / 'triples.csv'}", f"--image_dir={folder / 'images'}",
          f"--output_dir={out}", *extra]


def _records(out):
  source = sources.ArrayRecordSource(str(out))
  return [source[i] for i in range(len(source))]


def _summary(out):
  return json.loads((out / "summary.json").read_text())


def _pixels(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_csv_matches_triple_file_source(tmp_path):
  _csv_dataset(tmp_path, 12)
  out = tmp_path / "out"
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5", "--num_workers=3")) == 0
  assert sorted(p.name for p in out.glob("*.array_record")) == [
      f"triples-0000{i}.array_record" for i in range(3)]
  got = _records(out)
  expected = sources.csv_source(str(tmp_path / "triples.csv"), str(tmp_path / "images"), split=None)
  assert len(got) == len(expected) == 12
  for record, want in zip(got, (expected[i] for i in range(len(expected)))):
    for key in ("id", "caption", "paraphrase", "negation", "image"):
      assert record[key] == want[key], key
    np.testing.assert_array_equal(_pixels(record["image"]), _pixels(want["image"]))
  summary = _summary(out)
  assert (summary["read"], summary["written"], summary["shards"], summary["skipped"]) == (
      12, 12, 3, {})
  # ... and through the input pipeline: identical batches (decoded, cropped, tokenized).
  config = input_pipeline.default_config()
  config.update(batch_size=4, image_size=16, context_length=16, worker_count=0)
  batches = []
  for source in (sources.ArrayRecordSource(str(out)), expected):
    pipeline = input_pipeline.make_pipeline(source, config, train=False, process_index=0,
                                            process_count=1)
    batches.append(list(pipeline))
    pipeline.close()
  assert len(batches[0]) == len(batches[1]) == 3
  for a, b in zip(*batches):
    for key in ("id", "image", "tokens"):
      np.testing.assert_array_equal(a[key], b[key])


def test_csv_split_matches_csv_source(tmp_path):
  _csv_dataset(tmp_path, 20)
  out = tmp_path / "out"
  assert prepare.main(_csv_args(tmp_path, out, "--split=test", "--split_seed=3",
                                "--ratios=0.5,0.2,0.3")) == 0
  want = sources.csv_source(str(tmp_path / "triples.csv"), str(tmp_path / "images"), split="test",
                            split_seed=3, ratios=(0.5, 0.2, 0.3))
  assert [r["id"] for r in _records(out)] == [t.id for t in want.triples]
  assert [r["image_key"] for r in _records(out)] == [t.image for t in want.triples]  # file names
  assert len(want.triples) == 6
  # The official code's random row split: the same rows, in its shuffled order.
  out = tmp_path / "rows"
  assert prepare.main(_csv_args(tmp_path, out, "--split=val", "--split_seed=42",
                                "--split_by=rows")) == 0
  want = sources.csv_source(str(tmp_path / "triples.csv"), str(tmp_path / "images"), split="val",
                            split_seed=42, split_by="rows")
  assert [r["id"] for r in _records(out)] == [t.id for t in want.triples] and len(want.triples) == 2


def test_split_all_writes_the_folders_array_record_training_reads(tmp_path, capsys):
  _csv_dataset(tmp_path, 20)
  out = tmp_path / "shards"
  args = _csv_args(tmp_path, out, "--split=all", "--split_seed=3", "--ratios=0.5,0.2,0.3")
  assert prepare.main(args) == 0
  captured = capsys.readouterr()
  # The last line names the flags; with them `data.kind=array_record` reads each split.
  last = captured.out.splitlines()[-1]
  assert last == (f"train with: --config.data.kind=array_record --config.data.path={out}/train "
                  f"--config.data.eval_path={out}/val --config.data.test_path={out}/test")
  config = data_lib.default_config()
  for flag in last.split()[2:]:
    name, value = flag[len("--config.data."):].split("=", 1)
    config[name] = value
  for split, size in (("train", 10), ("val", 4), ("test", 6)):
    want = sources.csv_source(str(tmp_path / "triples.csv"), str(tmp_path / "images"),
                              split=split, split_seed=3, ratios=(0.5, 0.2, 0.3))
    source = data_lib.make_source(config, split)
    assert [source[i]["id"] for i in range(len(source))] == [t.id for t in want.triples]
    assert len(source) == size
    # Progress on stderr: one line per split (a short run), with the counts.
    assert f"prepare {split}: {size}/{size} records (100.0%) | written={size} skipped=0 | " in (
        captured.err)
  assert "\r" not in captured.err
  # Each folder resumes on its own: a finished run only prints the summaries and the flags.
  (out / "val" / "triples-00000.array_record").unlink()
  assert prepare.main(args) == 0
  assert "shard 00000: 4 of 4 records written" in capsys.readouterr().out
  assert prepare.main(args[:-3] + ["--split=train"]) == 0  # into <shards> itself: a new run
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"use with: --config.data.kind=array_record --config.data.path={out}")


def test_help_shows_the_defaults(capsys):
  with pytest.raises(SystemExit) as done:
    prepare.main(["--help"])
  assert done.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  assert "--config.data.eval_path=<output_dir>/val" in text  # the whole description
  for shown in ("(default: 0.8,0.1,0.1)", "(default: image)", "(default: 0.05)",
                "input records per shard (default: 10000)", "seed of the split (default: 0)"):
    assert shown in text, shown


def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _webdataset(tmp_path):
  """Two webdataset tars in `cc3m` (keys 0-3, then 4-5) and a side file `side.jsonl`; returns the
  images by key."""
  images, tars = {}, tmp_path / "cc3m"
  tars.mkdir()
  for i in range(6):
    with tarfile.open(tars / f"0000{i // 4}.tar", "a") as tar:  # keys 0-3, then 4-5
      key = f"{i:09d}"
      meta = {"key": key, "caption": f"caption {i}", "url": f"http://x/{i}.jpg",
              "status": "success"}
      if i < 2:  # triples inside the json
        meta.update(paraphrase=f"json paraphrase {i}", negation=f"json negation {i}")
      images[key] = _jpeg(100 + i)
      _tar_add(tar, f"{key}.jpg", images[key])
      _tar_add(tar, f"{key}.txt", f"caption {i}".encode())
      _tar_add(tar, f"{key}.json", json.dumps(meta).encode())
  with open(tmp_path / "side.jsonl", "w", encoding="utf-8") as f:
    for i in (2, 3, 4, 0):  # 0 is in the json too: the json wins
      f.write(json.dumps({"caption": f"caption {i}", "paraphrase": f"side paraphrase {i}",
                          "negation": f"side negation {i}"}) + "\n")
  return images


def test_webdataset_with_json_and_side_file(tmp_path, capsys):
  images, tars = _webdataset(tmp_path), tmp_path / "cc3m"
  out = tmp_path / "out"
  args = ["--format=webdataset", f"--input={tars}", "--records_per_shard=3",
          f"--triples={tmp_path / 'side.jsonl'}", f"--output_dir={out}"]
  assert prepare.main(args) == 0
  records = _records(out)
  assert [r["id"] for r in records] == [f"{i:09d}" for i in range(5)]
  got = {r["id"]: r for r in records}
  for i in range(5):
    record, where = got[f"{i:09d}"], "json" if i < 2 else "side"
    assert record["caption"] == f"caption {i}"
    assert record["paraphrase"] == f"{where} paraphrase {i}"
    assert record["negation"] == f"{where} negation {i}"
    assert record["image"] == images[f"{i:09d}"]
  summary = _summary(out)
  assert summary["skipped"] == {readers.NO_TRIPLE: {"count": 1, "examples": ["000000005"]}}
  assert (summary["read"], summary["written"], summary["shards"]) == (6, 5, 2)
  (out / "triples-00000.array_record").unlink()  # redone alone; shard 1 is passed over unread
  capsys.readouterr()
  assert prepare.main(args) == 0
  assert _records(out) == records
  # Progress counts shard 1's records as done before (no total: tars are streamed).
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("prepare: 6 records | written=5 skipped=1 | ") and "ETA" not in line


def _ccneg_dataset(tmp_path, n=5):
  """A file with the structure of CoN-CLIP's ccneg_preprocessed.pt and its image folder."""
  torch = pytest.importorskip("torch")
  folder = tmp_path / "ccneg_dataset" / "ccneg_images" / "cc3m_subset_images_extracted_final"
  folder.mkdir(parents=True)
  paths, annotations = [], []
  for i in range(n):
    (folder / f"{i:09d}.jpg").write_bytes(_jpeg(200 + i))
    paths.append(f"/workspace/datasets/cc3m/ccneg_images/cc3m_subset_images_extracted_final/"
                 f"{i:09d}.jpg")
    annotations.append({
        "json": {"caption": f"a dog on grass {i}", "key": f"{i:09d}", "status": "success"},
        "sop_data": {"negative-prompt": f"a dog, but no grass {i}",
                     "sop_decomposition": {"subject": "dog", "object": "grass"},
                     "sop_chosen_object": "grass"}})
  torch.save({"image_paths": paths, "annotations": annotations, "num_ops": {1: list(range(n))}},
             tmp_path / "ccneg_preprocessed.pt")
  _write_csv(tmp_path / "paraphrases.csv",
             [{"caption": f"a dog on grass {i}", "paraphrase": f"grass under a dog {i}",
               "negation": "unused"} for i in range(n - 1)],  # the last has no paraphrase
             fields=("caption", "paraphrase", "negation"))
  return folder


def test_ccneg_pt(tmp_path, monkeypatch):
  folder = _ccneg_dataset(tmp_path)
  out = tmp_path / "out"
  args = ["--format=ccneg_pt", f"--input={tmp_path / 'ccneg_preprocessed.pt'}",
          f"--triples={tmp_path / 'paraphrases.csv'}"]
  assert prepare.main([*args, f"--image_dir={tmp_path / 'ccneg_dataset'}",
                       f"--output_dir={out}"]) == 0
  got = _records(out)
  assert [r["id"] for r in got] == [f"ccneg:{i}" for i in range(4)]
  for i, record in enumerate(got):
    assert record["caption"] == f"a dog on grass {i}"
    assert record["paraphrase"] == f"grass under a dog {i}"
    assert record["negation"] == f"a dog but no grass {i}"  # commas dropped, as CoN-CLIP does
    assert record["image"] == (folder / f"{i:09d}.jpg").read_bytes()
  assert _summary(out)["skipped"] == {readers.NO_PARAPHRASE: {"count": 1, "examples": ["ccneg:4"]}}
  # The image folder itself works too; the official split is the last CCNEG_EVAL_ITEMS items.
  monkeypatch.setattr(sources, "CCNEG_EVAL_ITEMS", 2)
  assert prepare.main([*args, f"--image_dir={folder}", f"--output_dir={tmp_path / 'test'}",
                       "--split=test", "--ccneg_official"]) == 0
  assert [r["id"] for r in _records(tmp_path / "test")] == ["ccneg:3"]
  assert _summary(tmp_path / "test")["read"] == 2


def test_sugarcrepe_json(tmp_path):
  (tmp_path / "coco").mkdir()
  for i in range(4):
    (tmp_path / "coco" / f"{i:012d}.jpg").write_bytes(_jpeg(300 + i))
  record = lambda i: {"filename": f"{i:012d}.jpg", "caption": f"cap {i}", "caption2": f"para {i}",
                      "negative_caption": f"neg {i}"}
  (tmp_path / "sc").mkdir()
  # The release's form (a list of records with "id") and SugarCrepe's (an id -> record map).
  (tmp_path / "sc" / "swap_obj.json").write_text(json.dumps(
      [{"id": i, **record(i)} for i in range(3)]))
  (tmp_path / "sc" / "replace_rel.json").write_text(json.dumps({"7": record(3)}))
  out = tmp_path / "out"
  assert prepare.main(["--format=sugarcrepe_json", f"--input={tmp_path / 'sc'}",
                       f"--image_dir={tmp_path / 'coco'}", f"--output_dir={out}"]) == 0
  got = _records(out)
  assert [r["id"] for r in got] == ["swap_obj:0", "swap_obj:1", "swap_obj:2", "replace_rel:7"]
  for r, i in zip(got, range(4)):
    assert (r["caption"], r["paraphrase"], r["negation"]) == (f"cap {i}", f"para {i}", f"neg {i}")
    assert r["image"] == (tmp_path / "coco" / f"{i:012d}.jpg").read_bytes()
  # A record without a field is a structural error naming file and field.
  (tmp_path / "swap_att.json").write_text(json.dumps([{"id": 0, "filename": "x.jpg",
                                                       "caption": "c", "caption2": "p"}]))
  assert prepare.main(["--format=sugarcrepe_json", f"--input={tmp_path / 'swap_att.json'}",
                       f"--image_dir={tmp_path / 'coco'}", f"--output_dir={tmp_path / 'o2'}"]) == 2


def test_bad_records_are_skipped_and_counted(tmp_path):
  rows = _csv_dataset(tmp_path, 12)
  images = tmp_path / "images"
  (images / "002.jpg").write_bytes(np.random.default_rng(9).bytes(2000))  # corrupt: random bytes
  good = (images / "004.jpg").read_bytes()
  (images / "004.jpg").write_bytes(good[:len(good) // 2])  # truncated JPEG
  rows[6]["filename"] = "nowhere.jpg"  # missing file
  rows[8]["caption"] = "   "  # empty caption
  (images / "010.jpg").write_bytes(b"")  # zero-size file
  _write_csv(tmp_path / "triples.csv", rows)
  out = tmp_path / "out"
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=4")) == 0
  ids = lambda i: f"triples.csv:{i + 2}"  # read_triples names rows by file and line
  assert [r["id"] for r in _records(out)] == [ids(i) for i in (0, 1, 3, 5, 7, 9, 11)]
  summary = _summary(out)
  assert summary["skipped"] == {
      shard_writer.UNDECODABLE: {"count": 2, "examples": [ids(2), ids(4)]},
      shard_writer.NO_IMAGE: {"count": 1, "examples": [ids(6)]},
      "empty or non-string caption": {"count": 1, "examples": [ids(8)]},
      shard_writer.EMPTY_IMAGE: {"count": 1, "examples": [ids(10)]}}
  assert (summary["read"], summary["written"]) == (12, 7)


def _png_header(width, height):
  """A greyscale PNG whose header declares width × height, with almost no pixel data."""
  chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                              + struct.pack(">I", zlib.crc32(kind + body)))
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_untrusted_image_paths_and_oversized_images_are_skipped(tmp_path):
  """Image names leading outside --image_dir (`..`, absolute, a symlink out) or to no regular
  file (a FIFO, a device) are never read into shards; images over --max_image_pixels (from the
  header) and PIL's decompression bombs are skipped by reason too."""
  rows = _csv_dataset(tmp_path, 12)
  images = tmp_path / "images"
  (tmp_path / "secret.jpg").write_bytes(_jpeg(99))
  os.symlink(tmp_path / "secret.jpg", images / "link_out.jpg")
  os.mkfifo(images / "fifo.jpg")
  (images / "bomb.png").write_bytes(_png_header(20_000, 10_000))
  (images / "big.jpg").write_bytes(_jpeg(98, size=(50, 25)))  # 1,250 pixels; the rest 1,200
  for i, name in enumerate(["../secret.jpg", str(tmp_path / "secret.jpg"), "link_out.jpg",
                            "fifo.jpg", "/dev/null", "bomb.png", "big.jpg"]):
    rows[i]["filename"] = name
  _write_csv(tmp_path / "triples.csv", rows)
  out = tmp_path / "out"
  run = lambda: prepare.main(_csv_args(tmp_path, out, "--max_image_pixels=1200"))
  done = []
  thread = threading.Thread(target=lambda: done.append(run()), daemon=True)
  thread.start()
  thread.join(120)
  if thread.is_alive():  # blocked on the FIFO: unblock the reader (it gets EOF), then fail
    os.close(os.open(images / "fifo.jpg", os.O_WRONLY | os.O_NONBLOCK))
    thread.join(60)
    pytest.fail("prepare blocked reading a FIFO")
  assert done == [0]
  ids = lambda *rows: [f"triples.csv:{i + 2}" for i in rows]
  assert [r["id"] for r in _records(out)] == ids(*range(7, 12))
  assert _summary(out)["skipped"] == {
      shard_writer.OUTSIDE_IMAGE_DIR: {"count": 4, "examples": ids(0, 1, 2, 4)},
      shard_writer.NOT_A_FILE: {"count": 1, "examples": ids(3)},
      shard_writer.TOO_LARGE: {"count": 2, "examples": ids(5, 6)}}


def test_resume_refuses_a_changed_input(tmp_path, capsys):
  rows = _csv_dataset(tmp_path, 6)
  out = tmp_path / "out"
  args = _csv_args(tmp_path, out, "--records_per_shard=2")
  assert prepare.main(args) == 0
  # The same bytes again (a copy: another mtime) are the same input; the run is just finished.
  text = (tmp_path / "triples.csv").read_bytes()
  (tmp_path / "triples.csv").unlink()
  (tmp_path / "triples.csv").write_bytes(text)
  assert prepare.main(args) == 0
  # One caption changed, the size kept: its shards would mix with the old ones.
  rows[3]["caption"] = rows[3]["caption"].replace("photo", "image")
  _write_csv(tmp_path / "triples.csv", rows)
  assert len((tmp_path / "triples.csv").read_bytes()) == len(text)
  (out / "triples-00002.array_record").unlink()  # and an incomplete run: not resumed either
  capsys.readouterr()
  assert prepare.main(args) == 2
  err = capsys.readouterr().err
  assert f"{tmp_path / 'triples.csv'}: not the content the shards in {out}" in err
  assert "new --output_dir, or delete" in err
  assert [r["caption"] for r in _records(out)] == [f"a photo number {i}" for i in range(4)]
  # Once the folder holds no shards there is nothing to mix: the new content is written.
  for shard in out.glob("*.array_record"):
    shard.unlink()
  assert prepare.main(args) == 0
  assert _records(out)[3]["caption"] == "a image number 3"


def test_decoded_pixels_are_encoded_as_jpeg(tmp_path):
  y, x = np.mgrid[:30, :40]
  pixels = np.stack([6 * x, 8 * y, 3 * (x + y)], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
  items = [shard_writer.Item("a", "c", "p", "n", image=pixels),
           shard_writer.Item("b", "c", "p", "n")]
  summary = shard_writer.write_shards(lambda wanted: items, str(tmp_path), {"what": "pixels"})
  (record,) = _records(tmp_path)
  assert record["image"][:2] == b"\xff\xd8"
  assert np.abs(_pixels(record["image"]).astype(int) - pixels).max() <= 8  # JPEG quality 95
  assert summary["skipped"] == {shard_writer.NO_IMAGE: {"count": 1, "examples": ["b"]}}


_KILLER = """
  import os, signal, sys
  from semclip_jax.data import prepare, shard_writer
  encode, calls = shard_writer._encode, [0]
  def killing_encode(item, *args):  # dies in the third shard, like a preempted machine
    calls[0] += 1
    if calls[0] == {kill_at}:
      os.kill(os.getpid(), signal.SIGKILL)
    return encode(item, *args)
  shard_writer._encode = killing_encode
  sys.exit(prepare.main(sys.argv[1:]))
"""


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, capsys):
  _csv_dataset(tmp_path, 23)
  reference, out = tmp_path / "reference", tmp_path / "out"
  assert prepare.main(_csv_args(tmp_path, reference, "--records_per_shard=5")) == 0
  script = tmp_path / "killer.py"
  script.write_text(textwrap.dedent(_KILLER).replace("{kill_at}", "13"))
  repo = pathlib.Path(__file__).resolve().parents[1]
  run = subprocess.run(
      [sys.executable, str(script), *_csv_args(tmp_path, out, "--records_per_shard=5",
                                               "--num_workers=1")],
      capture_output=True, check=False, env={**os.environ, "PYTHONPATH": str(repo)})
  assert run.returncode == -signal.SIGKILL, run.stderr.decode()
  names = sorted(p.name for p in out.iterdir())
  assert names[:3] == ["progress.json", "triples-00000.array_record", "triples-00001.array_record"]
  assert len(names) == 4 and re.fullmatch(r"triples-00002\.array_record\.\w+\.tmp", names[3])
  stamp = lambda pattern: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                           for p in out.glob(pattern)}
  before = stamp("*.array_record")
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  assert stamp("triples-0000[01].array_record") == before  # completed shards left alone
  assert not list(out.glob("*.tmp"))
  got, want = _records(out), _records(reference)
  assert [r["id"] for r in got] == [r["id"] for r in want]
  assert len({r["id"] for r in got}) == 23
  assert got == want
  assert _summary(out)["read"] == 23

  # A completed shard lost since is redone; a finished run then reads no input at all.
  (out / "triples-00003.array_record").unlink()
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  assert _records(out) == want
  stamps = stamp("*.array_record")
  monkeypatch.setattr(shard_writer, "_encode",
                      lambda item: pytest.fail("a finished run read input"))
  monkeypatch.setattr(sources, "read_triples", lambda *a, **k: pytest.fail("read input"))
  capsys.readouterr()
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  assert "23 of 23 records written to 5 shards" in capsys.readouterr().out
  assert stamp("*.array_record") == stamps

  # Other settings in the same folder are refused, naming what differs.
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=7")) == 2
  assert "records_per_shard" in capsys.readouterr().err
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5", "--split=train")) == 2
  assert "split" in capsys.readouterr().err


def test_structural_errors_exit_2(tmp_path, capsys, monkeypatch):
  _csv_dataset(tmp_path, 3)
  rows = [{"filename": "000.jpg", "caption": "c", "paraphrased": "p"}]
  _write_csv(tmp_path / "triples.csv", rows, fields=("filename", "caption", "paraphrased"))
  assert prepare.main(_csv_args(tmp_path, tmp_path / "out", "--columns=image=filename,"
                                "caption=caption,paraphrase=paraphrased,negation=negation")) == 2
  err = capsys.readouterr().err
  assert "'negation'" in err and "triples.csv" in err
  assert prepare.main(_csv_args(tmp_path, tmp_path / "out", "--layout=sugarcrepe_pp")) == 2
  err = capsys.readouterr().err
  assert "'negation'" in err and "triples.csv" in err
  assert prepare.main(["--format=csv", f"--input={tmp_path / 'nothing.csv'}",
                       f"--image_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}"]) == 2
  assert "nothing.csv" in capsys.readouterr().err
  (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
  assert prepare.main(["--format=webdataset", f"--input={tmp_path / 'broken.tar'}",
                       f"--output_dir={tmp_path / 'o3'}"]) == 2
  assert "broken.tar" in capsys.readouterr().err
  (tmp_path / "side.csv").write_text("caption,paraphrase,negation\n")
  ccneg = ["--format=ccneg_pt", f"--input={tmp_path / 'x.pt'}", f"--image_dir={tmp_path}",
           f"--triples={tmp_path / 'side.csv'}", f"--output_dir={tmp_path / 'o4'}"]
  (tmp_path / "x.pt").write_bytes(b"\x80\x02 not a torch file")
  assert prepare.main(ccneg) == 2
  assert "x.pt" in capsys.readouterr().err
  monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
  assert prepare.main(ccneg) == 2
  err = capsys.readouterr().err
  assert "x.pt" in err and "PyTorch" in err


def test_gcs_output_resumes_and_reads_back_like_local_shards(tmp_path, gcs_bucket, monkeypatch,
                                                             capsys):
  monkeypatch.chdir(tmp_path)  # a gs:// path mistaken for a local one would appear here
  _csv_dataset(tmp_path, 12)
  local, out = tmp_path / "local", f"{gcs_bucket}/shards"
  assert prepare.main(_csv_args(tmp_path, local, "--records_per_shard=5")) == 0
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  assert f"12 of 12 records written to 3 shards in {out}" in capsys.readouterr().out
  assert not (tmp_path / "gs:").exists()
  shards = [f"triples-0000{i}.array_record" for i in range(3)]
  assert storage.listdir(out) == ["progress.json", "summary.json", *shards]
  assert json.loads(storage.read_text(f"{out}/summary.json")) == _summary(local)
  for name in shards:  # the shard objects are the local files, byte for byte
    assert storage.read_bytes(f"{out}/{name}") == (local / name).read_bytes()
  fs = storage._fs(out)  # pylint: disable=protected-access
  generations = lambda: {n: fs.info(f"{out}/{n}")["generation"] for n in storage.listdir(out)
                         if n.endswith(".array_record")}
  before = generations()

  # A shard lost since is redone alone; a finished run then reads no input and rewrites no shard.
  storage.remove(f"{out}/{shards[1]}")
  assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  after = generations()
  assert {n: after[n] == before[n] for n in shards} == {shards[0]: True, shards[1]: False,
                                                         shards[2]: True}
  with monkeypatch.context() as patch:
    patch.setattr(shard_writer, "_encode", lambda item: pytest.fail("a finished run read"))
    assert prepare.main(_csv_args(tmp_path, out, "--records_per_shard=5")) == 0
  assert generations() == after

  # Read back from the bucket (local copies under the cache folder) as the local shards read.
  want = _records(local)
  source = sources.ArrayRecordSource(out, cache_dir=str(tmp_path / "cache"))
  assert source.paths == [f"{out}/{n}" for n in shards]
  assert all(p.startswith(str(tmp_path / "cache")) for p in source.local_paths)
  assert [source[i] for i in range(len(source))] == want and len(want) == 12
  config = data_lib.default_config()
  config.update(kind="array_record", path=out, shard_cache_dir=str(tmp_path / "cache2"))
  source = data_lib.make_source(config, "train")
  assert [source[i] for i in range(len(source))] == want
  assert (tmp_path / "cache2").is_dir() and not (tmp_path / "gs:").exists()


@pytest.mark.parametrize("option,value", [("--output_dir", "s3://x/y"), ("--output_dir", "gs:/x"),
                                          ("--image_dir", "s3://x/images")])
def test_unsupported_url_is_one_error_naming_the_option(option, value, tmp_path, monkeypatch,
                                                        capsys):
  monkeypatch.chdir(tmp_path)
  _csv_dataset(tmp_path, 2)
  before = sorted(p.name for p in tmp_path.iterdir())
  args = {"--output_dir": tmp_path / "out", "--image_dir": tmp_path / "images", option: value}
  assert prepare.main(["--format=csv", f"--input={tmp_path / 'triples.csv'}",
                       *(f"{k}={v}" for k, v in args.items())]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and len(captured.err.splitlines()) == 1
  assert captured.err.startswith(f"error: {option}: {value!r}")
  assert sorted(p.name for p in tmp_path.iterdir()) == before  # no "gs:" or "s3:" folder, no out


def test_gcs_inputs_of_every_format_give_the_records_of_local_ones(tmp_path, gcs_bucket):
  src = tmp_path / "src"
  _csv_dataset(src / "csv", 4)
  _webdataset(src)
  (src / "sc").mkdir()
  (src / "sc" / "swap_obj.json").write_text(json.dumps(
      [{"id": i, "filename": f"{i:03d}.jpg", "caption": f"cap {i}", "caption2": f"para {i}",
        "negative_caption": f"neg {i}"} for i in range(3)]))
  images = _ccneg_dataset(src)  # the image folder, inside the CC-Neg folder
  storage.upload_folder(str(src), f"{gcs_bucket}/src")
  runs = {
      "csv": ["--format=csv", "--input={}/csv/triples.csv", "--image_dir={}/csv/images"],
      "webdataset": ["--format=webdataset", "--input={}/cc3m", "--triples={}/side.jsonl"],
      "sugarcrepe": ["--format=sugarcrepe_json", "--input={}/sc", "--image_dir={}/csv/images"],
      "ccneg_root": ["--format=ccneg_pt", "--input={}/ccneg_preprocessed.pt",
                     "--triples={}/paraphrases.csv", "--image_dir={}/ccneg_dataset"],
      "ccneg_images": ["--format=ccneg_pt", "--input={}/ccneg_preprocessed.pt",
                       "--triples={}/paraphrases.csv",
                       "--image_dir={}/" + str(images.relative_to(src))],
  }
  for name, args in runs.items():
    got = {}
    for root in (str(src), f"{gcs_bucket}/src"):
      out = tmp_path / name / str(len(got))
      assert prepare.main([a.format(root) for a in args] + [f"--output_dir={out}"]) == 0, name
      got[root] = _records(out)
    local, remote = got.values()
    assert local == remote and len(local) >= 3, name
    assert all(r["image"] for r in remote), name
