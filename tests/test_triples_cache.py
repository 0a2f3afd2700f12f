"""triples.cache through the command line: SIGKILL halfway, rerun, identical output, nothing
answered asked again; a finished rerun makes no calls."""

import collections
import os
import signal
import subprocess
import sys
import time

from semclip_jax.data.triples.__main__ import main
from triples_helpers import REPO, ScriptedServer, cached_pairs, good, write_csv


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
