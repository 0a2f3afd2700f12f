"""Packaging: what `pip install` (a wheel from a clone or `git+`) and `pip install -e .` put in
place runs the quickstart. The wheel holds every module, the config files as the package
`semclip_jax.configs` and the vendored data; an installed wheel imports its configs and reads its
data away from the repository; the editable install finds the configs in the checkout's configs/;
install_requires gives each dependency a range around requirements.txt's exact pin, while an
editable install (a checkout: the README's lines, CI) depends on the exact pins.

Wheels are built with the project's PEP 517 backend (pyproject.toml: setuptools behind
build_backend/pinned_for_checkouts.py) from a copy of the tree (building writes build/ and an
.egg-info beside setup.cfg), in about a second each.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
# What setuptools reads to build: the package, the configs folder, the metadata's files.
TREE = ("semclip_jax", "configs", "setup.cfg", "setup.py", "pyproject.toml", "build_backend",
        "README.md", "requirements.txt")
VENDORED = ("bpe_simple_vocab_16e6.txt.gz", "sugarcrepe_pp_paraphrased.csv", "NOTICE.md")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
  copy = tmp_path_factory.mktemp("source")
  for name in TREE:
    path = REPO / name
    if path.is_dir():
      shutil.copytree(path, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy2(path, copy / name)
  return copy


def build(source: pathlib.Path, hook: str, out: pathlib.Path) -> pathlib.Path:
  """The wheel that the backend's PEP 517 `hook` (build_wheel, build_editable) writes into out,
  the backend loaded from its backend-path as pip loads it."""
  out.mkdir()
  done = subprocess.run(
      [sys.executable, "-c", "import sys; sys.path.insert(0, 'build_backend'); "
       f"import pinned_for_checkouts as backend; print(backend.{hook}({str(out)!r}))"],
      cwd=source, capture_output=True, text=True, timeout=120,
      env={k: v for k, v in os.environ.items() if k != "SEMCLIP_JAX_PINNED"})
  assert done.returncode == 0, done.stderr
  return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> pathlib.Path:
  return build(source, "build_wheel", tmp_path_factory.mktemp("wheel") / "dist")


def python(code: str, cwd: pathlib.Path, *options: str, **env: str) -> str:
  """Runs `code` in a fresh interpreter of this environment; its stdout."""
  done = subprocess.run([sys.executable, *options, "-c", code], cwd=cwd, capture_output=True,
                        text=True, timeout=120,
                        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env})
  assert done.returncode == 0, done.stderr
  return done.stdout


def test_the_wheel_holds_every_module_the_configs_and_the_vendored_data(source, wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {f"semclip_jax/{p.relative_to(source / 'semclip_jax').as_posix()}"
             for p in (source / "semclip_jax").rglob("*.py")}
  configs = {f"semclip_jax/configs/{p.name}" for p in (source / "configs").glob("*.py")}
  assert "semclip_jax/configs/shapes.py" in configs and "semclip_jax/configs/__init__.py" in configs
  assert not (modules | configs) - names, sorted((modules | configs) - names)
  assert {f"semclip_jax/data/vendor/{name}" for name in VENDORED} <= names
  assert not any(n.startswith(("configs/", "tests/")) for n in names)  # no stray top-level package


def test_an_installed_wheel_runs_its_configs_away_from_the_checkout(wheel, tmp_path):
  site = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel: unpacking is installing
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  # Every config file imports, shapes gives its config, and the tokenizer reads the vendored
  # vocabulary: only what the wheel carries, with the checkout out of sight.
  out = python(
      "import importlib, importlib.util, pathlib\n"
      "import semclip_jax\n"
      "print(semclip_jax.__file__)\n"
      "print(importlib.util.find_spec('semclip_jax.configs.shapes').origin)\n"
      "names = [p.stem for p in pathlib.Path(semclip_jax.__file__).parent.joinpath('configs')"
      ".glob('[!_]*.py')]\n"
      "modules = {n: importlib.import_module('semclip_jax.configs.' + n) for n in names}\n"
      "print(modules['shapes'].get_config('runlocal').model.preset)\n"
      "from semclip_jax.data import sources, tokenizer\n"
      "print(sources.SUGARCREPE_PP_CSV)\n"
      "print(tokenizer.CLIPTokenizer()(['a photo of a cat']).shape)\n",
      elsewhere, PYTHONPATH=str(site))
  package, shapes, preset, csv, tokens = out.splitlines()[-5:]
  assert pathlib.Path(package).parent == site / "semclip_jax"
  assert pathlib.Path(shapes) == site / "semclip_jax" / "configs" / "shapes.py"
  assert preset == "tiny" and tokens == "(1, 77)"
  assert pathlib.Path(csv).is_relative_to(site) and pathlib.Path(csv).is_file()


def test_the_editable_install_finds_the_configs_in_the_checkout(source, tmp_path):
  editable = build(source, "build_editable", tmp_path / "dist")
  site = tmp_path / "site"
  zipfile.ZipFile(editable).extractall(site)
  # The built .pth as pip would place it, then this environment's site-packages without its own
  # .pth files (-S): its editable install of the repository (a finder module of the same name)
  # stays out of the way.
  purelib = sysconfig.get_paths()["purelib"]
  out = python(
      f"import sys, site; site.addsitedir({str(site)!r}); sys.path.append({purelib!r})\n"
      "import importlib.util\n"
      "print(importlib.util.find_spec('semclip_jax').origin)\n"
      "print(importlib.util.find_spec('semclip_jax.configs.shapes').origin)\n",
      tmp_path, "-S")
  package, shapes = out.splitlines()[-2:]
  assert pathlib.Path(package) == source / "semclip_jax" / "__init__.py"
  assert pathlib.Path(shapes) == source / "configs" / "shapes.py"


def _pins() -> dict[str, str]:
  pins = {}
  for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
    line = line.split("#")[0].strip()
    if line:
      requirement = Requirement(line)
      [spec] = requirement.specifier
      assert spec.operator == "==", f"requirements.txt pins exactly: {line}"
      pins[canonicalize_name(requirement.name)] = spec.version
  return pins


def _requires(wheel: pathlib.Path) -> dict:
  """The wheel's runtime dependencies (not an extra's): name -> specifier."""
  archive = zipfile.ZipFile(wheel)
  [metadata] = [archive.read(n) for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
  requires = {}
  for line in metadata.decode().splitlines():
    if line.startswith("Requires-Dist:"):
      requirement = Requirement(line.partition(":")[2].strip())
      if requirement.marker is None:
        requires[canonicalize_name(requirement.name)] = requirement.specifier
  return requires


def test_an_editable_install_depends_on_the_exact_pins(source, tmp_path):
  """The README's `pip install -e .` lines install what CI tests, not the newest in range."""
  requires = _requires(build(source, "build_editable", tmp_path / "dist"))
  assert {name: str(specifier) for name, specifier in requires.items()} == {
      name: f"=={version}" for name, version in _pins().items()}


def test_install_requires_ranges_start_at_the_ci_pins(wheel):
  ranges = _requires(wheel)
  pins = _pins()
  assert set(ranges) == set(pins)  # one list of dependencies, two precisions
  for name, specifier in ranges.items():
    operators = {s.operator: s.version for s in specifier}
    # A range, not a pin: the tested version as its floor, a release line as its ceiling.
    assert set(operators) == {">=", "<"}, (name, str(specifier))
    assert operators[">="] == pins[name], (name, str(specifier), pins[name])
    assert pins[name] in specifier, (name, str(specifier), pins[name])
