r"""Triple generation's command line: `python -m semclip_jax.data.triples --input=... --output=...`.

Examples:
  # the paper's setting: Phi-4 generates, Mistral verifies and regenerates (ollama)
  python -m semclip_jax.data.triples --input=cc3m.csv --output=cc3m_triples.csv \
      --backend=ollama --model=phi4 --verifier_model=mistral
  # any OpenAI-compatible server (vLLM, llama.cpp server, TGI)
  python -m semclip_jax.data.triples --input=captions.jsonl --output=triples.jsonl \
      --backend=openai --base_url=http://127.0.0.1:8000/v1 --model=Qwen/Qwen2.5-7B-Instruct
  # a local model folder or GGUF file, offline; or the rule templates
  python -m semclip_jax.data.triples --input=c.csv --output=t.csv --backend=transformers \
      --model=/models/phi-4-mini-instruct
  python -m semclip_jax.data.triples --input=c.csv --output=t.csv --backend=rules

Progress (fields done of all, model calls, cached answers, failures, rate, ETA) goes to stderr: a
bar on a terminal, else a line every --progress_every seconds.

Exit status: 0 done; 1 some fields failed on the backend (rerun the same command to retry only
those); 2 bad input or options, an answer cache that cannot be used (one line naming the file), or
a backend that cannot serve any request (no server at the URL, a wrong key or model: the run stops
at the first such error, keeping the answers cached so far); 130 (SIGINT, Ctrl-C) or 143
(SIGTERM): stopped by the signal at once, without waiting for the requests in flight, keeping the
answers cached so far (a second signal while stopping is ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from typing import Callable

from semclip_jax import storage
from semclip_jax.data.triples import backends, files, generate, protocol
from semclip_jax.progress import HelpFormatter


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.data.triples",
                                   description=__doc__, formatter_class=HelpFormatter)
  add = parser.add_argument
  add("--input", help="CSV/JSONL of captions, or ArrayRecord shards (a folder or a file); local "
      "or gs://")
  add("--output", help=".csv or .jsonl (records + paraphrased, negation and flags), or a folder "
      "of ArrayRecord shards (from ArrayRecord input); local or gs://")
  add("--caption_column", default="caption", help="input column of the captions")
  add("--paraphrase_column", default="paraphrased", help="output column of the paraphrases")
  add("--negation_column", default="negation", help="output column of the negations")
  add("--backend", default="ollama", choices=backends.BACKENDS, help="what generates")
  add("--model", default="", help="model name (ollama, openai) or local folder / .gguf file "
      "(transformers)")
  add("--base_url", help="server URL; unset: ollama http://127.0.0.1:11434, openai "
      "http://127.0.0.1:8000/v1")
  add("--verifier_backend", choices=backends.BACKENDS, help="unset: --backend")
  add("--verifier_model", help="verifies and regenerates; unset: --model")
  add("--verifier_base_url", help="unset: --base_url when the backends are the same")
  add("--api_key", help="bearer token; unset for openai: $OPENAI_API_KEY")
  add("--verify", action=argparse.BooleanOptionalAction, default=True,
      help="ask the verifier yes/no about each answer")
  add("--regenerate", action=argparse.BooleanOptionalAction, default=True,
      help="regenerate rejected answers with the verifier model")
  add("--prompts", help="JSON file {kind: {system, user, examples}} overriding default prompts; "
      "kinds: paraphrase, negation, verify_paraphrase, verify_negation")
  add("--print_prompts", action="store_true", help="print the prompts as JSON and exit")
  add("--temperature", type=float, default=0.7, help="generation and regeneration")
  add("--verify_temperature", type=float, default=0.0, help="verification")
  add("--max_tokens", type=int, default=128, help="answer length limit")
  add("--max_length_ratio", type=float, default=2.0,
      help="reject answers longer than this times the caption (+20 characters)")
  add("--concurrency", type=int, default=8, help="requests in flight")
  add("--timeout", type=float, default=60.0, help="seconds to connect and between bytes")
  add("--deadline", type=float, help="seconds one attempt of a request may take in all "
      "(connecting, the headers and the whole body); past it: a timeout, retried; unset: "
      f"{backends.DEADLINE_TIMEOUTS} x --timeout")
  add("--max_response_bytes", type=int, default=backends.MAX_RESPONSE_BYTES,
      help="a larger answer body fails its request (read no further)")
  add("--retries", type=int, default=4, help="retries of timeouts, dropped connections, 429, 5xx")
  add("--backoff", type=float, default=1.0, help="seconds before the first retry, then doubled")
  add("--max_backoff", type=float, default=30.0, help="longest wait before a retry, in seconds")
  add("--cache", help="SQLite cache, a local file; unset: <output>.cache.sqlite, or in the output "
      "folder (for a gs:// output: under ~/.cache/semclip_jax/triples_cache)")
  add("--device", help="transformers: cpu, cuda, cuda:1 ...; unset: cuda if available")
  add("--dtype", default="auto", help="transformers: auto, float32, bfloat16, float16")
  add("--records_per_shard", type=int, default=10_000, help="ArrayRecord output")
  add("--progress_every", type=float, default=30.0, help="seconds between progress lines")
  return parser


def _prompts(path: str | None) -> dict[str, generate.Prompt]:
  if path is None:
    return generate.load_prompts(None)
  with storage.open(storage.check(path, "--prompts"), encoding="utf-8") as f:
    return generate.load_prompts(json.load(f))


def _backends(args: argparse.Namespace) -> tuple[protocol.Backend, protocol.Backend]:
  retry = backends.RetryPolicy(args.retries, args.backoff, args.max_backoff)
  common = dict(timeout=args.timeout, deadline=args.deadline,
                max_response_bytes=args.max_response_bytes, retry=retry, api_key=args.api_key,
                device=args.device, dtype=args.dtype)
  generator = backends.make_backend(args.backend, args.model, base_url=args.base_url, **common)
  name = args.verifier_backend or args.backend
  model = args.verifier_model or (args.model if name == args.backend else "")
  url = args.verifier_base_url or (args.base_url if name == args.backend else None)
  if (name, model, url) == (args.backend, args.model, args.base_url):
    return generator, generator  # one backend object: a local model is loaded once
  return generator, backends.make_backend(name, model, base_url=url, **common)


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM arrived: raised in the main thread by `main`'s handler, so that both stop
  the run as Ctrl-C does (a KeyboardInterrupt: temporary files are removed, the pool is not
  waited for, the cache is closed)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _stop_on_signals() -> Callable[[], None]:
  """Makes SIGINT and SIGTERM raise `Interrupted`; returns what restores the previous handlers.
  The first signal stops the run; later ones are ignored, so they cannot break the stop's own
  cleanup (closing the cache, removing temporary files) halfway."""
  if threading.current_thread() is not threading.main_thread():  # only it may set handlers
    return lambda: None
  stop_signals = (signal.SIGINT, signal.SIGTERM)

  def stop(signum: int, _frame: object) -> None:
    for s in stop_signals:
      signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)

  previous = {s: signal.signal(s, stop) for s in stop_signals}

  def restore() -> None:
    for s, handler in previous.items():
      signal.signal(s, handler)

  return restore


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  restore = _stop_on_signals()
  try:
    prompts = _prompts(args.prompts)
    if args.print_prompts:
      print(json.dumps({k: dataclasses.asdict(p) for k, p in prompts.items()}, indent=1))
      return 0
    if not args.input or not args.output:
      raise ValueError("--input and --output are required")
    generator, verifier = _backends(args)
    settings = generate.Settings(prompts, args.temperature, args.verify_temperature,
                                 args.max_tokens, args.verify, args.regenerate, args.concurrency,
                                 args.max_length_ratio)
    summary = files.run(args.input, args.output, generator, verifier, settings=settings,
                        cache_path=args.cache, caption_column=args.caption_column,
                        columns={"paraphrase": args.paraphrase_column,
                                 "negation": args.negation_column},
                        records_per_shard=args.records_per_shard,
                        log=lambda m: print(m, flush=True), progress_every=args.progress_every)
  except protocol.FatalBackendError as e:
    print(f"error: the backend cannot serve requests: {e} (the answers received so far are "
          "cached: rerun the same command once it is fixed)", file=sys.stderr)
    return 2
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:  # Interrupted; a plain one (no handler set) is a SIGINT
    signum = getattr(e, "signum", signal.SIGINT)
    print(f"interrupted by {signal.Signals(signum).name}; the answers received so far are cached: "
          "rerun the same command to continue", file=sys.stderr)
    return 128 + signum
  finally:
    restore()
  return 1 if summary["backend_failures"] else 0


if __name__ == "__main__":
  status = main()
  if status > 128:
    # Stopped by a signal: exit now. The interpreter would otherwise join the pool's threads, each
    # until its request in flight ends (up to --deadline per retry); their answers are not needed
    # and the cache is already closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)
