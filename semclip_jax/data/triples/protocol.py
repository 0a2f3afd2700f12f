"""What a chat backend is: the `Request` it answers, the `Backend` protocol and its errors.

Imported by every backend (`backends`, `rules`) and by the code that drives them (`generate`,
`files`, the command line); it imports nothing of the package, so backends and their users never
import one another in a circle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol


@dataclasses.dataclass(frozen=True)
class Request:
  """One chat request. `kind` and `caption` (and `candidate` when verifying) let template
  backends work without reading the prompt; chat backends read only `messages`."""
  kind: str  # paraphrase | negation | verify_<kind> | regenerate_<kind>
  caption: str
  messages: tuple[Mapping[str, str], ...]
  temperature: float = 0.0
  max_tokens: int = 128
  candidate: str | None = None

  def payload(self) -> dict[str, Any]:
    """What, besides the model, shapes the answer: the cache's `prompt` key hashes this."""
    return {"messages": [dict(m) for m in self.messages], "temperature": self.temperature,
            "max_tokens": self.max_tokens}


class Backend(Protocol):
  model_id: str  # "<backend>:<model>", the cache's `model` key
  cacheable: bool  # False where an answer costs nothing (rules)

  def complete(self, request: Request) -> str:
    """The model's answer, raw (`cleaning` makes it one sentence). Raises BackendError."""
    ...


class BackendError(RuntimeError):
  """This request failed for good. `reason` is a short category for the statistics."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


class FatalBackendError(BackendError):
  """No request can succeed (bad URL, model or key): the run stops."""
