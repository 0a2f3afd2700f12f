"""triples.generate: prompts; the generate / clean / verify / regenerate flow against a scripted
server (retries, failures reported, statistics, cache reruns); empty captions."""

import json
import time

import pytest

from semclip_jax.data.triples import files, generate, rules
from triples_helpers import (SCENARIOS, ScriptedServer, cached_pairs, good, http_backends, read_csv,
                             write_csv)
from triples_helpers import server  # pylint: disable=unused-import  (a pytest fixture)


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
  write_csv(tmp_path / "in.csv", captions)
  out = tmp_path / "out.csv"
  generator, verifier = http_backends("ollama", server.url)
  settings = generate.Settings(concurrency=8)
  start = time.monotonic()
  summary = files.run(str(tmp_path / "in.csv"), str(out), generator, verifier,
                      settings=settings, log=lambda m: None)
  assert time.monotonic() - start < 15
  rows = {r["caption"]: r for r in read_csv(out)}
  assert len(read_csv(out)) == len(captions)
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
  requests = server.settled()
  attempts = {s: requests[c, "paraphrase"] for c, s in SCENARIOS.items()}
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
  answered = cached_pairs(tmp_path / "out.csv.cache.sqlite")
  # 13 answered captions, 7 of them regenerated, 8 verified; twice (paraphrase, negation)
  assert len(answered) == 2 * (13 + 7 + 8)
  server.reset()
  again = files.run(str(tmp_path / "in.csv"), str(out), generator, verifier,
                    settings=settings, log=lambda m: None)
  retried = {caption for caption, _ in server.requests}
  assert retried == {c for c, s in SCENARIOS.items() if s in ("slow", "error500", "bad_json")}
  assert not set(server.requests) & answered
  assert again["cache_hits"] > 0 and sum(again["model_calls"].values()) == 6


def test_empty_captions_are_flagged_not_sent(tmp_path):
  write_csv(tmp_path / "in.csv", ["A dog runs.", "  ", ""])
  summary = files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"),
                      rules.RulesBackend(), log=lambda m: None)
  rows = read_csv(tmp_path / "out.csv")
  assert [r["negation_status"] for r in rows] == ["generated", "failed", "failed"]
  assert rows[1]["paraphrased_reason"] == generate.EMPTY_CAPTION
  assert summary["empty_captions"] == 2 and summary["unique_captions"] == 1


def test_control_characters_in_answers_never_reach_the_csv(tmp_path):
  captions = ["A dog runs on the beach.", "A cat sleeps on a red sofa."]
  noisy = lambda text: "\x00" + text.replace(" ", "\x00 ", 2).replace("on", "on\x1b\x7f", 1)

  def script(caption, purpose, attempt):
    text = "Yes.\x00" if purpose.startswith("verify") else noisy(good(caption, purpose))
    return 200, text, {}, 0.0

  s = ScriptedServer(script)
  try:
    write_csv(tmp_path / "in.csv", captions)
    generator, verifier = http_backends("ollama", s.url)
    files.run(str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), generator, verifier,
              log=lambda m: None)
  finally:
    s.close()
  text = (tmp_path / "out.csv").read_bytes().decode("utf-8").replace("\r\n", "")
  assert not [c for c in text if c < " " or "\x7f" <= c <= "\x9f"]
  rows = read_csv(tmp_path / "out.csv")
  assert [(r["paraphrased"], r["negation"]) for r in rows] == [
      (good(c, "paraphrase"), good(c, "negation")) for c in captions]
