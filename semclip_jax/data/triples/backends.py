"""Chat-model backends behind `protocol.Backend` (`complete(request) -> str`), made by name.

- `ollama`: an ollama server's `/api/chat` (non-streaming), e.g. http://127.0.0.1:11434.
- `openai`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp's server, TGI,
  LM Studio, the OpenAI API); `--api_key` or $OPENAI_API_KEY as a bearer token when set.
- `transformers`: a local causal LM folder, or a `.gguf` file (dequantised by transformers; needs
  the `gguf` package), run in this process with PyTorch. Never touches the network.
- `rules`: deterministic templates, in `rules.py`.

HTTP retry policy: a request is tried at most `1 + retries` times. Retried: dropped connections
(reset, closed early), timeouts, HTTP 429 and every 5xx. A timeout is either `timeout` seconds
without a byte (connecting, or between received bytes) or an attempt past its `deadline` (default
5 x `timeout`): the whole attempt (connecting, TLS, sending, the headers and the whole body) must
end within it, so a server trickling a byte now and then cannot hold a request forever. Before
retry n (0-based) the backend sleeps `backoff * 2**n` seconds times a random factor in [0.5, 1]
(so parallel workers do not retry in lockstep), at least the server's `Retry-After` seconds when
it sends one, and never more than `max_backoff`. What would fail every request alike raises
`FatalBackendError`, which stops the run at once: no server at the URL (connection refused,
unknown host, unreachable network) and HTTP 401, 403 and 404 (bad key, unknown model or URL).
Other 4xx, a body over `max_response_bytes` (1 MiB by default: an answer is a few hundred bytes;
no more than the limit + 1 byte is read) and a malformed answer raise `BackendError` for that
request only, unretried, as do exhausted retries. Malformed: not JSON, JSON nested deeper than
the parser's recursion limit, no answer text where the API puts it, or text UTF-8 cannot encode
(a lone surrogate such as "\\ud800", which JSON allows, could be neither cached nor written).
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
MAX_RESPONSE_BYTES = 1 << 20  # an answer's JSON is a few hundred bytes; 1 MiB allows any sane one
DEADLINE_TIMEOUTS = 5  # the default deadline, in `timeout`s


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


class _Deadline:
  """One attempt's time limit in all. A socket timeout bounds each wait for bytes, so a server
  sending a byte now and then never trips it; this timer shuts the attempt's socket down when the
  limit passes, which ends a blocked send or receive at once (connecting is bounded by the socket
  timeout, which is at most the deadline). The socket is watched through a duplicate of it: TLS
  takes the original over, and a closed one's file number may already belong to another socket."""

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.passed = False
    self._done = False
    self._socket: socket.socket | None = None
    self._lock = threading.Lock()
    self._timer = threading.Timer(seconds, self._expire)
    self._timer.daemon = True
    self._timer.start()

  def watch(self, sock: socket.socket) -> socket.socket:
    with self._lock:
      if not self._done:
        if self._socket is not None:
          self._socket.close()
        self._socket = sock.dup()
        if self.passed:
          _shutdown(self._socket)
    return sock

  def _expire(self) -> None:
    with self._lock:
      if not self._done:
        self.passed = True
        if self._socket is not None:
          _shutdown(self._socket)

  def finish(self) -> bool:
    """Ends the watch (again: a no-op); whether the limit passed first."""
    with self._lock:
      self._done = True
      self._timer.cancel()
      if self._socket is not None:
        self._socket.close()
        self._socket = None
      return self.passed


def _shutdown(sock: socket.socket) -> None:
  try:
    sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread, unlike close()
  except OSError:  # already disconnected
    pass


class _Watched:
  """Mixed into urllib's HTTP and HTTPS handlers: each connection of a request that carries a
  `deadline` hands its socket to it. http.client makes every socket of a connection (a proxy
  tunnel's too, before TLS) with the instance's `_create_connection`, there to be replaced."""

  def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
    deadline = getattr(req, "deadline", None)

    def connection(*args: Any, **options: Any) -> http.client.HTTPConnection:
      conn = http_class(*args, **options)
      create = conn._create_connection  # pylint: disable=protected-access
      conn._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))
      return conn

    return super().do_open(http_class if deadline is None else connection, req, **kwargs)


class _HTTPHandler(_Watched, urllib.request.HTTPHandler):
  pass


class _HTTPSHandler(_Watched, urllib.request.HTTPSHandler):
  pass


def _read_body(response: http.client.HTTPResponse, limit: int, url: str) -> bytes:
  """The body, of which at most `limit` + 1 bytes are read: a larger one is a BackendError,
  whatever the server sends (a declared length over the limit is refused before reading)."""
  if (response.length or 0) <= limit:
    raw = response.read(limit + 1)
    if len(raw) <= limit:
      if response.length:  # read(n) returns a body cut short without read()'s IncompleteRead
        raise http.client.IncompleteRead(raw, response.length)
      return raw
  raise BackendError(f"{url}: the answer is larger than {limit} bytes (--max_response_bytes)",
                     "response too large")


class HTTPBackend:
  """JSON over HTTP with the module's retry policy; subclasses say what to send and read."""
  name = "http"
  cacheable = True

  def __init__(self, model: str, base_url: str | None = None, *, timeout: float = 60.0,
               deadline: float | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES,
               retry: RetryPolicy = RetryPolicy(), api_key: str | None = None,
               sleep: Callable[[float], Any] = time.sleep):
    self.model = model
    self.model_id = f"{self.name}:{model}"
    self.base_url = (base_url or DEFAULT_URLS[self.name]).rstrip("/")
    self.timeout, self.retry, self.api_key, self._sleep = timeout, retry, api_key, sleep
    self.deadline = DEADLINE_TIMEOUTS * timeout if deadline is None else deadline
    self.max_response_bytes = max_response_bytes
    for name, value in (("--timeout", timeout), ("--deadline", self.deadline),
                        ("--max_response_bytes", max_response_bytes)):
      if not value > 0:
        raise ValueError(f"{name} must be positive, not {value}")
    # build_opener keeps urllib's defaults (proxies from the environment, redirects) and puts
    # these handlers in place of its plain HTTP and HTTPS ones.
    self._opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)

  def url(self) -> str:
    raise NotImplementedError

  def body(self, request: Request) -> dict[str, Any]:
    raise NotImplementedError

  def content(self, data: Any) -> str:
    raise NotImplementedError

  def complete(self, request: Request) -> str:
    raw = self._post_with_retries(json.dumps(self.body(request)).encode("utf-8"))
    return self._text(raw)

  def _text(self, raw: bytes) -> str:
    """The answer in a body; anything else there is a BackendError (see the module docstring)."""
    def malformed(what: str) -> BackendError:
      return BackendError(f"{self.url()}: malformed answer ({what}): {raw[:200]!r}",
                          "malformed response")

    try:
      data = json.loads(raw)
    except ValueError as e:
      raise malformed("not JSON") from e
    except RecursionError as e:  # the parser recurses per level: "[[[[...]]]]" reaches the limit
      raise malformed("JSON nested too deeply") from e
    try:
      text = self.content(data)
    except (KeyError, IndexError, TypeError) as e:
      raise malformed("no answer text where the API puts it") from e
    if text is None:  # "content": null, a model that said nothing: an empty answer, rejected
      return ""
    if not isinstance(text, str):
      raise malformed(f"the answer is a JSON {type(text).__name__}, not text")
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:
      raise malformed(f"{e.reason} at character {e.start}") from e
    return text

  def _post_with_retries(self, body: bytes) -> bytes:
    attempt = 0
    while True:
      try:
        return self._post(body)
      except _Retryable as e:
        if attempt >= self.retry.retries:
          raise BackendError(f"{e} (gave up after {attempt + 1} attempts)", e.reason) from e
        self._sleep(self.retry.delay(attempt, e.retry_after))
        attempt += 1

  def _exchange(self, request: urllib.request.Request) -> tuple[int, bytes, Any]:
    """(status, body, headers) of one attempt; an HTTP error's body is read up to 300 bytes."""
    try:
      with self._opener.open(request, timeout=min(self.timeout, self.deadline)) as response:
        return (response.status, _read_body(response, self.max_response_bytes, self.url()),
                response.headers)
    except urllib.error.HTTPError as e:
      try:
        detail = e.read(300)
      except (OSError, http.client.HTTPException):  # the status says enough
        detail = b""
      finally:
        e.close()
      return e.code, detail, e.headers

  def _post(self, body: bytes) -> bytes:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    request = urllib.request.Request(self.url(), data=body, headers=headers, method="POST")
    request.deadline = deadline = _Deadline(self.deadline)  # read by _Watched
    timed_out = lambda: _Retryable(f"{self.url()}: no whole answer within the deadline of "
                                   f"{self.deadline} s (--deadline)", "timeout")
    try:
      status, raw, reply_headers = self._exchange(request)
    except (OSError, http.client.HTTPException, BackendError) as e:
      # Whatever broke after the deadline passed, the deadline broke it (a closed socket).
      raise (timed_out() if deadline.finish() else self._failure(e)) from e
    finally:
      passed = deadline.finish()
    if passed:  # a body cut short with no declared length reads as whole
      raise timed_out()
    if status < 300:
      return raw
    message = f"{self.url()}: HTTP {status}: {' '.join(raw.decode('utf-8', 'replace').split())}"
    if status == 429 or status >= 500:
      raise _Retryable(message, f"HTTP {status}", _retry_after(reply_headers))
    if status in (401, 403, 404):
      raise FatalBackendError(message, f"HTTP {status}")
    raise BackendError(message, f"HTTP {status}")

  def _failure(self, error: BaseException) -> BaseException:
    """What an attempt that raised `error` (not past its deadline) is, by the retry policy."""
    if isinstance(error, BackendError):
      return error
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
      error = error.reason  # urllib wraps what failed while connecting and sending
    if _unreachable(error):
      return FatalBackendError(f"{self.url()}: cannot connect: {error}", "no server")
    if isinstance(error, (TimeoutError, socket.timeout)):
      return _Retryable(f"{self.url()}: no answer within {self.timeout} s", "timeout")
    if isinstance(error, urllib.error.URLError):  # a reason that is no exception
      return _Retryable(f"{self.url()}: {error.reason}", "connection error")
    return _Retryable(f"{self.url()}: {error!r}", "connection error")


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
                 timeout: float = 60.0, deadline: float | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, retry: RetryPolicy = RetryPolicy(),
                 api_key: str | None = None, device: str | None = None, dtype: str = "auto"
                 ) -> Backend:
  """The backend `name` (one of BACKENDS) serving `model`; the options apply where they mean
  something (HTTP: base_url, timeout, deadline, max_response_bytes, retry, api_key; transformers:
  device, dtype)."""
  if name == "rules":
    return RulesBackend()
  if not model:
    raise ValueError(f"the {name} backend needs a model (--model)")
  options = dict(timeout=timeout, deadline=deadline, max_response_bytes=max_response_bytes,
                 retry=retry)
  if name == "ollama":
    return OllamaBackend(model, base_url, api_key=api_key, **options)
  if name == "openai":
    return OpenAIBackend(model, base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY"),
                         **options)
  if name == "transformers":
    return TransformersBackend(model, device=device, dtype=dtype)
  raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
