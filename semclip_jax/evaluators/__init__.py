"""Evaluators chosen by config: `evaluate(round)` yields (metric name, value) from an `EvalRound`
(parameters bound to towers jitted once per run; each data read embedded once per round), and
`run(model, mesh)` is the one-off form."""

from __future__ import annotations

import ml_collections

from semclip_jax.evaluators.ccneg import CCNegEvaluator
from semclip_jax.evaluators.embed import Encoder, EvalRound, Evaluator, warn_if_few
from semclip_jax.evaluators.negbench import NegBenchMCQEvaluator, NegBenchRetrievalEvaluator
from semclip_jax.evaluators.official import OfficialEvaluator
from semclip_jax.evaluators.retrieval import RetrievalEvaluator
from semclip_jax.evaluators.sugarcrepe_pp import SugarCrepePPEvaluator
from semclip_jax.evaluators.zeroshot import ZeroShotEvaluator

EVALUATORS = {"ccneg": CCNegEvaluator, "negbench_mcq": NegBenchMCQEvaluator,
              "negbench_retrieval": NegBenchRetrievalEvaluator, "official": OfficialEvaluator,
              "retrieval": RetrievalEvaluator, "sugarcrepe_pp": SugarCrepePPEvaluator,
              "zeroshot": ZeroShotEvaluator}
# Evaluators reading files of their own named in their config (`path`), not a triple source.
OWN_FILES = ("negbench_mcq", "negbench_retrieval")


ALL = "all"  # as an evaluator's own `split`: every item of its data


def reads_own_data(eval_config: ml_collections.ConfigDict) -> bool:
  """Whether `config.evals.<name>` reads data of its own (zero-shot's datasets, NegBench's
  files, or a fixed `split` of its data, e.g. a cross-benchmark) rather than the run's validation
  and test splits. Such data is test data: scored once at the end, never for selection."""
  return (eval_config.get("type") in ("zeroshot", *OWN_FILES)
          or eval_config.get("split") is not None)


def evaluator_data(eval_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """The run's data config with the evaluator's `data` overrides."""
  data = ml_collections.ConfigDict(data_config.to_dict())
  data.update(eval_config.get("data", {}))
  return data


def missing_data(name: str, eval_config: ml_collections.ConfigDict,
                 data_config: ml_collections.ConfigDict) -> str | None:
  """For an evaluator reading its own data: the config field still empty that it needs (the
  paper configs name such evaluators for the user to point at their copy), else None."""
  if not reads_own_data(eval_config):
    return None
  if eval_config.type == "zeroshot":
    return None if eval_config.get("data_dir") != "" else f"config.evals.{name}.data_dir"
  if eval_config.type in OWN_FILES:
    return None if eval_config.get("path") else f"config.evals.{name}.path"
  data = evaluator_data(eval_config, data_config)
  needed = {"csv": ("path", "image_dir"), "array_record": ("eval_path",)}.get(data.kind, ())
  return next((f"config.evals.{name}.data.{field}" for field in needed if not data[field]), None)


def make_evaluator(eval_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
                   split: str | None = None, *, name: str | None = None):
  """An evaluator from `config.evals.<name>` ({type, every_steps, data overrides, ks, split})
  reading `split` of its data: the evaluator's own `split` if it has one ("all": every item),
  else the `split` given (the run's validation or test split). Its `label`, "<name> (<split>)"
  (`name` defaults to the type), names its progress lines; fewer than `embed.MIN_EVAL_ITEMS`
  items are warned about here, once, before any round."""
  evaluator = _build(eval_config, data_config, split)
  kind = eval_config.type
  if kind == "zeroshot":
    where = "test"  # each dataset's test split
  elif kind in OWN_FILES:
    where = ALL  # every row of its file
  else:
    where = eval_config.get("split", split) or ALL
  evaluator.label = f"{name or kind} ({where})"
  warn_if_few(evaluator.label, evaluator.size())
  return evaluator


def _build(eval_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict,
           split: str | None):
  from semclip_jax.data import make_source  # pylint: disable=import-outside-toplevel

  kind = eval_config.type
  if kind not in EVALUATORS:
    raise ValueError(f"unknown evaluator type {kind!r}; choose one of {sorted(EVALUATORS)}")
  if kind == "zeroshot":  # reads TFDS datasets itself, not a triple source
    return ZeroShotEvaluator.from_config(eval_config)
  data = evaluator_data(eval_config, data_config)
  if kind in OWN_FILES:  # reads its CSV files itself; data gives batch size and image transform
    return EVALUATORS[kind].from_config(eval_config, data)
  split = eval_config.get("split", split)
  split = None if split == ALL else split
  if kind == "sugarcrepe_pp":  # needs per-item subset labels, which make_source cannot give
    return SugarCrepePPEvaluator.from_config(data, split)
  options = {"ks": tuple(eval_config.ks)} if eval_config.get("ks") else {}
  return EVALUATORS[kind](make_source(data, split=split), data, **options)
