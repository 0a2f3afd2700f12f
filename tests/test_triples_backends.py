"""triples.backends: the OpenAI format with a key, fatal errors, the retry policy, and a tiny
transformers model (mechanics only)."""

import json
import socket
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
                "seconds between progress lines (default: 30.0)",
                "ask the verifier yes/no about each answer (default: True)"):
    assert shown in text, shown
