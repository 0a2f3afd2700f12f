"""The benchmark harness: the FLOP model against the traced program, and the CLI end to end."""

import json

import jax
import pytest

from semclip_jax import bench
from semclip_jax.models.model_config import get_preset


@pytest.mark.parametrize("freeze_image", [True, False])
def test_flop_formula_equals_the_matmuls_of_the_traced_train_step(freeze_image):
  # B/32's shapes (the layer count only scales both sides), so the formula is checked where it
  # is quoted; tracing costs no compute.
  config = bench.bench_config("B/32", 8, freeze_image=freeze_image)
  tokens, _ = bench.caption_tokens(8, path="")
  tokens = tokens[..., :24]
  mesh = bench.train.make_mesh(config)
  graphdef, state, shardings, tx = bench.train.build_train_state(config, mesh)
  batch = bench.sharding.global_batch(bench.make_batch(config, tokens), mesh)
  step = bench.train_step.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings)
  traced = bench.jaxpr_matmul_flops(jax.make_jaxpr(step)(state, batch))
  formula = bench.train_step_flops(get_preset("B/32"), 8, 24, freeze_image)
  assert traced == pytest.approx(formula["total"], rel=1e-3)


def test_transformer_flops_counts_causal_attention_in_full():
  d, m, t = 512, 2048, 24
  assert bench.transformer_flops(1, d, m, t) == 8 * t * d * d + 4 * t * d * m + 4 * t * t * d


def test_step_cli_on_tiny_prints_table_json_and_profile(capsys, tmp_path):
  assert bench.main(["--what=step", "--preset=tiny", "--batch_size=8", "--towers=text",
                     "--steps=1", "--warmup=0", "--captions=", f"--profile_dir={tmp_path}"]) == 0
  out = capsys.readouterr().out
  lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  peak, step, *profile = lines
  assert profile and all(p["what"] == "profile" and p["seconds"] >= 0 for p in profile)
  assert any("fusion" in p["op"] or "dot" in p["op"] for p in profile)
  assert peak["what"] == "peak" and peak["flops_per_s"] > 0
  assert step["what"] == "step" and step["towers"] == "text" and step["captions"] == "templated"
  assert step["samples_per_s"] > 0 and 0 < step["mfu"] < 1.5 and step["compile_s"] > 0
  assert step["text_length"] < step["full_length"] == 77  # cut to its length bucket
  assert step["program_matmul_flops"] == pytest.approx(step["model_flops"], rel=1e-2)
  assert "s/step" in out and "MFU" in out


def test_bench_cli_dispatches_scale_measurements(capsys):
  # `--what=loss_memory` is bench_scale's measurement behind the one benchmark command.
  assert bench.main(["--what=loss_memory", "--loss_batch=64", "--embed_dim=16",
                     "--loss_chunk_sizes=none,8"]) == 0
  out = capsys.readouterr().out
  records = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert [(r["what"], r["chunk_size"]) for r in records] == [("loss_memory", None),
                                                              ("loss_memory", 8)]
  assert all(r["memory"]["temp_size"] > 0 and "date" in r for r in records)
  assert "temp (peak)" in out
