"""progress: the exact line, rate and ETA from the items done since the start (a resumed run's
initial ones excluded), lines at most every interval plus one at the end, no carriage return off
a terminal, tqdm on one; the help formatter's defaults."""

import argparse
import io

from semclip_jax.progress import HelpFormatter, Progress, format_duration


class Clock:
  """A settable monotonic clock."""

  def __init__(self, t=100.0):
    self.t = t

  def __call__(self):
    return self.t


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_line_format_rate_and_eta_exclude_the_initial_items():
  clock, out = Clock(), io.StringIO()
  progress = Progress(1000, "train", unit="steps", initial=100, stream=out, clock=clock)
  for _ in range(50):
    progress.update(1)
  clock.t += 25.0  # 50 steps in 25 s: 2 steps/s; 850 left: 425 s
  progress.log(loss=1.234567, samples_per_s=123.4, lr=5e-05, note="warmup", now=True)
  assert out.getvalue() == (
      "train: 150/1000 steps (15.0%) | loss=1.2346 samples/s=123.4 lr=5e-05 note=warmup | "
      "2.00 steps/s | elapsed 0:00:25 | ETA 0:07:05\n")
  assert "\r" not in out.getvalue()
  # Fields stay until replaced; close writes the final line once.
  progress.update(850)
  clock.t += 3575.0  # 900 steps in 3600 s
  progress.close()
  progress.close()
  last = out.getvalue().splitlines()[-1]
  assert last == ("train: 1000/1000 steps (100.0%) | loss=1.2346 samples/s=123.4 lr=5e-05 "
                  "note=warmup | 0.250 steps/s | elapsed 1:00:00 | ETA 0:00:00")
  assert len(out.getvalue().splitlines()) == 2


def test_no_total_no_rate_yet_and_durations():
  clock, out = Clock(), io.StringIO()
  with Progress(None, "prepare", unit="records", stream=out, clock=clock) as progress:
    assert progress.line() == "prepare: 0 records | elapsed 0:00:00"  # no rate before an item
    clock.t += 2.0
    progress.update(5000)
  assert out.getvalue() == "prepare: 5000 records | 2500 records/s | elapsed 0:00:02\n"
  assert Progress(0, "empty", stream=io.StringIO(), clock=clock).line() == (
      "empty: 0/0 it (100.0%) | elapsed 0:00:00")
  assert [format_duration(s) for s in (0.4, 59.6, 3600 * 27 + 61)] == ["0:00:00", "0:01:00",
                                                                          "27:01:01"]


def test_lines_at_most_every_interval_and_one_at_the_end():
  clock, out = Clock(), io.StringIO()
  progress = Progress(100, "eval", unit="items", stream=out, interval_s=30.0, clock=clock)
  for _ in range(10):  # 10 s: no line yet
    clock.t += 1.0
    progress.update(1)
  assert out.getvalue() == ""
  clock.t += 25.0
  progress.update(1)  # 35 s since the start: one line
  progress.update(1)  # at once after it: none
  clock.t += 10.0
  progress.log(loss=0.5)  # recorded, not written
  assert len(out.getvalue().splitlines()) == 1
  progress.close()
  lines = out.getvalue().splitlines()
  assert len(lines) == 2 and lines[1].startswith("eval: 12/100 items (12.0%) | loss=0.5 | ")
  # A short loop writes only its final line; interval 0 writes every update.
  out = io.StringIO()
  with Progress(3, "short", stream=out, interval_s=0, clock=clock) as progress:
    for _ in range(3):
      progress.update(1)
  assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == [
      "short: 1/3 it (33.3%)", "short: 2/3 it (66.7%)", "short: 3/3 it (100.0%)"]


def test_disabled_writes_nothing_and_a_terminal_gets_tqdm():
  out = io.StringIO()
  with Progress(10, "other process", stream=out, interval_s=0, enabled=False) as progress:
    progress.update(10)
    progress.log(loss=1.0, now=True)
  assert out.getvalue() == ""
  terminal = Terminal()
  with Progress(10, "train", unit="steps", stream=terminal) as progress:
    progress.update(4)
    progress.log(loss=0.25, now=True)
  text = terminal.getvalue()
  assert "\r" in text and "train:  40%|" in text and "4/10" in text and "loss=0.25" in text
  # A stream that is no terminal gets lines even when asked for the default (bar=None).
  out = io.StringIO()
  with Progress(10, "train", stream=out, bar=None, interval_s=0) as progress:
    progress.update(4)
  assert "\r" not in out.getvalue() and out.getvalue().startswith("train: 4/10 it (40.0%)")


def test_help_formatter_shows_defaults_where_they_exist():
  parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                   description="Usage:\n  keep   this layout")
  parser.add_argument("--input", required=True, help="a required option")
  parser.add_argument("--every", type=float, default=30.0, help="seconds between lines")
  parser.add_argument("--dir", help="folder; unset: beside the input")
  parser.add_argument("--model", default="", help="a model; unset: none")
  parser.add_argument("--fast", action="store_true", help="a flag")
  parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                      help="verify answers")
  parser.add_argument("--ratios", default="0.8,0.1,0.1", help="shares (default: %(default)s)")
  text = " ".join(parser.format_help().split())
  assert "Usage: keep this layout" in text and "\n  keep   this layout" in parser.format_help()
  assert "seconds between lines (default: 30.0)" in text
  assert "verify answers (default: True)" in text
  assert "shares (default: 0.8,0.1,0.1)" in text and text.count("(default:") == 3
