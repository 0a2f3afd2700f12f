"""Chat-model backends behind `protocol.Backend` (`complete(request) -> str`), made by name.

- `ollama`: an ollama server's `/api/chat` (non-streaming), e.g. http://127.0.0.1:11434.
- `openai`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp's server, TGI,
  LM Studio, the OpenAI API); `--api_key` or $OPENAI_API_KEY as a bearer token when set.
- `transformers`: a local causal LM folder, or a `.gguf` file (dequantised by transformers; needs
  the `gguf` package), run in this process with PyTorch. Never touches the network.
- `rules`: deterministic templates, in `rules.py`.

HTTP retry policy: a request is tried at most `1 + retries` times. Retried: dropped connections
(reset, closed early), timeouts (`timeout` seconds to connect and between received bytes), HTTP
429 and every 5xx. Before retry n (0-based) the backend sleeps `backoff * 2**n` seconds times a
random factor in [0.5, 1] (so parallel workers do not retry in lockstep), at least the server's
`Retry-After` seconds when it sends one, and never more than `max_backoff`. What would fail every
request alike raises `FatalBackendError`, which stops the run at once: no server at the URL
(connection refused, unknown host, unreachable network) and HTTP 401, 403 and 404 (bad key,
unknown model or URL). Other 4xx, a malformed body and exhausted retries raise `BackendError` for
that request only.
"""

from __future__ import annotations

import dataclasses
import errno
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

from semclip_jax.data.triples.cache import prompt_key
from semclip_jax.data.triples.protocol import Backend, BackendError, FatalBackendError, Request
from semclip_jax.data.triples.rules import RulesBackend

BACKENDS = ("ollama", "openai", "transformers", "rules")
DEFAULT_URLS = {"ollama": "http://127.0.0.1:11434", "openai": "http://127.0.0.1:8000/v1"}


class _Retryable(Exception):
  def __init__(self, message: str, reason: str, retry_after: float | None = None):
    super().__init__(message)
    self.reason = reason
    self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  retries: int = 4
  backoff: float = 1.0  # seconds before the first retry, doubled after each
  max_backoff: float = 30.0

  def delay(self, attempt: int, retry_after: float | None = None) -> float:
    wait = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
    return min(self.max_backoff, max(wait, retry_after or 0.0))


def _unreachable(error: BaseException) -> bool:
  """Whether connecting failed because nothing serves the URL: refused, an unknown host (DNS),
  no route. Every later request would fail the same way, so retrying only delays the error."""
  return (isinstance(error, (ConnectionRefusedError, socket.gaierror))
          or (isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                             errno.EADDRNOTAVAIL)))


def _retry_after(headers: Any) -> float | None:
  try:  # seconds only; an HTTP date is rare from model servers and falls back to our backoff
    return max(0.0, float(headers.get("Retry-After")))
  except (TypeError, ValueError):
    return None


class HTTPBackend:
  """JSON over HTTP with the module's retry policy; subclasses say what to send and read."""
  name = "http"
  cacheable = True

  def __init__(self, model: str, base_url: str | None = None, *, timeout: float = 60.0,
               retry: RetryPolicy = RetryPolicy(), api_key: str | None = None,
               sleep: Callable[[float], Any] = time.sleep):
    self.model = model
    self.model_id = f"{self.name}:{model}"
    self.base_url = (base_url or DEFAULT_URLS[self.name]).rstrip("/")
    self.timeout, self.retry, self.api_key, self._sleep = timeout, retry, api_key, sleep

  def url(self) -> str:
    raise NotImplementedError

  def body(self, request: Request) -> dict[str, Any]:
    raise NotImplementedError

  def content(self, data: Any) -> str:
    raise NotImplementedError

  def complete(self, request: Request) -> str:
    data = self._post_with_retries(json.dumps(self.body(request)).encode("utf-8"))
    try:
      text = self.content(data)
    except (KeyError, IndexError, TypeError) as e:
      raise BackendError(f"{self.url()}: unexpected answer {str(data)[:200]!r}",
                         "malformed response") from e
    return text if isinstance(text, str) else ""

  def _post_with_retries(self, body: bytes) -> Any:
    attempt = 0
    while True:
      try:
        return self._post(body)
      except _Retryable as e:
        if attempt >= self.retry.retries:
          raise BackendError(f"{e} (gave up after {attempt + 1} attempts)", e.reason) from e
        self._sleep(self.retry.delay(attempt, e.retry_after))
        attempt += 1

  def _post(self, body: bytes) -> Any:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    request = urllib.request.Request(self.url(), data=body, headers=headers, method="POST")
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        raw = response.read()
    except urllib.error.HTTPError as e:
      detail = e.read()[:300].decode("utf-8", "replace")
      message = f"{self.url()}: HTTP {e.code}: {detail}"
      if e.code == 429 or e.code >= 500:
        raise _Retryable(message, f"HTTP {e.code}", _retry_after(e.headers)) from e
      if e.code in (401, 403, 404):
        raise FatalBackendError(message, f"HTTP {e.code}") from e
      raise BackendError(message, f"HTTP {e.code}") from e
    except (TimeoutError, socket.timeout) as e:
      raise _Retryable(f"{self.url()}: no answer within {self.timeout} s", "timeout") from e
    except urllib.error.URLError as e:
      if isinstance(e.reason, BaseException) and _unreachable(e.reason):
        raise FatalBackendError(f"{self.url()}: cannot connect: {e.reason}", "no server") from e
      timed_out = isinstance(e.reason, (TimeoutError, socket.timeout))
      raise _Retryable(f"{self.url()}: {e.reason}", "timeout" if timed_out
                       else "connection error") from e
    except (ConnectionError, http.client.HTTPException) as e:
      if _unreachable(e):
        raise FatalBackendError(f"{self.url()}: cannot connect: {e}", "no server") from e
      raise _Retryable(f"{self.url()}: {e!r}", "connection error") from e
    try:
      return json.loads(raw)
    except ValueError as e:
      raise BackendError(f"{self.url()}: not JSON: {raw[:200]!r}", "malformed response") from e


class OllamaBackend(HTTPBackend):
  name = "ollama"

  def url(self) -> str:
    return f"{self.base_url}/api/chat"

  def body(self, request: Request) -> dict[str, Any]:
    return {"model": self.model, "messages": [dict(m) for m in request.messages], "stream": False,
            "options": {"temperature": request.temperature, "num_predict": request.max_tokens}}

  def content(self, data: Any) -> str:
    return data["message"]["content"]


class OpenAIBackend(HTTPBackend):
  name = "openai"

  def url(self) -> str:
    if self.base_url.endswith("/chat/completions"):
      return self.base_url
    return self.base_url + ("/chat/completions" if self.base_url.endswith("/v1")
                            else "/v1/chat/completions")

  def body(self, request: Request) -> dict[str, Any]:
    return {"model": self.model, "messages": [dict(m) for m in request.messages],
            "temperature": request.temperature, "max_tokens": request.max_tokens}

  def content(self, data: Any) -> str:
    return data["choices"][0]["message"]["content"]


class TransformersBackend:
  """A local causal LM, loaded on first use. Requests run one at a time (PyTorch already uses
  every core or the GPU for one), with a per-request seed when sampling, so answers are
  reproducible. The prompt goes through the tokenizer's chat template; a tokenizer without one
  gets "System: ...\\nUser: ...\\nAssistant:"."""
  name = "transformers"
  cacheable = True

  def __init__(self, model: str, *, device: str | None = None, dtype: str = "auto"):
    self.path = model
    self.model_id = f"transformers:{model}"
    self.device, self.dtype = device, dtype
    self._lock = threading.Lock()
    self._loaded: tuple[Any, Any] | None = None

  def _load(self) -> tuple[Any, Any]:
    if not os.path.exists(self.path):
      raise FatalBackendError(f"transformers backend: {self.path} is not a local model folder or "
                              ".gguf file", "model not found")
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import transformers  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise FatalBackendError("the transformers backend needs PyTorch (pip install torch)",
                              "no torch") from e
    folder, extra = self.path, {}
    if self.path.endswith(".gguf"):  # transformers reads config, tokenizer and weights from it
      folder, name = os.path.split(os.path.abspath(self.path))
      extra = {"gguf_file": name}  # as documented: (folder or repo, file name in it)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=self.dtype, **extra)
    device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return tokenizer, model.to(device).eval()

  def _prompt(self, tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[str, bool]:
    """(text, whether the tokenizer should add its special tokens)."""
    if getattr(tokenizer, "chat_template", None):
      return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                           add_generation_prompt=True), False
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines + ["Assistant:"]), True

  def complete(self, request: Request) -> str:
    import torch  # pylint: disable=import-outside-toplevel

    with self._lock:
      if self._loaded is None:
        self._loaded = self._load()
      tokenizer, model = self._loaded
      text, special = self._prompt(tokenizer, request.messages)
      inputs = tokenizer(text, return_tensors="pt", add_special_tokens=special).to(model.device)
      sample = request.temperature > 0
      options = {"do_sample": sample, "max_new_tokens": request.max_tokens,
                 "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                 else tokenizer.eos_token_id}
      if sample:
        options["temperature"] = request.temperature
        # Seeded by the request, so reruns agree; the kind is in it, so a regeneration differs.
        seed = prompt_key({**request.payload(), "kind": request.kind})
        torch.manual_seed(int(seed[:8], 16))
      with torch.no_grad():
        output = model.generate(**inputs, **options)
      new_tokens = output[0, inputs["input_ids"].shape[1]:]
      return tokenizer.decode(new_tokens, skip_special_tokens=True)


def make_backend(name: str, model: str = "", *, base_url: str | None = None,
                 timeout: float = 60.0, retry: RetryPolicy = RetryPolicy(),
                 api_key: str | None = None, device: str | None = None, dtype: str = "auto"
                 ) -> Backend:
  """The backend `name` (one of BACKENDS) serving `model`; the options apply where they mean
  something (HTTP: base_url, timeout, retry, api_key; transformers: device, dtype)."""
  if name == "rules":
    return RulesBackend()
  if not model:
    raise ValueError(f"the {name} backend needs a model (--model)")
  if name == "ollama":
    return OllamaBackend(model, base_url, timeout=timeout, retry=retry, api_key=api_key)
  if name == "openai":
    return OpenAIBackend(model, base_url, timeout=timeout, retry=retry,
                         api_key=api_key or os.environ.get("OPENAI_API_KEY"))
  if name == "transformers":
    return TransformersBackend(model, device=device, dtype=dtype)
  raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
