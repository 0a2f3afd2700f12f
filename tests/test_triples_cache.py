"""triples.cache through the command line: SIGKILL halfway, rerun, identical output, nothing
answered asked again; a finished rerun makes no calls. SIGINT and SIGTERM stop at once, the
answers cached; a damaged cache file is one error line naming it."""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

from semclip_jax.data.triples.__main__ import main
from triples_helpers import REPO, ScriptedServer, cached_pairs, good, write_csv
from triples_helpers import server  # pylint: disable=unused-import  (a pytest fixture)


def test_killed_run_resumes_without_resending_answered_requests(tmp_path):
  captions = [f"A photo of object number {i} on a table." for i in range(200)]
  s = ScriptedServer(lambda c, p, a: (200, "Yes." if p.startswith("verify") else good(c, p), {},
                                      0.01))
  try:
    write_csv(tmp_path / "in.csv", captions)
    args = lambda name: [f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / name}",
                         "--backend=ollama", f"--base_url={s.url}", "--model=generator",
                         "--verifier_model=verifier", "--concurrency=4", "--timeout=2"]
    assert main(args("reference.csv")) == 0  # uninterrupted, in this process
    s.reset()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "semclip_jax.data.triples", *args("out.csv")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 40
    while sum(n for (_, p), n in s.answered.items() if p == "paraphrase") < 100:
      assert process.poll() is None and time.monotonic() < deadline, "finished before the kill"
      time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert not (tmp_path / "out.csv").exists()
    cached = cached_pairs(tmp_path / "out.csv.cache.sqlite")
    assert 50 <= len({c for c, _ in cached}) < 200
    before = collections.Counter(s.requests)
    s.reset()
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
    assert not set(s.requests) & cached  # nothing answered and cached was asked again
    resent = set(s.requests) & set(before)  # in flight at the kill: sent, never cached
    assert len(resent) <= 4 and all(before[k] == 1 for k in before)
    assert len(set(s.requests) | set(before)) == 200 * 4
    s.reset()  # and once finished, a rerun makes no model calls at all
    assert main(args("out.csv")) == 0 and not s.requests
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
  finally:
    s.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_at_once_keeping_the_cache(tmp_path, signum):
  # Ctrl-C used to wait for every request in flight (here 20 s), SIGTERM killed without a word.
  fast, slow = "A dog runs on the beach.", ["A cat sleeps.", "A bird sings.", "A man walks."]
  s = ScriptedServer(lambda c, p, a: (200, "Yes." if p.startswith("verify") else good(c, p), {},
                                      0.0 if c == fast else 20.0))
  try:
    write_csv(tmp_path / "in.csv", [fast, *slow])
    command = [sys.executable, "-m", "semclip_jax.data.triples", f"--input={tmp_path / 'in.csv'}",
               f"--output={tmp_path / 'out.csv'}", "--backend=ollama", f"--base_url={s.url}",
               "--model=generator", "--concurrency=4", "--timeout=60"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    # The fast caption's 4 answers are in; 4 requests of the slow ones are in flight.
    while sum(s.answered.values()) < 4 or sum(s.requests.values()) < 8:
      assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
      time.sleep(0.01)
    start = time.monotonic()
    process.send_signal(signum)
    err = process.communicate(timeout=15)[1]
    assert time.monotonic() - start < 5
    assert process.returncode == 128 + signum, err
    assert err.splitlines()[-1] == (f"interrupted by {signal.Signals(signum).name}; the answers "
                                    "received so far are cached: rerun the same command to "
                                    "continue")
    assert not (tmp_path / "out.csv").exists()
    assert cached_pairs(tmp_path / "out.csv.cache.sqlite") == {
        (fast, kind) for kind in ("paraphrase", "negation", "verify_paraphrase",
                                  "verify_negation")}
  finally:
    s.close()


def test_a_damaged_cache_is_one_error_line_naming_it(tmp_path, server, capsys):
  write_csv(tmp_path / "in.csv", ["A dog runs on the beach."])
  args = lambda cache, output: [f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / output}",
                                "--backend=ollama", f"--base_url={server.url}", "--model=generator",
                                f"--cache={cache}"]
  remedy = "move it away or delete it and rerun: it only holds answers already received"
  damaged = lambda cache: f"error: {cache}: the answer cache is damaged or not a SQLite database"
  # Not a database at all: refused on opening, before any request.
  foreign = tmp_path / "foreign.sqlite"
  foreign.write_bytes(b"not a SQLite file " * 300)
  capsys.readouterr()
  assert main(args(foreign, "out.csv")) == 2 and not server.requests
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(damaged(foreign)) and remedy in err[0], err
  # A real cache whose table pages are overwritten: found at the first lookup, mid-run.
  cache = tmp_path / "cache.sqlite"
  assert main(args(cache, "out.csv")) == 0
  data = cache.read_bytes()
  assert len(data) > 4096  # page 1 (the schema) stays readable
  cache.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))
  capsys.readouterr()
  assert main(args(cache, "again.csv")) == 2
  err = capsys.readouterr().err.splitlines()
  assert err[-1].startswith(damaged(cache)) and remedy in err[-1], err
  assert not (tmp_path / "again.csv").exists()
