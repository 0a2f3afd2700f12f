"""Test session setup: 8 host CPU devices for real meshes, and no network for model hubs."""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is first imported anywhere in the session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
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

import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

from semclip_jax.data.sources import SUGARCREPE_PP_CSV  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def sugarcrepe_csv() -> pathlib.Path:
  """The vendored SugarCrepe++ triples CSV (shipped with the package, so never skipped)."""
  path = pathlib.Path(SUGARCREPE_PP_CSV)
  assert path.is_file(), f"{path} is missing from the package: reinstall or restore it from git"
  return path
