"""Caption triples from LLMs: a paraphrase and a negation for every caption, verified and cached.

Modules: `protocol` (the request, backend interface and errors every backend shares),
`backends` (ollama, OpenAI-compatible servers, local transformers models, the retry policy, and
`make_backend` by name), `rules` (offline templates), `cleaning` (one clean sentence out of a
chatty answer), `cache` (SQLite, one row per answer), `generate` (prompts, the generate / verify /
regenerate flow, statistics), `files` (CSV, JSONL and ArrayRecord in and out) and `__main__` (the
command line: `python -m semclip_jax.data.triples --help`).

  from semclip_jax.data import triples
  generator = triples.make_backend("ollama", "phi4")
  verifier = triples.make_backend("ollama", "mistral")
  stats = triples.run("cc3m.csv", "cc3m_triples.csv", generator, verifier)
"""

from __future__ import annotations

from semclip_jax.data.triples.backends import BACKENDS, RetryPolicy, make_backend
from semclip_jax.data.triples.cache import Cache
from semclip_jax.data.triples.cleaning import check, clean, parse_verdict
from semclip_jax.data.triples.generate import (DEFAULT_PROMPTS, KINDS, FieldResult, Prompt,
                                               Settings, TripleGenerator, load_prompts)
from semclip_jax.data.triples.files import run
from semclip_jax.data.triples.protocol import Backend, BackendError, FatalBackendError, Request
from semclip_jax.data.triples.rules import RulesBackend, negate, paraphrase

__all__ = ["BACKENDS", "Backend", "BackendError", "Cache", "DEFAULT_PROMPTS", "FatalBackendError",
           "FieldResult", "KINDS", "Prompt", "Request", "RetryPolicy", "RulesBackend", "Settings",
           "TripleGenerator", "check", "clean", "load_prompts", "make_backend", "negate",
           "paraphrase", "parse_verdict", "run"]
