"""Evaluators chosen by config: `evaluate(round)` yields (metric name, value) from an `EvalRound`
(parameters bound to towers jitted once per run; each data read embedded once per round), and
`run(model, mesh)` is the one-off form."""

from __future__ import annotations

import ml_collections

from semclip_jax.evaluators.ccneg import CCNegEvaluator
from semclip_jax.evaluators.embed import Encoder, EvalRound, Evaluator
from semclip_jax.evaluators.retrieval import RetrievalEvaluator
from semclip_jax.evaluators.sugarcrepe_pp import SugarCrepePPEvaluator
from semclip_jax.evaluators.zeroshot import ZeroShotEvaluator

EVALUATORS = {"ccneg": CCNegEvaluator, "retrieval": RetrievalEvaluator,
              "sugarcrepe_pp": SugarCrepePPEvaluator, "zeroshot": ZeroShotEvaluator}


def make_evaluator(eval_config: ml_collections.ConfigDict, data_config: ml_collections.ConfigDict):
  """An evaluator from `config.evals.<name>` ({type, every_steps, data overrides})."""
  from semclip_jax.data import make_source  # pylint: disable=import-outside-toplevel

  kind = eval_config.type
  if kind not in EVALUATORS:
    raise ValueError(f"unknown evaluator type {kind!r}; choose one of {sorted(EVALUATORS)}")
  if kind == "zeroshot":  # reads TFDS datasets itself, not a triple source
    return ZeroShotEvaluator.from_config(eval_config)
  data = ml_collections.ConfigDict(data_config.to_dict())
  data.update(eval_config.get("data", {}))
  if kind == "sugarcrepe_pp":  # needs per-item subset labels, which make_source cannot give
    return SugarCrepePPEvaluator.from_config(data)
  return EVALUATORS[kind](make_source(data, split=data.eval_split), data)
