"""triples.backends: the OpenAI format with a key, fatal errors, the retry policy, what a server
may send (undecodable, deep, huge or trickled answers), and a tiny transformers model (mechanics
only)."""

import itertools
import json
import socket
import socketserver
import threading
import time

import pytest

from semclip_jax.data import triples
from semclip_jax.data.triples import backends, files, generate, protocol
from semclip_jax.data.triples.__main__ import main
from triples_helpers import (TIMEOUT, ScriptedServer, cached_pairs, good, http_backends, read_csv,
                             scripted, write_csv)
from triples_helpers import server  # pylint: disable=unused-import  (a pytest fixture)


def test_openai_format_with_key_retries_and_fatal_errors(tmp_path):
  s = ScriptedServer(scripted, api_key="secret")
  try:
    captions = ["A dog runs on the beach.", "A cat sleeps on a red sofa.",
                "A woman reads a book on a bench.", "A horse grazes in a field."]
    write_csv(tmp_path / "in.jsonl.csv", captions)
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
      for caption in captions:
        f.write(json.dumps({"text": caption, "extra": 1}) + "\n")
    generator, verifier = http_backends("openai", s.url + "/v1", api_key="secret")
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
  request = protocol.Request("paraphrase", "c", ({"role": "user", "content": "Caption: c"},))
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

  with pytest.raises(protocol.BackendError, match="gave up after 4 attempts") as failure:
    backend("always500", 3, 100).complete(request)
  assert failure.value.reason == "HTTP 500"
  assert [0.5 <= delays[0] <= 1, 1 <= delays[1] <= 2, 2 <= delays[2] <= 4] == [True] * 3
  delays.clear()
  assert backend("slowdown", 3, 10).complete(request) == "ok" and delays == [7.0]
  delays.clear()
  with pytest.raises(protocol.BackendError):
    backend("flood", 2, 10).complete(request)
  assert delays == [10.0, 10.0]
  delays.clear()
  with pytest.raises(protocol.BackendError) as failure:  # a client error is not retried
    backend("bad_request", 3, 10).complete(request)
  assert failure.value.reason == "HTTP 400" and not delays


def _closed_port():
  """A port of 127.0.0.1 that nothing listens on (bound, read, released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_no_server_stops_at_the_first_request_with_exit_2_keeping_the_cache(tmp_path, capsys):
  # What was answered before the server went away stays cached.
  s = ScriptedServer(scripted)
  try:
    write_csv(tmp_path / "first.csv", ["A dog runs on the beach."])
    common = ["--backend=ollama", "--model=generator", f"--cache={tmp_path / 'cache.sqlite'}"]
    assert main([f"--input={tmp_path / 'first.csv'}", f"--output={tmp_path / 'first_out.csv'}",
                 f"--base_url={s.url}", *common]) == 0
  finally:
    s.close()
  answered = cached_pairs(tmp_path / "cache.sqlite")
  assert len(answered) == 4  # paraphrase, negation and their verifications
  capsys.readouterr()
  # Nothing listens: the first refused connection stops the run, without the retries' waits
  # (4 retries from 1 s: at least 7.5 s per request) or a pass over every other caption.
  url = f"http://127.0.0.1:{_closed_port()}"
  write_csv(tmp_path / "more.csv", ["A dog runs on the beach.", "A cat sleeps on a red sofa.",
                                    "Two men ride horses along a river."])
  start = time.monotonic()
  assert main([f"--input={tmp_path / 'more.csv'}", f"--output={tmp_path / 'more_out.csv'}",
               f"--base_url={url}", *common]) == 2
  assert time.monotonic() - start < 3
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"{url}/api/chat: cannot connect" in errors[0], errors
  assert "cached" in errors[0]
  assert not (tmp_path / "more_out.csv").exists()
  assert cached_pairs(tmp_path / "cache.sqlite") == answered
  # The backend alone: FatalBackendError at once, no retry.
  delays = []
  dead = backends.OllamaBackend("m", url, timeout=TIMEOUT, sleep=delays.append)
  request = protocol.Request("paraphrase", "c", ({"role": "user", "content": "Caption: c"},))
  with pytest.raises(protocol.FatalBackendError) as failure:
    dead.complete(request)
  assert failure.value.reason == "no server" and not delays


# ----------------------------------------------------------------------------------------------
# What a server may send: a lone surrogate, deep JSON, a huge body, a byte now and then.
# ----------------------------------------------------------------------------------------------
def test_a_lone_surrogate_fails_its_field_not_the_run(tmp_path):
  # Valid JSON ("\\ud800") whose text UTF-8 cannot hold: it once stopped the run with exit 2,
  # caching nothing, on every rerun. Now its field fails on the backend and a rerun asks again.
  bad = "A cat sleeps on a red sofa."
  captions = ["A dog runs on the beach.", bad]

  def script(caption, purpose, attempt):
    if purpose.startswith("verify_"):
      return 200, "Yes.", {}, 0.0
    return 200, good(caption, purpose) + ("\ud800" if caption == bad and purpose == "paraphrase"
                                         else ""), {}, 0.0

  s = ScriptedServer(script)
  try:
    write_csv(tmp_path / "in.csv", captions)
    args = [f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / 'out.csv'}",
            "--backend=ollama", f"--base_url={s.url}", "--model=generator", "--retries=0"]
    assert main(args) == 1
    rows = read_csv(tmp_path / "out.csv")
    assert [(r["paraphrased_status"], r["paraphrased_reason"]) for r in rows] == [
        ("generated", ""), ("failed", "backend error: malformed response")]
    assert [r["negation"] for r in rows] == [good(c, "negation") for c in captions]
    assert (bad, "paraphrase") not in cached_pairs(tmp_path / "out.csv.cache.sqlite")
    s.reset()
    assert main(args) == 1 and set(s.requests) == {(bad, "paraphrase")}
  finally:
    s.close()


class RawServer(socketserver.ThreadingTCPServer):
  """Reads each request whole, then sends what `reply()` yields: (seconds to wait, bytes), as
  they come; counts the requests."""
  daemon_threads = True

  def __init__(self, reply):
    self.reply, self.requests = reply, 0
    owner = self

    class Handler(socketserver.StreamRequestHandler):
      def handle(self):
        length = 0
        for line in iter(self.rfile.readline, b"\r\n"):
          if not line:
            return
          if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        self.rfile.read(length)
        owner.requests += 1
        try:
          for delay, data in owner.reply():
            time.sleep(delay)
            self.wfile.write(data)
        except OSError:  # the client hung up
          pass

    super().__init__(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server_address[1]}"

  def close(self):
    self.shutdown()
    self.server_close()


def _head(length=None):
  return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          + (b"Connection: close\r\n" if length is None else b"Content-Length: %d\r\n" % length)
          + b"\r\n")


def _ollama(text, size=None):
  """An ollama answer of `text`, padded with spaces to `size` bytes."""
  body = json.dumps({"message": {"role": "assistant", "content": text}, "done": True}).encode()
  return body + b" " * ((size or len(body)) - len(body))


REQUEST = protocol.Request("paraphrase", "c", ({"role": "user", "content": "Caption: c"},))


def _ask(reply, **options):
  """(answer or the BackendError raised, attempts, seconds) of one request to a RawServer."""
  s = RawServer(reply)
  delays = []
  options = {"timeout": TIMEOUT, "retry": backends.RetryPolicy(0), **options}
  backend = backends.OllamaBackend("m", s.url, sleep=delays.append, **options)
  start = time.monotonic()
  try:
    answer = backend.complete(REQUEST)
  except protocol.BackendError as e:
    answer = e
  finally:
    s.close()
  return answer, s.requests, time.monotonic() - start


@pytest.mark.parametrize("body, what", [
    (b'{"message": {"content": "A dog \\ud800 runs."}}', "surrogates not allowed at character 6"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    (b'{"message": {"content": {"text": "A dog runs."}}}', "a JSON dict, not text"),
    (b'{"message": ["A dog runs."]}', "no answer text"),
    (b"\xff\xfe{", "not JSON"),
])
def test_malformed_answers_fail_their_request_once(body, what):
  answer, attempts, _ = _ask(lambda: [(0, _head(len(body)) + body)],
                             retry=backends.RetryPolicy(2, 0.01, 0.01))
  assert isinstance(answer, protocol.BackendError), answer
  assert answer.reason == "malformed response" and what in str(answer) and attempts == 1


def test_answers_over_the_size_cap_fail_reading_no_further():
  limit = 1000
  exact = _ollama("A dog runs.", limit)
  assert _ask(lambda: [(0, _head(limit) + exact)], max_response_bytes=limit)[0] == "A dog runs."
  over = _ollama("A dog runs.", limit + 1)
  endless = lambda: itertools.chain([(0, _head())], itertools.repeat((0, b" " * 65536), 1024))
  for reply in (lambda: [(0, _head(len(over)) + over)],  # refused by its declared length
                lambda: [(0, _head() + over)],  # no length: read up to the limit + 1 byte
                endless):  # 64 MiB if it were read whole
    answer, attempts, seconds = _ask(reply, max_response_bytes=limit)
    assert isinstance(answer, protocol.BackendError) and answer.reason == "response too large"
    assert f"larger than {limit} bytes" in str(answer) and attempts == 1 and seconds < 2
  assert backends.make_backend("ollama", "m").max_response_bytes == 1 << 20


@pytest.mark.parametrize("part", ["headers", "body"])
def test_the_deadline_ends_an_answer_trickled_a_byte_at_a_time(part):
  # A byte every 0.05 s never trips the 0.4 s timeout between bytes; the whole answer would take
  # several seconds. The deadline cuts each attempt at 0.5 s, a timeout, retried as documented.
  body = _ollama("A dog runs on the beach.")
  whole = _head(len(body)) + body
  split = len(_head(len(body))) if part == "body" else 0
  trickle = lambda: [(0, whole[:split])] + [(0.05, whole[i:i + 1])
                                            for i in range(split, len(whole))]
  answer, attempts, seconds = _ask(trickle, deadline=0.5,
                                   retry=backends.RetryPolicy(1, 0.01, 0.01))
  assert isinstance(answer, protocol.BackendError), answer
  assert answer.reason == "timeout" and "deadline of 0.5 s" in str(answer)
  assert attempts == 2 and 1.0 <= seconds < 2.5
  assert _ask(lambda: [(0, whole)], deadline=0.5)[0] == "A dog runs on the beach."
  assert backends.make_backend("ollama", "m", timeout=10).deadline == 50
  with pytest.raises(ValueError, match="--deadline must be positive"):
    backends.make_backend("ollama", "m", deadline=0)


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
  write_csv(tmp_path / "in.csv", ["A dog runs on the grass.", "Two cats sleep on a red sofa."])
  backend = backends.make_backend("transformers", str(tmp_path / "lm"), device="cpu")
  settings = generate.Settings(max_tokens=6, concurrency=2)
  summary = files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), backend,
                      settings=settings, log=lambda m: None)
  rows = read_csv(tmp_path / "out.csv")
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
  request = protocol.Request("paraphrase", "c", ({"role": "user", "content": "c"},))
  with pytest.raises(protocol.FatalBackendError, match="not a local model"):
    backends.make_backend("transformers", str(tmp_path / "nowhere")).complete(request)
  assert triples.make_backend("rules").complete(request) != "c"


def test_help_shows_the_defaults(capsys):
  with pytest.raises(SystemExit) as done:
    main(["--help"])
  assert done.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  assert "Exit status: 0 done" in text  # the whole description, examples included
  for shown in ("what generates (default: ollama)", "requests in flight (default: 8)",
                "fails its request (read no further) (default: 1048576)",
                "seconds between progress lines (default: 30.0)",
                "ask the verifier yes/no about each answer (default: True)"):
    assert shown in text, shown
