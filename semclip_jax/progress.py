"""How long-running commands report to a person: progress of a loop (`Progress`) and option help
that shows defaults (`HelpFormatter`).

`Progress` draws a tqdm bar when its stream is a terminal. Anywhere else (a log file, SLURM
output, a pipe) it writes one plain line at most every `interval_s` seconds and one at the end,
and never a carriage return, e.g.

  train: 40/1000 steps (4.0%) | loss=1.2345 samples/s=123.4 | 2.10 steps/s | elapsed 0:00:19 | ETA 0:07:37

so `grep '^train:' log` gives a run's history. Without a total there is no percentage and no ETA.
The rate and ETA count only the items done since the Progress began: a resumed run's `initial`
steps, done in an earlier process, do not make it look faster.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, TextIO

# Separates the parts of a line; `desc` comes first, followed by ": ".
_SEP = " | "


def _isatty(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
    return False


def format_duration(seconds: float) -> str:
  """Whole seconds as H:MM:SS (hours unbounded: 27:00:00, not '1 day, 3:00:00')."""
  s = max(0, int(round(seconds)))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(rate: float) -> str:
  # Three significant digits, trailing zeros kept (2.00, 45.7, 0.0123), whole numbers from 100 on.
  return f"{rate:.0f}" if rate >= 100 else f"{rate:#.3g}"


def _field(name: str, value: Any) -> str:
  """`name=value`: `<x>_per_s` reads `<x>/s`; floats to 5 significant digits (1.2345, 123.4)."""
  if name.endswith("_per_s"):
    name = name[:-len("_per_s")] + "/s"
  if isinstance(value, float):
    value = f"{value:.5g}"
  return f"{name}={value}"


class Progress:
  """Progress of a loop of `total` items (None: unknown), labelled `desc`, counted in `unit`.

  `update(n)` counts n more items; `log(**fields)` sets fields (e.g. loss=1.23) shown in the next
  line or bar until replaced; `close()` (or leaving a `with` block) ends it. Not thread-safe: call
  it from one thread.

  `bar`: None draws a tqdm bar when `stream` is a terminal and plain lines otherwise; False always
  plain lines; True always a bar (a notebook, whose output is no terminal but draws one). In line
  mode a line is written when `interval_s` seconds have passed since the last one (checked in
  `update`), when `log(..., now=True)` asks, and at `close` unless the last line already said it
  all: a loop shorter than `interval_s` writes one line, at its end. `stream` defaults to
  sys.stderr at construction; every line is flushed. `enabled=False` writes nothing (a process
  other than the first in a multi-process run). `clock` (seconds, monotonic) is for tests.
  """

  def __init__(self, total: int | None, desc: str, *, unit: str = "it", initial: int = 0,
               bar: bool | None = None, stream: TextIO | None = None, interval_s: float = 30.0,
               enabled: bool = True, clock: Callable[[], float] = time.monotonic):
    self.total, self.desc, self.unit = total, desc, unit
    self.initial = self.n = initial
    self.interval_s = interval_s
    self._stream = stream if stream is not None else sys.stderr
    self._clock = clock
    self._start = self._last = clock()
    self._fields: dict[str, Any] = {}
    self._shown: tuple | None = None  # (n, fields) of the last line written
    self._closed = not enabled
    self._bar = None
    if enabled and (_isatty(self._stream) if bar is None else bar):
      import tqdm  # pylint: disable=import-outside-toplevel

      # leave=None: a bar drawn under another (an eval pass during training) vanishes when done,
      # a bar of its own stays.
      self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, initial=initial,
                            file=self._stream, dynamic_ncols=True, leave=None)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()  # also on an exception: the last line says how far the loop got

  def update(self, n: int = 1) -> None:
    if self._closed:
      return
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
    elif self._clock() - self._last >= self.interval_s:
      self._write()

  def log(self, *, now: bool = False, **fields: Any) -> None:
    """Sets `fields` for the next line (bar: its postfix); `now` writes the line at once."""
    if self._closed:
      return
    self._fields.update(fields)
    if self._bar is not None:
      self._bar.set_postfix_str(" ".join(_field(k, v) for k, v in self._fields.items()),
                                refresh=now)
    elif now:
      self._write()

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    elif self._shown != self._state():
      self._write()

  def line(self) -> str:
    """The line as it would be written now."""
    elapsed = self._clock() - self._start
    if self.total is None:
      parts = [f"{self.desc}: {self.n} {self.unit}"]
    else:
      percent = 100.0 * self.n / self.total if self.total else 100.0
      parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({percent:.1f}%)"]
    if self._fields:
      parts.append(" ".join(_field(k, v) for k, v in self._fields.items()))
    done = self.n - self.initial
    rate = done / elapsed if done > 0 and elapsed > 0 else None
    if rate is not None:
      parts.append(f"{_rate(rate)} {self.unit}/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if rate is not None and self.total is not None:
      parts.append(f"ETA {format_duration(max(self.total - self.n, 0) / rate)}")
    return _SEP.join(parts)

  def _state(self) -> tuple:
    return self.n, tuple(self._fields.items())

  def _write(self) -> None:
    self._stream.write(self.line() + "\n")
    self._stream.flush()
    self._last = self._clock()
    self._shown = self._state()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """argparse help with the description kept as written (usage examples) and each optional
  argument's default appended, "(default: 30.0)", where it has one: not for required options,
  store_true flags (their default is their absence), defaults None or "" (the help says what
  unset means) or help that shows its default already; `--x/--no-x` flags show theirs. Only
  options with help text are shown with a default."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    takes_value = action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)
    if (action.option_strings and not action.required and takes_value
        and "%(default)" not in text and action.default not in (None, "", argparse.SUPPRESS)):
      text += " (default: %(default)s)"
    return text
