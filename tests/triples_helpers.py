"""Shared by the tests/test_triples_*.py files: a scripted chat server speaking ollama's and
OpenAI's chat APIs, its per-caption scenarios, and small CSV and cache helpers."""

import collections
import csv
import http.server
import json
import pathlib
import re
import sqlite3
import threading
import time

import pytest

from semclip_jax.data.triples import backends, generate

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


class _Server(http.server.ThreadingHTTPServer):
  # socketserver's listen backlog is 5: with 8 clients in flight and the accept loop starved of
  # CPU (a loaded machine), further connections are dropped unseen, and a client's timed-out
  # attempt never reaches the script that counts it.
  request_queue_size = 128


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

    self.httpd = _Server(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

  def settled(self, quiet_s=0.3, limit_s=10.0):
    """The request counts once none has changed for `quiet_s` (waiting at most `limit_s`): a
    client that gave up on a request (a timeout) can return before this server, starved of CPU on
    a loaded machine, has even read it, and the count would then be one short."""
    deadline = time.monotonic() + limit_s
    while True:
      with self.lock:
        before = collections.Counter(self.requests)
      time.sleep(quiet_s)
      with self.lock:
        if self.requests == before or time.monotonic() > deadline:
          return collections.Counter(self.requests)

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


def write_csv(path, captions, column="caption"):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["filename", column])
    writer.writeheader()
    writer.writerows({"filename": f"{i:03d}.jpg", column: c} for i, c in enumerate(captions))


def read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def cached_pairs(path):
  """The (caption, kind) pairs a cache file holds answers for."""
  db = sqlite3.connect(path)
  try:
    return set(db.execute("SELECT caption, kind FROM responses").fetchall())
  finally:
    db.close()


def http_backends(name, url, **kwargs):
  retry = backends.RetryPolicy(retries=2, backoff=0.01, max_backoff=0.05)
  make = lambda model: backends.make_backend(name, model, base_url=url, timeout=TIMEOUT,
                                             retry=retry, **kwargs)
  return make("generator"), make("verifier")
