"""Paraphrase and negation of captions: generate, clean, check, verify, regenerate; counted, cached.

For each caption and each kind (paraphrase, negation), as in the paper (Phi-4 generates, Mistral
checks with yes/no and regenerates what it rejects):

  1. the generator answers the kind's prompt; `cleaning.clean` keeps the sentence and
     `cleaning.check` rejects empty, wordless, refusing, unchanged or far too long answers;
  2. if verification is on, the verifier model answers the `verify_<kind>` prompt with yes or no;
  3. an answer rejected by 1 or 2 is regenerated once by the verifier model (same prompt; cache
     kind `regenerate_<kind>`), cleaned and checked again but not verified again;
  4. the field keeps the text (or "" when nothing usable came back) and flags: `status`
     (generated, regenerated, failed), `verified` ("yes": the verifier accepted the final text,
     "no": it rejected it and nothing replaced it, "": not verified) and `reason` (why the first
     answer was rejected, or why the field failed).

Every model answer goes to the `Cache` as it arrives, so a rerun repeats no answered request. A
request that fails on the backend (after its retries; an answer that is malformed, not valid text
or too large fails at once, see `backends`) fails its field without caching anything: rerunning
retries it. Fields are worked on by a bounded thread pool; `progress.Progress` reports the fields
done, model calls, cached answers and failures, with rate and ETA, on stderr.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import string
import threading
from typing import Any, Iterable, Mapping

from semclip_jax.data.triples import cleaning
from semclip_jax.data.triples.cache import Cache, prompt_key
from semclip_jax.data.triples.protocol import Backend, BackendError, FatalBackendError, Request
from semclip_jax.progress import Progress

KINDS = ("paraphrase", "negation")
GENERATED, REGENERATED, FAILED = "generated", "regenerated", "failed"
VERIFIER_NO = "verifier said no"
VERIFIER_UNCLEAR = "verifier answer unclear"
EMPTY_CAPTION = "empty caption"
MAX_EXAMPLES = 10  # examples kept per statistics category


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A chat prompt: `system`, then each few-shot example as a user turn (the `user` template
  filled with the example's fields) and an assistant turn (its "answer"), then the user turn.
  Templates are `str.format` strings over {caption} and, for verification, {candidate}."""
  system: str
  user: str
  examples: tuple[Mapping[str, str], ...] = ()

  def messages(self, **fields: str) -> tuple[dict[str, str], ...]:
    turns = [{"role": "system", "content": self.system}] if self.system else []
    for example in self.examples:
      turns.append({"role": "user", "content": self.user.format(**example)})
      turns.append({"role": "assistant", "content": example["answer"]})
    return (*turns, {"role": "user", "content": self.user.format(**fields)})

  @classmethod
  def from_dict(cls, kind: str, value: Mapping[str, Any]) -> "Prompt":
    prompt = cls(value.get("system", ""), value["user"],
                 tuple(dict(e) for e in value.get("examples", ())))
    wanted = {"caption", "candidate"} if kind.startswith("verify_") else {"caption"}
    used = {name for _, name, _, _ in string.Formatter().parse(prompt.user) if name is not None}
    if used != wanted:
      raise ValueError(f"prompt {kind!r}: the user template must use exactly {sorted(wanted)}, "
                       f"it uses {sorted(used)}")
    for example in prompt.examples:
      if not wanted | {"answer"} <= set(example):
        raise ValueError(f"prompt {kind!r}: each example needs {sorted(wanted | {'answer'})}")
    return prompt


_REWRITE = ("You rewrite image captions for a dataset. Reply with the new caption only, one "
            "sentence.")
DEFAULT_PROMPTS: dict[str, Prompt] = {
    "paraphrase": Prompt(
        _REWRITE + " It must mean exactly what the caption means, in other words or another word "
        "order: keep every object, attribute, number and relation, and add nothing.",
        "Caption: {caption}",
        ({"caption": "A zebra is standing in an open field.",
          "answer": "In an open field, there is a zebra standing."},
         {"caption": "Two dogs play with a red ball on the grass.",
          "answer": "A pair of dogs is playing on the grass with a red ball."})),
    "negation": Prompt(
        _REWRITE + " It must contradict the caption, so that both cannot describe the same image: "
        "negate or change one key detail (an object, attribute, number, relation or action) and "
        "keep the rest.",
        "Caption: {caption}",
        ({"caption": "A zebra is standing in an open field.",
          "answer": "A zebra is not standing in an open field."},
         {"caption": "Two dogs play with a red ball on the grass.",
          "answer": "Two dogs play with a red ball on the sand, not on the grass."})),
    "verify_paraphrase": Prompt(
        "You check rewritten image captions. Answer with one word: yes or no.",
        "Caption: {caption}\nRewrite: {candidate}\nDoes the rewrite mean the same as the caption?",
        ({"caption": "A cat sleeps on a sofa.", "candidate": "On a couch, a cat is asleep.",
          "answer": "yes"},
         {"caption": "A cat sleeps on a sofa.", "candidate": "A cat sleeps on a bed.",
          "answer": "no"})),
    "verify_negation": Prompt(
        "You check rewritten image captions. Answer with one word: yes or no.",
        "Caption: {caption}\nRewrite: {candidate}\nDoes the rewrite contradict the caption, so "
        "that both cannot describe the same image?",
        ({"caption": "A cat sleeps on a sofa.", "candidate": "A cat sleeps on a bed, not a sofa.",
          "answer": "yes"},
         {"caption": "A cat sleeps on a sofa.", "candidate": "On a sofa, a cat is sleeping.",
          "answer": "no"})),
}


def load_prompts(overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Prompt]:
  """The default prompts with the kinds in `overrides` ({kind: {system, user, examples}}) replaced
  (a missing field keeps its default)."""
  prompts = dict(DEFAULT_PROMPTS)
  for kind, value in (overrides or {}).items():
    if kind not in prompts:
      raise ValueError(f"unknown prompt {kind!r}; the prompts are {sorted(prompts)}")
    default = dataclasses.asdict(prompts[kind])
    prompts[kind] = Prompt.from_dict(kind, {**default, **value})
  return prompts


@dataclasses.dataclass(frozen=True)
class Settings:
  prompts: Mapping[str, Prompt] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PROMPTS))
  temperature: float = 0.7  # generation and regeneration
  verify_temperature: float = 0.0
  max_tokens: int = 128  # per answer; a caption rewrite needs ~40
  verify: bool = True
  regenerate: bool = True
  concurrency: int = 8  # requests in flight
  max_length_ratio: float = 2.0  # reject answers longer than ratio x caption + 20 characters


@dataclasses.dataclass(frozen=True)
class FieldResult:
  text: str
  status: str  # generated | regenerated | failed
  verified: str = ""  # yes | no | "" (see the module docstring)
  reason: str = ""
  backend_error: bool = False  # failed on the backend: a rerun retries it


class Stats:
  """Thread-safe counts per kind, reasons and a few examples of each outcome."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts = {kind: collections.Counter() for kind in KINDS}
    self.reasons = {"rejected": collections.Counter(), "failed": collections.Counter()}
    self.calls = collections.Counter()  # model requests sent, by cache kind
    self.cache_hits = 0
    self.examples: dict[str, list[dict[str, str]]] = collections.defaultdict(list)

  def add(self, kind: str, name: str, *, reason: str | None = None,
          example: Mapping[str, str] | None = None) -> None:
    with self._lock:
      self.counts[kind][name] += 1
      if reason is not None:
        self.reasons[name][reason] += 1
      if example is not None and len(self.examples[name]) < MAX_EXAMPLES:
        self.examples[name].append({"kind": kind, **example})

  def call(self, purpose: str, cached: bool) -> None:
    with self._lock:
      if cached:
        self.cache_hits += 1
      else:
        self.calls[purpose] += 1

  def totals(self) -> dict[str, int]:
    """The progress line's counts: model calls sent, cached answers, failed fields."""
    with self._lock:
      return {"model_calls": sum(self.calls.values()), "cached": self.cache_hits,
              "failed": sum(c["failed"] for c in self.counts.values())}

  def summary(self) -> dict[str, Any]:
    with self._lock:
      return {"counts": {k: dict(sorted(c.items())) for k, c in self.counts.items()},
              "reasons": {k: dict(c.most_common()) for k, c in self.reasons.items()},
              "model_calls": dict(sorted(self.calls.items())), "cache_hits": self.cache_hits,
              "examples": dict(self.examples)}


class TripleGenerator:
  """Makes the paraphrase and negation fields of captions; see the module docstring."""

  def __init__(self, generator: Backend, verifier: Backend | None = None, *,
               cache: Cache | None = None, settings: Settings = Settings(),
               progress_every: float = 30.0):
    self.generator, self.verifier = generator, verifier or generator
    self.cache, self.settings = cache, settings
    self.progress_every = progress_every  # seconds between progress lines (off a terminal)
    self.stats = Stats()

  # -- one request ------------------------------------------------------------------------------
  def _ask(self, backend: Backend, kind: str, purpose: str, caption: str,
           candidate: str | None = None) -> str:
    """The answer to prompt `kind` from `backend`, from the cache when it holds one."""
    verify = kind.startswith("verify_")
    fields = {"caption": caption, **({"candidate": candidate} if verify else {})}
    request = Request(purpose, caption, self.settings.prompts[kind].messages(**fields),
                      self.settings.verify_temperature if verify else self.settings.temperature,
                      self.settings.max_tokens, candidate)
    cache = self.cache if backend.cacheable else None
    key = (caption, backend.model_id, prompt_key(request.payload()), purpose)
    answer = cache.get(*key) if cache is not None else None
    self.stats.call(purpose, cached=answer is not None)
    if answer is None:
      answer = backend.complete(request)  # BackendError: nothing cached, a rerun asks again
      if cache is not None:
        cache.put(*key, answer)
    return answer

  def _generate(self, backend: Backend, kind: str, purpose: str, caption: str
                ) -> tuple[str | None, str | None]:
    """(clean text, None) or (None, rejection reason)."""
    answer = self._ask(backend, kind, purpose, caption)
    self.stats.add(kind, "generated")
    text = cleaning.clean(answer, sentences=cleaning.count_sentences(caption))
    example = {"caption": caption, "answer": answer[:300], "cleaned": text}
    if text != " ".join(answer.split()):  # more than whitespace changed
      self.stats.add(kind, "cleaned", example=example)
    reason = cleaning.check(text, caption, max_length_ratio=self.settings.max_length_ratio)
    if reason is not None:
      self.stats.add(kind, "rejected", reason=reason, example={**example, "reason": reason})
      return None, reason
    return text, None

  # -- one field --------------------------------------------------------------------------------
  def field(self, caption: str, kind: str) -> FieldResult:
    """The `kind` field of `caption`. Raises FatalBackendError only."""
    try:
      result = self._field(caption, kind)
    except FatalBackendError:
      raise
    except BackendError as e:
      result = FieldResult("", FAILED, "", f"backend error: {e.reason}", backend_error=True)
      self.stats.add(kind, "failed", reason=result.reason,
                     example={"caption": caption, "reason": str(e)[:300]})
      return result
    if result.status == FAILED:
      self.stats.add(kind, "failed", reason=result.reason,
                     example={"caption": caption, "reason": result.reason})
      return result
    if result.status == REGENERATED:
      self.stats.add(kind, "regenerated", example={"caption": caption, "text": result.text,
                                                   "reason": result.reason})
    self.stats.add(kind, "ok")
    return result

  def _field(self, caption: str, kind: str) -> FieldResult:
    text, reason = self._generate(self.generator, kind, kind, caption)
    verified = ""
    if text is not None and not self.settings.verify:
      return FieldResult(text, GENERATED)
    if text is not None:
      answer = self._ask(self.verifier, f"verify_{kind}", f"verify_{kind}", caption, text)
      verdict = cleaning.parse_verdict(answer)
      if verdict:
        self.stats.add(kind, "verified")
        return FieldResult(text, GENERATED, "yes")
      reason, verified = (VERIFIER_NO if verdict is False else VERIFIER_UNCLEAR), "no"
      self.stats.add(kind, "rejected", reason=reason, example={
          "caption": caption, "cleaned": text, "verdict": answer[:300], "reason": reason})
    if not self.settings.regenerate:
      return FieldResult("", FAILED, verified, reason)
    again, second = self._generate(self.verifier, kind, f"regenerate_{kind}", caption)
    if again is None:
      return FieldResult("", FAILED, "", f"{reason}; regenerated: {second}")
    return FieldResult(again, REGENERATED, "", reason)

  # -- many captions ----------------------------------------------------------------------------
  def run(self, captions: Iterable[Any]) -> dict[str, dict[str, FieldResult]]:
    """{caption: {kind: FieldResult}} for the distinct non-empty captions, in first-seen order.
    FatalBackendError stops the run (what was answered stays cached); so does KeyboardInterrupt,
    without waiting for the requests in flight (see `__main__`: SIGINT and SIGTERM raise one)."""
    unique = list(dict.fromkeys(c for c in captions if isinstance(c, str) and c.strip()))
    results: dict[str, dict[str, FieldResult]] = {c: {} for c in unique}
    tasks = ((c, k) for c in unique for k in KINDS)
    window = 2 * max(1, self.settings.concurrency)  # submitted but unfinished fields, at most
    pool = concurrent.futures.ThreadPoolExecutor(max(1, self.settings.concurrency))
    interrupted = False
    try:
      with Progress(2 * len(unique), "triples", unit="fields",
                    interval_s=self.progress_every) as meter:
        pending: dict[concurrent.futures.Future, tuple[str, str]] = {}
        while True:
          for caption, kind in tasks:
            pending[pool.submit(self.field, caption, kind)] = (caption, kind)
            if len(pending) >= window:
              break
          if not pending:
            break
          finished, _ = concurrent.futures.wait(
              pending, return_when=concurrent.futures.FIRST_COMPLETED)
          for future in finished:
            caption, kind = pending.pop(future)
            results[caption][kind] = future.result()
          meter.log(**self.stats.totals())
          meter.update(len(finished))
    except KeyboardInterrupt:  # Ctrl-C, or the command line's SIGTERM / SIGINT
      interrupted = True
      raise
    finally:
      # Fields not started are dropped. After an error (FatalBackendError) the requests in flight
      # end first, their answers cached; a stop signal waits for none of them (each may take up
      # to the deadline per retry): a rerun asks them again.
      pool.shutdown(wait=not interrupted, cancel_futures=True)
    return results
