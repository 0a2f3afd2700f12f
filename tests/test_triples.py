"""triples: LLM paraphrase/negation against a scripted local server; cleaning; cache and SIGKILL
resume; the rules backend on the real SugarCrepe++ captions; a tiny transformers model."""

import collections
import csv
import http.server
import io
import json
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from semclip_jax.data import prepare, sources
from semclip_jax.data import triples
from semclip_jax.data.triples import backends, cleaning, files, generate, rules
from semclip_jax.data.triples.__main__ import main

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# A scripted chat server speaking ollama's /api/chat and OpenAI's /v1/chat/completions.
# ----------------------------------------------------------------------------------------------
def _lower_first(text):
  return text[:1].lower() + text[1:]


def good(caption, kind):
  """What the scripted models answer when they behave."""
  prefix = "In this photo, " if kind == "paraphrase" else "It is false that "
  return prefix + _lower_first(caption)


def _parse(body):
  """(caption, purpose) of a request made with the default prompts."""
  user = body["messages"][-1]["content"]
  match = re.match(r"Caption: (.*?)(?:\nRewrite: (.*?)\n(.*))?$", user, re.S)
  caption, question = match.group(1), match.group(3)
  if question is not None:
    return caption, "verify_negation" if "contradict" in question else "verify_paraphrase"
  kind = "negation" if body["messages"][0]["content"] == (
      generate.DEFAULT_PROMPTS["negation"].system) else "paraphrase"
  return caption, f"regenerate_{kind}" if body["model"] == "verifier" else kind


class ScriptedServer:
  """Answers by `script(caption, purpose, attempt) -> (status, text or None, headers, delay)`
  (text None: a body that is not JSON). Counts requests and completed answers per (caption,
  purpose)."""

  def __init__(self, script, api_key=None):
    self.script, self.api_key = script, api_key
    self.lock = threading.Lock()
    self.requests, self.answered = collections.Counter(), collections.Counter()
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # pylint: disable=invalid-name
        owner.handle(self)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

  def reset(self):
    with self.lock:
      self.requests.clear()
      self.answered.clear()

  def handle(self, handler):
    body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
    if handler.path not in ("/api/chat", "/v1/chat/completions"):
      return self._send(handler, 404, {"error": "no such endpoint"})
    if self.api_key and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
      return self._send(handler, 401, {"error": "bad key"})
    if body["model"] == "missing":
      return self._send(handler, 404, {"error": "model 'missing' not found"})
    caption, purpose = _parse(body)
    with self.lock:
      self.requests[caption, purpose] += 1
      attempt = self.requests[caption, purpose]
    status, text, headers, delay = self.script(caption, purpose, attempt)
    time.sleep(delay)
    if status != 200:
      payload = {"error": "scripted failure"}
    elif handler.path == "/api/chat":
      payload = {"model": body["model"], "message": {"role": "assistant", "content": text},
                 "done": True}
    else:
      payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    if self._send(handler, status, payload if text is not None or status != 200 else None,
                  headers) and status == 200:
      with self.lock:
        self.answered[caption, purpose] += 1
    return None

  @staticmethod
  def _send(handler, status, payload, headers=None):
    data = b"not json{" if payload is None else json.dumps(payload).encode()
    try:
      handler.send_response(status)
      for name, value in (headers or {}).items():
        handler.send_header(name, value)
      handler.send_header("Content-Type", "application/json")
      handler.send_header("Content-Length", str(len(data)))
      handler.end_headers()
      handler.wfile.write(data)
      return True
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
      return False

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


# caption -> behaviour of the scripted models
SCENARIOS = {
    "A dog runs on the beach.": "good",
    "A cat sleeps on a red sofa.": "chatty",
    "Two men ride horses along a river.": "numbered",
    "A bowl of soup sits on a wooden table.": "empty",
    "A girl flies a kite in a park.": "garbage",
    "A bus is parked next to a station.": "same",
    "A man holds an umbrella in the rain.": "long",
    "Three birds sit on a wire.": "verify_no",
    "A plate of pasta with basil.": "verify_unclear",
    "A boat floats on a calm lake.": "empty_always",
    "A train crosses a bridge at night.": "slow",
    "A child eats an apple.": "slow_once",
    "A woman reads a book on a bench.": "error500_once",
    "A red car drives down a street.": "error500",
    "A horse grazes in a field.": "429_once",
    "A skier jumps over a hill.": "bad_json",
}
TIMEOUT = 0.4
SLOW = 1.0  # seconds a "slow" answer takes: past the client's timeout


def scripted(caption, purpose, attempt):
  scenario = SCENARIOS.get(caption, "good")
  ok = lambda text: (200, text, {}, 0.0)
  if purpose.startswith("verify_"):
    return ok({"verify_no": "No, the meaning differs.", "verify_unclear": "Hard to say."}.get(
        scenario, "Yes."))
  kind = purpose.rsplit("_", 1)[-1]
  text = good(caption, kind)
  if purpose.startswith("regenerate_"):
    return ok("" if scenario == "empty_always" else text)
  first = attempt == 1
  if scenario == "chatty":
    return ok(f'Sure! Here is the {kind}:\n\n"{text}"\n\nI kept the objects and changed the words.'
              if kind == "paraphrase" else f"Certainly. **Negated caption:** {text} (I negated "
              "the main statement.)")
  answers = {"numbered": f"1. {text}", "empty": "", "empty_always": "", "garbage": "#### ?? !!!",
             "same": caption,
             "long": text.rstrip(".") + ", and" + " a long list of other things" * 8 + "."}
  if scenario in answers:
    return ok(answers[scenario])
  if scenario == "slow" or (scenario == "slow_once" and first):
    return 200, text, {}, SLOW
  if scenario == "error500" or (scenario == "error500_once" and first):
    return 500, None, {}, 0.0
  if scenario == "429_once" and first:
    return 429, None, {"Retry-After": "0"}, 0.0
  if scenario == "bad_json":
    return 200, None, {}, 0.0
  return ok(text)


@pytest.fixture
def server():
  s = ScriptedServer(scripted)
  yield s
  s.close()


def _write_csv(path, captions, column="caption"):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["filename", column])
    writer.writeheader()
    writer.writerows({"filename": f"{i:03d}.jpg", column: c} for i, c in enumerate(captions))


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _cached(path):
  """The (caption, kind) pairs a cache file holds answers for."""
  db = sqlite3.connect(path)
  try:
    return set(db.execute("SELECT caption, kind FROM responses").fetchall())
  finally:
    db.close()


def _http_backends(name, url, **kwargs):
  retry = backends.RetryPolicy(retries=2, backoff=0.01, max_backoff=0.05)
  make = lambda model: backends.make_backend(name, model, base_url=url, timeout=TIMEOUT,
                                             retry=retry, **kwargs)
  return make("generator"), make("verifier")


# ----------------------------------------------------------------------------------------------
# Cleaning.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [
    'Sure! Here is the paraphrase:\n\n"A dog runs on the beach."\n\nI kept the meaning.',
    "Here's a paraphrased version of the caption: A dog runs on the beach.",
    "1. A dog runs on the beach.\n2. On the beach, a dog runs.",
    "**Paraphrase:** A dog runs on the beach.",
    "A dog runs on the beach. (I changed the word order.)",
    "A dog runs on the beach. This keeps every object.",
    "<think>The user wants a rewrite.</think>\n“A dog runs on the beach.”",
    "```\nA dog runs on the beach.\n```",
    "Certainly! The paraphrased sentence is: A dog runs on the beach.",
    '"A dog runs on the beach".',
])
def test_clean_keeps_only_the_sentence(answer):
  assert cleaning.clean(answer).rstrip(".") == "A dog runs on the beach"


def test_clean_keeps_as_many_sentences_as_the_caption_and_a_captions_own_colon():
  assert cleaning.clean("Mr. Smith walks. He smiles. Note: I kept it.", sentences=2) == (
      "Mr. Smith walks. He smiles.")
  assert cleaning.clean("Photo: a dog in a park.") == "Photo: a dog in a park."


def test_check_and_verdicts():
  caption = "A dog runs on the beach."
  assert [cleaning.check(t, caption) for t in
          ["", "?? !!", "I'm sorry, I can't do that.", "a dog runs on the beach", caption * 3,
           "On the beach, a dog runs."]] == [
      cleaning.EMPTY, cleaning.NO_WORDS, cleaning.REFUSAL, cleaning.SAME, cleaning.TOO_LONG, None]
  assert [cleaning.parse_verdict(t) for t in ["Yes.", "no, it differs", "<think>no</think> YES",
                                              "Hard to say"]] == [True, False, True, None]


def test_prompt_overrides_are_checked(tmp_path):
  prompts = generate.load_prompts({"negation": {"user": "Negate: {caption}", "examples": []}})
  assert prompts["negation"].messages(caption="a dog")[-1]["content"] == "Negate: a dog"
  assert prompts["negation"].system == generate.DEFAULT_PROMPTS["negation"].system
  with pytest.raises(ValueError, match="exactly"):
    generate.load_prompts({"verify_negation": {"user": "Is {caption} negated?"}})
  with pytest.raises(ValueError, match="unknown prompt"):
    generate.load_prompts({"summary": {"user": "{caption}"}})


# ----------------------------------------------------------------------------------------------
# The scripted server: clean triples, retries, regeneration, failures reported, cache reruns.
# ----------------------------------------------------------------------------------------------
def test_ollama_scripted_answers_cleaned_verified_retried_and_reported(server, tmp_path):
  captions = list(SCENARIOS) + ["A dog runs on the beach."]  # a repeated caption is asked once
  _write_csv(tmp_path / "in.csv", captions)
  out = tmp_path / "out.csv"
  generator, verifier = _http_backends("ollama", server.url)
  settings = generate.Settings(concurrency=8)
  start = time.monotonic()
  summary = files.run(str(tmp_path / "in.csv"), str(out), generator, verifier,
                         settings=settings, log=lambda m: None)
  assert time.monotonic() - start < 15
  rows = {r["caption"]: r for r in _read_csv(out)}
  assert len(_read_csv(out)) == len(captions)
  for caption, scenario in SCENARIOS.items():
    row = rows[caption]
    for kind, column in (("paraphrase", "paraphrased"), ("negation", "negation")):
      flags = (row[column + "_status"], row[column + "_verified"], row[column + "_reason"])
      if scenario in ("good", "chatty", "numbered", "slow_once", "error500_once", "429_once"):
        assert (row[column], flags) == (good(caption, kind), ("generated", "yes", "")), scenario
      elif scenario in ("empty", "garbage", "same", "long", "verify_no", "verify_unclear"):
        reason = {"empty": "empty", "garbage": "no words", "same": "same as caption",
                  "long": "far longer than caption", "verify_no": "verifier said no",
                  "verify_unclear": "verifier answer unclear"}[scenario]
        assert (row[column], flags) == (good(caption, kind), ("regenerated", "", reason)), scenario
      else:
        reason = {"empty_always": "empty; regenerated: empty", "slow": "backend error: timeout",
                  "error500": "backend error: HTTP 500",
                  "bad_json": "backend error: malformed response"}[scenario]
        assert (row[column], flags) == ("", ("failed", "", reason)), scenario
  # Retries as documented: timeouts, 5xx and 429 are retried (1 + 2 attempts), bad JSON is not.
  attempts = {s: server.requests[c, "paraphrase"] for c, s in SCENARIOS.items()}
  assert (attempts["slow"], attempts["error500"], attempts["bad_json"]) == (3, 3, 1)
  assert attempts["slow_once"] == attempts["error500_once"] == attempts["429_once"] == 2
  assert attempts["good"] == 1
  # Statistics: counts, reasons and examples, also on disk.
  assert summary == json.loads((tmp_path / "out.csv.stats.json").read_text())
  counts = summary["counts"]["paraphrase"]
  assert counts["ok"] == 12 and counts["failed"] == 4 and counts["regenerated"] == 6
  assert counts["cleaned"] >= 2 and counts["verified"] == 6
  assert summary["reasons"]["failed"]["backend error: timeout"] == 2
  assert summary["reasons"]["rejected"]["empty"] == 2 + 2 + 2  # empty, empty_always twice
  assert {e["reason"] for e in summary["examples"]["rejected"]} >= {"empty", "no words"}
  assert summary["backend_failures"] == 6 and summary["unique_captions"] == len(SCENARIOS)
  # A rerun with the same settings asks only what failed on the backend.
  answered = _cached(tmp_path / "out.csv.cache.sqlite")
  # 13 answered captions, 7 of them regenerated, 8 verified; twice (paraphrase, negation)
  assert len(answered) == 2 * (13 + 7 + 8)
  server.reset()
  again = files.run(str(tmp_path / "in.csv"), str(out), generator, verifier,
                       settings=settings, log=lambda m: None)
  retried = {caption for caption, _ in server.requests}
  assert retried == {c for c, s in SCENARIOS.items() if s in ("slow", "error500", "bad_json")}
  assert not set(server.requests) & answered
  assert again["cache_hits"] > 0 and sum(again["model_calls"].values()) == 6


def test_openai_format_with_key_retries_and_fatal_errors(tmp_path):
  s = ScriptedServer(scripted, api_key="secret")
  try:
    captions = ["A dog runs on the beach.", "A cat sleeps on a red sofa.",
                "A woman reads a book on a bench.", "A horse grazes in a field."]
    _write_csv(tmp_path / "in.jsonl.csv", captions)
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
      for caption in captions:
        f.write(json.dumps({"text": caption, "extra": 1}) + "\n")
    generator, verifier = _http_backends("openai", s.url + "/v1", api_key="secret")
    files.run(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), generator, verifier,
                 caption_column="text", log=lambda m: None)
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl", encoding="utf-8")]
    assert [r["paraphrased"] for r in rows] == [good(c, "paraphrase") for c in captions]
    assert [r["negation"] for r in rows] == [good(c, "negation") for c in captions]
    assert all(r["extra"] == 1 and r["negation_verified"] == "yes" for r in rows)
    # A wrong key or an unknown model would fail every request: the run stops with status 2.
    common = [f"--input={tmp_path / 'in.jsonl'}", f"--output={tmp_path / 'x.jsonl'}",
              "--caption_column=text", "--backend=openai", f"--base_url={s.url}", "--retries=0"]
    assert main(common + ["--model=generator", "--api_key=wrong"]) == 2
    assert main(common + ["--model=missing", "--api_key=secret"]) == 2
    assert not (tmp_path / "x.jsonl").exists()
  finally:
    s.close()


def test_retry_backoff_grows_honours_retry_after_and_is_capped(server):
  delays = []
  request = backends.Request("paraphrase", "c", ({"role": "user", "content": "Caption: c"},))
  scripts = {"always500": lambda *a: (500, None, {}, 0.0),
             "slowdown": lambda c, p, attempt: (429, None, {"Retry-After": "7"}, 0.0)
             if attempt == 1 else (200, "ok", {}, 0.0),
             "flood": lambda *a: (429, None, {"Retry-After": "100"}, 0.0),
             "bad_request": lambda *a: (400, None, {}, 0.0)}

  def backend(name, retries, max_backoff):
    server.script = scripts[name]
    server.reset()
    return backends.OllamaBackend("m", server.url, timeout=TIMEOUT, sleep=delays.append,
                                  retry=backends.RetryPolicy(retries, 1.0, max_backoff))

  with pytest.raises(backends.BackendError, match="gave up after 4 attempts") as failure:
    backend("always500", 3, 100).complete(request)
  assert failure.value.reason == "HTTP 500"
  assert [0.5 <= delays[0] <= 1, 1 <= delays[1] <= 2, 2 <= delays[2] <= 4] == [True] * 3
  delays.clear()
  assert backend("slowdown", 3, 10).complete(request) == "ok" and delays == [7.0]
  delays.clear()
  with pytest.raises(backends.BackendError):
    backend("flood", 2, 10).complete(request)
  assert delays == [10.0, 10.0]
  delays.clear()
  with pytest.raises(backends.BackendError) as failure:  # a client error is not retried
    backend("bad_request", 3, 10).complete(request)
  assert failure.value.reason == "HTTP 400" and not delays
  dead = backends.OllamaBackend("m", "http://127.0.0.1:9", timeout=TIMEOUT, sleep=delays.append,
                                retry=backends.RetryPolicy(1, 0.01, 0.01))
  with pytest.raises(backends.BackendError) as failure:
    dead.complete(request)
  assert failure.value.reason == "connection error" and len(delays) == 1


# ----------------------------------------------------------------------------------------------
# Durability: SIGKILL halfway, rerun, identical output; a finished rerun makes no calls.
# ----------------------------------------------------------------------------------------------
def test_killed_run_resumes_without_resending_answered_requests(tmp_path):
  captions = [f"A photo of object number {i} on a table." for i in range(200)]
  s = ScriptedServer(lambda c, p, a: (200, "Yes." if p.startswith("verify") else good(c, p), {},
                                      0.01))
  try:
    _write_csv(tmp_path / "in.csv", captions)
    args = lambda name: [f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / name}",
                         "--backend=ollama", f"--base_url={s.url}", "--model=generator",
                         "--verifier_model=verifier", "--concurrency=4", "--timeout=2"]
    assert main(args("reference.csv")) == 0  # uninterrupted, in this process
    s.reset()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "semclip_jax.data.triples", *args("out.csv")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 40
    while sum(n for (_, p), n in s.answered.items() if p == "paraphrase") < 100:
      assert process.poll() is None and time.monotonic() < deadline, "finished before the kill"
      time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert not (tmp_path / "out.csv").exists()
    cached = _cached(tmp_path / "out.csv.cache.sqlite")
    assert 50 <= len({c for c, _ in cached}) < 200
    before = collections.Counter(s.requests)
    s.reset()
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
    assert not set(s.requests) & cached  # nothing answered and cached was asked again
    resent = set(s.requests) & set(before)  # in flight at the kill: sent, never cached
    assert len(resent) <= 4 and all(before[k] == 1 for k in before)
    assert len(set(s.requests) | set(before)) == 200 * 4
    s.reset()  # and once finished, a rerun makes no model calls at all
    assert main(args("out.csv")) == 0 and not s.requests
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
  finally:
    s.close()


# ----------------------------------------------------------------------------------------------
# The rules backend.
# ----------------------------------------------------------------------------------------------
def test_rules_backend_on_every_sugarcrepe_caption(sugarcrepe_csv, tmp_path):
  header, rows, _ = sources.read_rows(str(sugarcrepe_csv))
  captions = [r["caption"] for r in rows]
  assert len(captions) == 4757
  start = time.monotonic()
  for caption in captions:
    for made in (rules.negate(caption), rules.paraphrase(caption)):
      assert made.strip() and cleaning.normalize(made) != cleaning.normalize(caption), caption
  assert time.monotonic() - start < 5
  summary = files.run(str(sugarcrepe_csv), str(tmp_path / "out.csv"), rules.RulesBackend(),
                         log=lambda m: None)
  assert summary["counts"]["negation"].get("failed", 0) == 0
  assert summary["counts"]["paraphrase"].get("failed", 0) == 0
  out = _read_csv(tmp_path / "out.csv")
  assert list(out[0])[:len(header)] == header and len(out) == 4757
  assert all(r["paraphrased"] and r["negation"] and r["paraphrased"] != r["caption"] for r in out)


@pytest.mark.parametrize("caption, negation, paraphrase", [
    ("A zebra is standing in an open field.", "A zebra is not standing in an open field.",
     "In an open field, a zebra is standing."),
    ("A woman sits at a counter.", "A woman does not sit at a counter.",
     "At a counter, a lady sits."),
    ("Two dogs playing with a ball", "There are no dogs playing with a ball",
     "There are two dogs playing with a ball"),
    ("There is no cat on the bed.", "There is a cat on the bed.", "On the bed, there is no cat."),
    ("THERE ARE WOMEN LAUGHING UNDER THE UMBRELLA",
     "THERE ARE NOT WOMEN LAUGHING UNDER THE UMBRELLA",
     "UNDER THE UMBRELLA, THERE ARE WOMEN LAUGHING"),
])
def test_rules_templates(caption, negation, paraphrase):
  assert (rules.negate(caption), rules.paraphrase(caption)) == (negation, paraphrase)


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
  assert [r["negation"] for r in _read_csv(tmp_path / "out.csv")] == [
      rules.negate(before[i]["caption"]) for i in range(3)]
  with pytest.raises(ValueError, match="ArrayRecord input"):
    files.run(str(tmp_path / "out.csv"), str(tmp_path / "shards"), rules.RulesBackend())


def test_empty_captions_are_flagged_not_sent(tmp_path):
  _write_csv(tmp_path / "in.csv", ["A dog runs.", "  ", ""])
  summary = files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"),
                         rules.RulesBackend(), log=lambda m: None)
  rows = _read_csv(tmp_path / "out.csv")
  assert [r["negation_status"] for r in rows] == ["generated", "failed", "failed"]
  assert rows[1]["paraphrased_reason"] == generate.EMPTY_CAPTION
  assert summary["empty_captions"] == 2 and summary["unique_captions"] == 1


# ----------------------------------------------------------------------------------------------
# The transformers backend on a tiny random causal LM (mechanics only: its words are garbage).
# ----------------------------------------------------------------------------------------------
def _tiny_causal_lm(folder):
  import tokenizers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  words = ["[UNK]", "[PAD]", "[EOS]", "a", "the", "dog", "cat", "is", "not", "on", "sofa", "grass",
           "runs", "sleeps", "yes", "no", ".", ",", ":", "Caption", "Rewrite", "red", "two"]
  model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
  backend = tokenizers.Tokenizer(model)
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                                   pad_token="[PAD]", eos_token="[EOS]")
  tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                             "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
  tokenizer.save_pretrained(folder)
  config = transformers.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=2, max_position_embeddings=1024,
                                    pad_token_id=1, eos_token_id=2, bos_token_id=2)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(folder)


def test_transformers_backend_on_a_tiny_random_model(tmp_path):
  pytest.importorskip("torch")
  _tiny_causal_lm(str(tmp_path / "lm"))
  _write_csv(tmp_path / "in.csv", ["A dog runs on the grass.", "Two cats sleep on a red sofa."])
  backend = backends.make_backend("transformers", str(tmp_path / "lm"), device="cpu")
  settings = generate.Settings(max_tokens=6, concurrency=2)
  summary = files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), backend,
                         settings=settings, log=lambda m: None)
  rows = _read_csv(tmp_path / "out.csv")
  for row in rows:
    for column in ("paraphrased", "negation"):
      status, reason = row[column + "_status"], row[column + "_reason"]
      assert status in ("generated", "regenerated", "failed")
      assert (row[column] == "") == (status == "failed")
      assert row[column + "_verified"] in ("yes", "no", "")
      assert (status != "generated") == bool(reason) or row[column + "_verified"] == "yes"
  for kind in generate.KINDS:  # every field ended somewhere and was counted
    counts = summary["counts"][kind]
    assert counts.get("ok", 0) + counts.get("failed", 0) == 2
  assert sum(summary["model_calls"].values()) >= 8 and summary["backend_failures"] == 0
  # Answers are cached like a server's: the rerun generates nothing and writes the same file.
  first = (tmp_path / "out.csv").read_bytes()
  again = files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), backend,
                       settings=settings, log=lambda m: None)
  assert not again["model_calls"] and (tmp_path / "out.csv").read_bytes() == first


def test_transformers_prompt_without_chat_template_and_missing_model(tmp_path):
  class Plain:
    chat_template = None

  text, special = backends.TransformersBackend("x")._prompt(
      Plain(), [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
  assert (text, special) == ("System: S\nUser: U\nAssistant:", True)
  request = backends.Request("paraphrase", "c", ({"role": "user", "content": "c"},))
  with pytest.raises(backends.FatalBackendError, match="not a local model"):
    backends.make_backend("transformers", str(tmp_path / "nowhere")).complete(request)
  assert triples.make_backend("rules").complete(request) != "c"
