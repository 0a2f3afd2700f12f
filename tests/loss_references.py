"""Float64 NumPy references of the loss definitions (DESIGN.md), written straight from the
formulas: the oracles of tests/test_losses.py and tests/test_objective.py."""

import numpy as np


def np_unit(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def np_xent_diag(logits):
  """Mean softmax cross-entropy of each row against column i (its own index)."""
  m = logits.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
  return np.mean(lse - logits[np.arange(len(logits)), np.arange(len(logits))])


def np_clip(zi, zt, log_scale, normalize=True):
  s = np.exp(log_scale)  # never clamped: the train step clamps the parameter instead
  a, b = (np_unit(zi), np_unit(zt)) if normalize else (np.float64(zi), np.float64(zt))
  logits = s * a @ b.T
  return 0.5 * (np_xent_diag(logits) + np_xent_diag(logits.T))


def np_siglip(zi, zt, log_scale, bias):
  logits = np.exp(log_scale) * np_unit(zi) @ np_unit(zt).T + bias
  signs = 2 * np.eye(len(zi)) - 1
  return np.sum(np.log1p(np.exp(-signs * logits))) / len(zi)


def np_negclip(zi, zt, zn, log_scale):
  s = np.exp(log_scale)
  i2t = s * np_unit(zi) @ np.concatenate([np_unit(zt), np_unit(zn)]).T
  t2i = s * np_unit(zt) @ np_unit(zi).T
  return 0.5 * (np_xent_diag(i2t) + np_xent_diag(t2i))


def np_cos(a, b):
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def np_semclip(zi, zt, zp, zn, log_scale, proj, alpha, beta, gamma, margin=0.2, delta=0.0,
               paper_compat=False):
  proj = np.float64(proj)
  pt, pp, pn = (np_unit(z) @ proj for z in (zt, zp, zn))
  l_para = np.mean(1 - np_cos(pt, pp))
  l_neg = np.mean(np.maximum(np_cos(pt, pn), 0))
  l_clip = np_clip(zi, zt, log_scale, normalize=not paper_compat)
  l_margin = np.mean(np.maximum(margin - (np_cos(zi, zt) - np_cos(zi, zn)), 0))
  return (alpha * l_clip + beta * l_para + gamma * l_neg + delta * l_margin) / (
      alpha + beta + gamma + delta)
