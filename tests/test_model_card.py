"""The export's model card (metadata the Hub reads back, body from config and results) and
push_to_hub against a stand-in of the Hub's HTTP API on 127.0.0.1 (never the real Hub)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import socket
import threading
import time
from typing import Any, Iterator

import huggingface_hub
import pytest
import yaml
from huggingface_hub import constants as hub_constants

from semclip_jax import config as config_lib
from semclip_jax import losses, model_card, storage

HUB_ID = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


def _config(**sections: dict[str, Any]) -> dict[str, Any]:
  """A tiny run config as workdir/config.json holds it; `sections` update its sections."""
  config = {
      "seed": 0, "total_steps": 300,
      "model": {"preset": "B/32", "init_from": HUB_ID, "init_arch": "", "dtype": "bfloat16"},
      "loss": {"name": "semclip", "alpha": None, "beta": 0.5, "gamma": None,
               "num_projection_vectors": 2, "learnable_projection": False, "paper_compat": False},
      "optim": {"learning_rate": 5e-5, "schedule": "cosine", "warmup_steps": 50,
                "weight_decay": 0.2, "grad_accum_steps": 2, "freeze": [r"^model\.vision\."]},
      "data": {"kind": "csv", "layout": "ccneg", "path": "/data/ccneg.csv", "batch_size": 512,
               "ccneg_official": True, "ccneg_val_fraction": 0.05, "eval_split": "val",
               "test_split": "test"},
      "checkpoint": {"best_metric": "val/ccneg/accuracy"},
      "evals": {"ccneg": {"type": "ccneg", "every_steps": 100},
                "sugarcrepe_pp": {"type": "sugarcrepe_pp", "split": "all"}},
  }
  for name, values in sections.items():
    config[name] = {**config[name], **values}
  return config


RESULTS = {"step": 300, "val/ccneg/accuracy": 0.875, "test/ccneg/accuracy": 0.8125,
           "test/sugarcrepe_pp/overall/itt": 0.625}


def _card(tmp_path, config=None, results=RESULTS, **kwargs) -> tuple[str, str]:
  path = model_card.write_model_card(str(tmp_path), config or _config(), results, **kwargs)
  with open(path, encoding="utf-8") as f:
    return path, f.read()


# ----------------------------------------------------------------------------------------------
# The card.
# ----------------------------------------------------------------------------------------------
def test_card_metadata_round_trips_through_the_hub_reader(tmp_path):
  path, _ = _card(tmp_path, license="mit")
  assert path == os.path.join(str(tmp_path), "README.md")
  expected = {"library_name": "transformers", "pipeline_tag": "zero-shot-image-classification",
              "base_model": HUB_ID, "license": "mit",
              "tags": ["clip", "semclip", "semclip_jax", "negation", "paraphrase"]}
  # CC-Neg is not a Hub dataset: no `datasets` key (the text names it instead).
  assert huggingface_hub.metadata_load(path) == expected
  assert model_card.card_metadata(_config(), license="mit") == expected
  card = huggingface_hub.ModelCard.load(path)
  for key, value in expected.items():
    assert getattr(card.data, key) == value, key
  assert card.data.datasets is None
  assert "CC-Neg" in card.text


def test_card_body_loss_training_and_results_test_first(tmp_path):
  _, text = _card(tmp_path, repo_id="me/semclip-b32")
  assert "arXiv 2511.16527" in text
  # Weights from the loss section: set ones as is, unset ones the variant's (losses' one table).
  defaults = losses.variant_weights("semclip")
  alpha = f"`loss.alpha` (α, contrastive term) = {defaults['alpha']:g} (the `semclip` default)"
  assert alpha + "\n" in text
  assert "`loss.beta` (β, paraphrase term) = 0.5\n" in text
  assert f"`loss.gamma` (γ, negation term) = {defaults['gamma']:g} (the `semclip` default)" in text
  assert "Training steps: 300" in text
  assert "Batch size: 512 triples per update (2 accumulated micro-batches of 256" in text
  assert "peak learning rate 5e-05" in text
  # The protocol, and held-out rows before validation rows.
  assert "`test/<eval>/<metric>` are from the held-out test split" in text
  assert "`val/<eval>/<metric>` are from the validation split" in text
  assert "`sugarcrepe_pp`: its own data (split `all`)" in text
  rows = re.findall(r"^\| (test \(held out\)|validation) \| `([^`]+)` \| ([0-9.]+) \|$", text, re.M)
  assert rows == [("test (held out)", "ccneg/accuracy", "0.8125"),
                  ("test (held out)", "sugarcrepe_pp/overall/itt", "0.6250"),
                  ("validation", "ccneg/accuracy", "0.8750")]
  assert 'pipeline("zero-shot-image-classification", model="me/semclip-b32")' in text
  assert 'CLIPModel.from_pretrained("me/semclip-b32")' in text
  assert 'CLIPProcessor.from_pretrained("me/semclip-b32")' in text


def test_card_of_the_paper_recipe_reads_the_real_config_fields(tmp_path):
  """The card reads fields by name: the real config's names must be the ones it shows."""
  config = config_lib.paper_finetuning(config_lib.base_config())
  config.data.layout = "sugarcrepe_pp"
  plain = json.loads(config.to_json_best_effort())  # as workdir/config.json holds it
  path, text = _card(tmp_path, plain, None)
  assert huggingface_hub.metadata_load(path)["datasets"] == ["Aman-J/SugarCrepe_pp"]
  for line in (f"Training steps: {config.total_steps}", f"Batch size: {config.data.batch_size}",
               f"peak learning rate {config.optim.learning_rate:g}", "`loss.alpha`",
               "`loss.beta`", "`loss.gamma`", "`loss.num_projection_vectors`", "SugarCrepe++",
               "(the image tower)", "No evaluation results were recorded"):
    assert line in text, line
  # A ConfigDict is read the same as its JSON.
  assert model_card.model_card_text(config, None) == model_card.model_card_text(plain, None)


@pytest.mark.parametrize("init_from", ["", "/ckpts/negclip.pth", "negclip.pt", "folder", "a/b/c"])
def test_base_model_only_for_a_hub_id(tmp_path, monkeypatch, init_from):
  monkeypatch.chdir(tmp_path)
  os.mkdir("folder")  # an existing local folder is a path, never a hub id
  config = _config(model={"init_from": init_from})
  path, text = _card(tmp_path / "folder", config)
  assert "base_model" not in huggingface_hub.metadata_load(path)
  if init_from:
    assert f"fine-tuned from a local checkpoint, `{init_from}`" in text
  else:
    assert "trained from scratch" in text and "`B/32` preset" in text
  assert model_card.hub_model_id(HUB_ID) == HUB_ID


@pytest.mark.parametrize("data, datasets, described", [
    ({"kind": "shapes"}, None, "procedural *shapes* dataset"),
    ({"kind": "csv", "layout": "ccneg"}, None, "CC-Neg (Singh et al."),
    ({"kind": "csv", "layout": "sugarcrepe_pp"}, ["Aman-J/SugarCrepe_pp"], "SugarCrepe++"),
    ({"kind": "csv", "layout": None, "path": "/x/sugarcrepe_pp_paraphrased.csv"},
     ["Aman-J/SugarCrepe_pp"], "SugarCrepe++"),
    ({"kind": "csv", "layout": None, "path": "/x/mine.jsonl", "ccneg_official": False,
      "split_by": "rows"}, None, "from `mine.jsonl`; a random split of the rows"),
    ({"kind": "array_record"}, None, "ArrayRecord shards"),
])
def test_datasets_per_data_kind(tmp_path, data, datasets, described):
  path, text = _card(tmp_path, _config(data=data))
  assert huggingface_hub.metadata_load(path).get("datasets") == datasets
  assert described in text


def test_only_the_loss_fields_that_exist_are_shown(tmp_path):
  _, text = _card(tmp_path, {"loss": {"name": "siglip", "siglip_init_logit_bias": -10.0}}, {})
  assert "`siglip`" in text and "`loss.siglip_init_logit_bias` (initial bias) = -10" in text
  assert "logit_scale" not in text and "loss.alpha" not in text
  assert "Training steps" not in text and "No evaluation results" in text
  # A set weight is shown as set, and the variant table is not needed for it.
  _, text = _card(tmp_path, _config(loss={"name": "negation_only", "alpha": 2.0, "beta": None,
                                          "gamma": 3.0}))
  assert "`loss.alpha` (α, contrastive term) = 2\n" in text
  assert "`loss.beta` (β, paraphrase term) = 0 (the `negation_only` default)" in text


def test_card_write_replaces_atomically(tmp_path):
  (tmp_path / "README.md").write_text("old card")
  (tmp_path / "config.json").write_text(json.dumps(
      {"projection_dim": 64, "vision_config": {"image_size": 32, "patch_size": 8,
                                               "num_hidden_layers": 2, "hidden_size": 64}}))
  _, text = _card(tmp_path)
  assert text.startswith("---\nlibrary_name: transformers\n")
  assert "32×32 px images, 8×8 px patches, 2 layers of width 64" in text
  assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json"]  # no temporary file left


# ----------------------------------------------------------------------------------------------
# push_to_hub against a stand-in Hub.
# ----------------------------------------------------------------------------------------------
class StandInHub:
  """The Hub's HTTP API as huggingface_hub 2.4.0's create_repo and upload_folder call it:
  create a repo, validate README metadata, preupload (every file "regular": its bytes come inline,
  base64, in the commit's NDJSON, so no LFS or xet upload happens) and commit. Anything else is
  answered 404 and recorded in `unexpected`."""

  def __init__(self, create_status: int = 200):
    self.create_status = create_status
    self.repos: dict[str, dict[str, Any]] = {}  # repo id -> create payload
    self.files: dict[str, dict[str, bytes]] = {}  # repo id -> path -> bytes
    self.commits: list[dict[str, Any]] = []  # commit headers
    self.requests: list[str] = []
    self.unexpected: list[str] = []
    self.authorization: set[str] = set()
    self.url = ""

  def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, Any]:
    self.requests.append(f"{method} {path}")
    self.authorization.add(headers.get("authorization", ""))
    path = path.partition("?")[0]
    repo = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/main", path)
    if method == "POST" and path == "/api/repos/create":
      payload = json.loads(body)
      repo_id = f"{payload['organization']}/{payload['name']}"
      if self.create_status != 200:
        return self.create_status, {"error": f"You don't have the rights to create {repo_id}"}
      self.repos[repo_id] = payload
      return 200, {"url": f"{self.url}/{repo_id}"}
    if method == "POST" and path == "/api/validate-yaml":  # the Hub parses the front matter
      front = json.loads(body)["content"].split("---\n")
      metadata = yaml.safe_load(front[1]) if front[0] == "" and len(front) > 2 else None
      if not isinstance(metadata, dict):
        return 400, {"errors": [{"message": "no YAML metadata"}], "warnings": []}
      return 200, {"errors": [], "warnings": []}
    if method == "POST" and repo and repo.group(1) in self.repos:
      if repo.group(2) == "preupload":
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                               for f in json.loads(body)["files"]]}
      lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
      assert lines[0]["key"] == "header"
      self.commits.append(lines[0]["value"])
      for line in lines[1:]:
        assert line["key"] == "file" and line["value"]["encoding"] == "base64", line
        self.files.setdefault(repo.group(1), {})[line["value"]["path"]] = base64.b64decode(
            line["value"]["content"])
      oid = f"{len(self.commits):040x}"
      return 200, {"commitUrl": f"{self.url}/{repo.group(1)}/commit/{oid}", "commitOid": oid}
    self.unexpected.append(f"{method} {path}")
    return 404, {"error": "not in the stand-in"}


@contextlib.contextmanager
def serve(hub: StandInHub) -> Iterator[StandInHub]:
  """Runs `hub` on a free 127.0.0.1 port in a thread for the block."""

  class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
      body = self.rfile.read(int(self.headers.get("content-length") or 0))
      status, payload = hub.handle(self.command, self.path, self.headers, body)
      data = json.dumps(payload).encode()
      self.send_response(status)
      self.send_header("content-type", "application/json")
      self.send_header("content-length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):  # quiet: pytest shows failures, not every request
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  hub.url = f"http://127.0.0.1:{server.server_address[1]}"
  thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
  thread.start()
  try:
    yield hub
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def online(monkeypatch):
  """Lifts conftest's HF_HUB_OFFLINE for this test only: huggingface_hub reads the constant at
  each request. The default endpoint points at a closed port, so a request that ignored our
  endpoint would fail here, never reach the real Hub."""
  monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _export(folder) -> dict[str, bytes]:
  """A small stand-in of an export folder (bytes, no model) with its card; returns its files."""
  os.makedirs(folder)
  files = {"config.json": b'{"model_type": "clip"}\n',
           "model.safetensors": bytes(range(256)) * 9,  # binary, not UTF-8
           "tokenizer_config.json": b"{}\n"}
  for name, data in files.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  model_card.write_model_card(str(folder), _config(), RESULTS, repo_id="me/semclip")
  with open(os.path.join(folder, "README.md"), "rb") as f:
    files["README.md"] = f.read()
  # What an interrupted atomic write leaves: never uploaded.
  with open(os.path.join(folder, "model.safetensors.0a1b2c3d4e5f.tmp"), "wb") as f:
    f.write(b"partial")
  return files


@pytest.mark.parametrize("xet", [True, False])
def test_push_to_hub_uploads_every_file_to_a_private_repo(tmp_path, online, monkeypatch, xet):
  # With hf_xet installed (a huggingface_hub dependency) upload_folder runs its streamed pipeline;
  # without it (or HF_HUB_DISABLE_XET), create_commit. Both must push the same commit.
  monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", not xet)
  files = _export(tmp_path / "hf")
  with serve(StandInHub()) as hub:
    url = model_card.push_to_hub(str(tmp_path / "hf"), "me/semclip", token="hf_test",
                                 endpoint=hub.url, commit_message="semclip run 1")
  assert hub.unexpected == []
  assert hub.repos["me/semclip"]["visibility"] == "private"
  assert hub.files["me/semclip"] == files  # every file, identical bytes, and nothing else
  assert [c["summary"] for c in hub.commits] == ["semclip run 1"]
  assert hub.authorization == {"Bearer hf_test"}
  assert url.startswith(f"{hub.url}/me/semclip/commit/")


@pytest.mark.parametrize("remove, repo_id, message", [
    (None, "me/semclip", "not a folder"),
    ("config.json", "me/semclip", "no config.json"),
    ("model.safetensors", "me/semclip", "no model.safetensors"),
    ("", "me/semc lip", "not a Hub repo id"),
])
def test_push_to_hub_refuses_before_any_network_call(tmp_path, online, remove, repo_id, message):
  folder = tmp_path / "hf"
  if remove is not None:
    _export(folder)
    if remove:
      os.remove(folder / remove)
  with serve(StandInHub()) as hub:
    with pytest.raises(ValueError, match=message):
      model_card.push_to_hub(str(folder), repo_id, token="hf_test", endpoint=hub.url)
  assert hub.requests == []


def test_push_to_hub_network_failure_is_one_clear_error(tmp_path, online):
  _export(tmp_path / "hf")
  endpoint = f"http://127.0.0.1:{_closed_port()}"
  start = time.perf_counter()
  with pytest.raises(model_card.PushToHubError) as error:
    model_card.push_to_hub(str(tmp_path / "hf"), "me/semclip", token="hf_test", endpoint=endpoint)
  assert time.perf_counter() - start < 3  # create_repo is not retried: a refused connect is final
  assert "'me/semclip'" in str(error.value) and endpoint in str(error.value)
  assert "ConnectError" in str(error.value)


def test_push_to_hub_refusal_and_offline_mode_are_clear_errors(tmp_path, online, monkeypatch):
  _export(tmp_path / "hf")
  with serve(StandInHub(create_status=403)) as hub:
    with pytest.raises(model_card.PushToHubError, match=r"(?s)'me/semclip'.*403.*rights"):
      model_card.push_to_hub(str(tmp_path / "hf"), "me/semclip", token="hf_test", endpoint=hub.url)
    assert hub.files == {}
    hub.requests.clear()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(model_card.PushToHubError, match="offline mode is on"):
      model_card.push_to_hub(str(tmp_path / "hf"), "me/semclip", token="hf_test", endpoint=hub.url)
    assert hub.requests == []


def test_card_and_push_of_an_export_in_a_bucket(tmp_path, gcs_bucket, online):
  """write_model_card into a gs:// export (its config.json read from the bucket), and push_to_hub
  from it: the same card and the same pushed files as the export on disk."""
  files = {"config.json": json.dumps({"projection_dim": 64, "vision_config": {
               "image_size": 32, "patch_size": 8, "num_hidden_layers": 2,
               "hidden_size": 64}}).encode(),
           "model.safetensors": bytes(range(256)) * 9}
  remote = f"{gcs_bucket}/run/hf"
  os.makedirs(tmp_path / "hf")
  for name, data in files.items():
    (tmp_path / "hf" / name).write_bytes(data)
    with storage.open(storage.join(remote, name), "wb") as f:
      f.write(data)
  with pytest.raises(ValueError, match=re.escape(f"{gcs_bucket}/run: no config.json")):
    model_card.check_export_folder(f"{gcs_bucket}/run")  # a folder, but not the export
  path = model_card.write_model_card(remote, _config(), RESULTS, repo_id="me/semclip")
  assert path == f"{remote}/README.md"
  card = model_card.write_model_card(str(tmp_path / "hf"), _config(), RESULTS, repo_id="me/semclip")
  with open(card, "rb") as f:
    files["README.md"] = f.read()
  assert storage.read_bytes(path) == files["README.md"]
  assert "32×32 px images, 8×8 px patches" in files["README.md"].decode()
  assert storage.listdir(remote) == ["README.md", "config.json", "model.safetensors"]
  with serve(StandInHub()) as hub:
    url = model_card.push_to_hub(remote, "me/semclip", token="hf_test", endpoint=hub.url)
  assert hub.unexpected == [] and url.startswith(f"{hub.url}/me/semclip/commit/")
  assert hub.files["me/semclip"] == files
