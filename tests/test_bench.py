"""The benchmark package: the FLOP model against the traced program, the CLI end to end, and its
imports (no circle between its modules; the runtime never imports it)."""

import ast
import json
import pathlib

import jax
import pytest

from semclip_jax import train, train_step
from semclip_jax.bench import flops, results, scale, step
from semclip_jax.bench.__main__ import main
from semclip_jax.models.model_config import get_preset

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "semclip_jax"


@pytest.mark.parametrize("freeze_image", [True, False])
def test_flop_formula_equals_the_matmuls_of_the_traced_train_step(freeze_image):
  # B/32's shapes (the layer count only scales both sides), so the formula is checked where it
  # is quoted; tracing costs no compute.
  # The state and batch are abstract (shapes and shardings only): make_jaxpr needs no values.
  config = step.bench_config("B/32", 8, freeze_image=freeze_image)
  mesh = train.make_mesh(config)
  graphdef, state, shardings, tx = scale.abstract_train_state(config, mesh)
  batch = scale.abstract_batch(8, config.data.image_size, 24, mesh)
  train_fn = train_step.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings)
  traced = flops.jaxpr_matmul_flops(jax.make_jaxpr(train_fn)(state, batch))
  formula = flops.train_step_flops(get_preset("B/32"), 8, 24, freeze_image)
  assert traced == pytest.approx(formula["total"], rel=1e-3)


def test_transformer_flops_counts_causal_attention_in_full():
  d, m, t = 512, 2048, 24
  assert flops.transformer_flops(1, d, m, t) == 8 * t * d * d + 4 * t * d * m + 4 * t * t * d


def _json_lines(out: str) -> list[dict]:
  return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


@pytest.mark.slow
def test_step_cli_on_tiny_prints_table_json_and_profile(capsys, tmp_path):
  assert main(["--what=step", "--preset=tiny", "--batch_size=8", "--towers=text", "--steps=1",
               "--warmup=0", "--captions=", f"--profile_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  peak, record, *profile = _json_lines(out)
  assert profile and all(p["what"] == "profile" and p["seconds"] >= 0 for p in profile)
  assert any("fusion" in p["op"] or "dot" in p["op"] for p in profile)
  assert peak["what"] == "peak" and peak["flops_per_s"] > 0
  assert record["what"] == "step" and record["towers"] == "text"
  assert record["captions"] == "templated"
  assert record["samples_per_s"] > 0 and record["compile_s"] > 0
  # The peak is measured again after the timed steps; an MFU it does not support is not printed.
  assert record["peak_after_flops_per_s"] > 0 and record["peak_drift"] >= 0
  if record["mfu"] is None:
    assert record["mfu_measured"] > 0 and record["mfu_invalid"] and "MFU invalid (" in out
  else:
    assert 0 < record["mfu"] <= 1 and "mfu_invalid" not in record
  assert record["text_length"] < record["full_length"] == 77  # cut to its length bucket
  assert record["program_matmul_flops"] == pytest.approx(record["model_flops"], rel=1e-2)
  assert "s/step" in out and "MFU" in out


def test_an_mfu_the_peaks_do_not_support_is_marked_invalid():
  peak = {"flops_per_s": 100.0}
  steady, busy, fast = ({"what": "step", "mfu": m} for m in (0.7, 0.7, 1.2))
  results.judge_mfu([steady], peak, {"flops_per_s": 95.0})
  assert steady["mfu"] == 0.7 and steady["peak_drift"] == pytest.approx(0.05)
  assert results.mfu_text(steady) == "MFU 70.0%"
  results.judge_mfu([busy, fast, {"what": "input"}], peak, {"flops_per_s": 80.0})
  assert busy["mfu"] is None and busy["mfu_measured"] == 0.7
  assert busy["mfu_invalid"] == "the matmul peak moved 20% during the run"
  assert fast["mfu"] is None and fast["mfu_invalid"].startswith("MFU 120% > 100%")
  assert results.mfu_text(fast).startswith("MFU invalid (MFU 120% > 100%")


def test_all_runs_peak_step_and_input_and_relates_the_input_rate_to_the_step(capsys):
  assert main(["--preset=tiny", "--batch_size=8", "--towers=text", "--steps=1", "--warmup=0",
               "--peak_n=256", "--workers=0", "--jpeg_files=8", "--input_batch_size=4",
               "--batches=2", "--shapes_render_size=32", "--large_jpeg_files=4"]) == 0
  out = capsys.readouterr().out
  records = _json_lines(out)
  assert [(r["what"], r.get("dataset"), r.get("jpeg_draft")) for r in records] == [
      ("peak", None, None), ("step", None, None), ("input", "shapes", True),
      ("input", "jpeg_500x375", True), ("input", "jpeg_1024x768", False),
      ("input", "jpeg_1024x768", True)]
  _, record, *inputs = records
  assert record["captions"] == "sugarcrepe_pp_paraphrased.csv"  # the vendored real captions
  for r in inputs:
    assert r["workers"] == 0 and r["image_size"] == 32 and r["records_per_s"] > 0
    assert r["times_step_rate"] == pytest.approx(r["records_per_s"] / record["samples_per_s"])
    assert r["machine"] and r["date"] and r["jax"] == jax.__version__
  table = [l for l in out.splitlines() if not l.startswith("{")]
  assert [l.split()[0] for l in table] == ["#", "peak", "step"] + ["input"] * 4
  assert "(no draft)" in table[-2] and "(no draft)" not in table[-1]
  assert "the step's consumption" in table[-1]


def test_bench_cli_dispatches_scale_measurements(capsys):
  # `--what=loss_memory` is bench.scale's measurement behind the one benchmark command.
  assert main(["--what=loss_memory", "--loss_batch=64", "--embed_dim=16",
               "--loss_chunk_sizes=none,8"]) == 0
  out = capsys.readouterr().out
  records = _json_lines(out)
  assert [(r["what"], r["chunk_size"]) for r in records] == [("loss_memory", None),
                                                              ("loss_memory", 8)]
  assert all(r["memory"]["temp_size"] > 0 and "date" in r for r in records)
  assert "temp (peak)" in out


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, at the top or inside functions (`from a import b` gives a.b:
  b may be a module)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}: relative import"
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def test_bench_modules_import_no_circle_and_the_runtime_never_imports_bench():
  bench = PACKAGE / "bench"
  graph = {f"semclip_jax.bench.{p.stem}": {m for m in _imported_modules(p)
                                           if m.startswith("semclip_jax.bench.")}
           for p in bench.glob("*.py") if p.stem != "__init__"}
  assert {"semclip_jax.bench.step",
          "semclip_jax.bench.scale"} <= graph["semclip_jax.bench.__main__"]
  done: set[str] = set()

  def visit(module: str, path: tuple[str, ...]) -> None:
    assert module not in path, f"import circle: {' -> '.join(path + (module,))}"
    if module not in done:
      for imported in graph.get(module, ()):
        visit(imported, path + (module,))
      done.add(module)

  for module in graph:
    visit(module, ())
  runtime = [p for p in PACKAGE.rglob("*.py") if bench not in p.parents]
  assert len(runtime) > 20
  for path in runtime:
    assert not {m for m in _imported_modules(path)
                if m == "semclip_jax.bench" or m.startswith("semclip_jax.bench.")}, path


def test_cache_compares_the_frozen_image_loop_uncached_and_cached(capsys):
  assert main(["--what=cache", "--preset=tiny", "--batch_size=8", "--cache_files=24",
               "--steps=2", "--warmup=1"]) == 0
  out = capsys.readouterr().out
  uncached, cached = _json_lines(out)
  assert (uncached["what"], uncached["cached"], cached["cached"]) == ("cache", False, True)
  assert uncached["cache_build_s"] is None and cached["cache_build_s"] > 0
  assert cached["speedup"] == pytest.approx(cached["samples_per_s"] / uncached["samples_per_s"])
  # Same data, same initial weights, same step: the first losses agree.
  assert cached["loss_value"] == pytest.approx(uncached["loss_value"], abs=1e-5)
  assert "cached  :" in out and "x uncached" in out


def test_save_times_a_waited_for_checkpoint_of_the_train_state(capsys, tmp_path):
  assert main(["--what=save", "--preset=tiny", "--towers=both", "--save_repeats=2",
               f"--save_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  (record,) = _json_lines(out)
  assert (record["what"], record["preset"], record["towers"]) == ("save", "tiny", "both")
  assert len(record["saves"]) == 2 and 0 < record["call_s"] <= record["save_s"]
  assert record["save_s"] == min(s["save_s"] for s in record["saves"][1:])
  assert record["params"] > 1e6 and record["state_bytes"] > 4 * record["params"]  # + AdamW
  # Noise, not fresh zero moments: orbax's compression cannot shrink it.
  assert record["disk_bytes"] > 0.8 * record["state_bytes"]
  assert sorted(p.name for p in (tmp_path / "tiny_both").iterdir()) == ["2"]  # keep=1
  assert "save   tiny towers=both" in out and "MiB" in out
