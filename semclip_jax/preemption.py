"""Stopping the train loop for SIGTERM (a preemption notice) or SIGINT at one step on every process.

The trainer asks `StopRequest.reached(step)` once per step, before running it; the first True stops
the loop, and the trainer saves a checkpoint of that step. With several processes the checkpoint
save is collective, so every process must get its first True at the same step:

* One process: a Python handler for SIGTERM and SIGINT sets a flag; `reached` reads it.
* Several processes (`jax.distributed.initialize` ran): JAX's preemption sync manager. The
  initialize call installs a C++ SIGTERM handler (its preemption notifier); a SIGTERM to any
  process is posted to the coordination service, every process sends the step it is at, and all
  agree on the next step after the furthest one (max + 1). `jax.experimental.multihost_utils.
  reached_preemption_sync_point(n)` is True at that step on every process, and costs nothing
  until a notice arrives (no collective, no device sync per step). SIGTERM therefore keeps
  JAX's handler: a Python `signal.signal(SIGTERM, ...)` would replace it and the notice would
  never reach the other processes. SIGINT (Ctrl-C), which JAX's notifier ignores, gets a Python
  handler that sends this process a SIGTERM, so both signals take the same synced path.
  The counter passed to JAX is the number of steps since this run started (or resumed), the
  same on every process: a notice that arrives before the first `reached` call (during
  compilation or restore) then stops the loop after one step instead of never.
* Several processes without JAX's preemption service (`jax_enable_preemption_service` off, or no
  `jax.distributed` client): the Python flag, agreed by an all-gather every `every` steps.
"""

from __future__ import annotations

import logging
import os
import signal as signal_lib
from typing import Any

import jax
import numpy as np

logger = logging.getLogger(__name__)
SIGNALS = (signal_lib.SIGTERM, signal_lib.SIGINT)


def _sync_manager() -> Any:
  """JAX's preemption sync manager, or None without a jax.distributed client or the service."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  if distributed.global_state.client is None:
    return None
  return distributed.global_state.preemption_sync_manager


class StopRequest:
  """Whether a signal asked the train loop to stop: the same answer, at the same step, on every
  process. `install()` the signal handlers before the loop and `restore()` the previous ones after
  it (or use it as a context manager); call `reached(step)` once per step, before running it.
  `mode` is "local" (one process), "synced" (JAX's preemption sync point) or "allgather" (several
  processes without JAX's preemption service); `signal` is the signal that stopped the loop (in
  "synced", SIGTERM when the notice came from another process), None before a stop.

  In "synced", SIGTERM stays with JAX's notifier before and after the loop too: a notice during
  compilation or restore stops the loop after its first step, and one after the loop (final
  evaluation, export) is ignored, as JAX's handler does from `jax.distributed.initialize` on."""

  def __init__(self, start_step: int = 0, *, every: int = 10):
    self.start_step = start_step
    self.every = every  # the all-gather period of the fallback (several processes, no service)
    self.signal: int | None = None  # the signal that stopped the run, for the log line
    self._received: int | None = None  # the signal this process received (Python handlers)
    self._previous: dict[int, Any] = {}
    if jax.process_count() == 1:
      self.mode = "local"
    elif _sync_manager() is not None:
      self.mode = "synced"
    else:
      self.mode = "allgather"
      logger.warning("%d processes but no JAX preemption service: a signal is agreed on by an "
                     "all-gather every %d steps", jax.process_count(), every)

  # ---- handlers ---------------------------------------------------------------------------------
  def install(self) -> StopRequest:
    """Installs the signal handlers (from the main thread); `restore` puts the previous back."""
    # Synced: SIGTERM stays with JAX's preemption notifier; SIGINT forwards to it.
    handled = (signal_lib.SIGINT,) if self.mode == "synced" else SIGNALS
    for s in handled:
      self._previous[s] = signal_lib.signal(s, self._handle)
    return self

  def restore(self) -> None:
    for s, handler in self._previous.items():
      signal_lib.signal(s, handler)
    self._previous.clear()

  def __enter__(self) -> StopRequest:
    return self.install()

  def __exit__(self, *exc_info) -> None:
    self.restore()

  def _handle(self, signum: int, _frame) -> None:
    first = self._received is None
    self._received = self._received or signum
    if self.mode == "synced" and first:
      # JAX's notifier catches SIGTERM only; its (C++) handler stays installed.
      os.kill(os.getpid(), signal_lib.SIGTERM)

  # ---- the question -----------------------------------------------------------------------------
  def reached(self, step: int) -> bool:
    """Whether to stop before running step `step + 1` (`step` steps are done). Call it at every
    step, with consecutive values from `start_step`, on every process: in several processes the
    answer is agreed on, and the first True comes at the same `step` everywhere."""
    if self.signal is not None:
      return True
    if self.mode == "local":
      stop = self._received is not None
    elif self.mode == "synced":
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      stop = multihost_utils.reached_preemption_sync_point(step - self.start_step)
    else:
      stop = not (step - self.start_step) % self.every and self._agree()
    if stop:
      self.signal = self._received or signal_lib.SIGTERM
    return stop

  def _agree(self) -> bool:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    flags = multihost_utils.process_allgather(np.int32(self._received is not None))
    return bool(np.any(flags))

  @property
  def signal_name(self) -> str:
    """The stopping signal's name ("SIGTERM"), for the log line ("" before a stop)."""
    return signal_lib.Signals(self.signal).name if self.signal else ""
