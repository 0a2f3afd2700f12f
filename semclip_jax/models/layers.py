"""The pre-norm transformer shared by both CLIP towers.

Sub-module and parameter names (`q`, `k`, `v`, `out`, `fc1`, `fc2`, `ln1`, `ln2`) are the keys of
the Hugging Face name map in `semclip_jax.hf`; renaming one here means renaming it there.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from semclip_jax.sharding import constrain_to_batch

Array = jax.Array

# What the backward pass keeps of each block's forward (`Encoder.remat`): "none" keeps every
# activation (no jax.checkpoint at all); "full" keeps only the block's input and recomputes the
# rest (one more forward of each trained block; saved activations O(layers × B × T × D)); "dots"
# keeps the matmul outputs (not the attention's batched products) and recomputes the elementwise
# ops between them.
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def quick_gelu(x: Array) -> Array:
  # OpenAI's approximation, used by their released weights; LAION's use exact gelu.
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def remat_policy(name: str) -> Callable | None:
  """The `jax.checkpoint` policy of a `REMAT_POLICIES` name (None for "none": no checkpoint)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat policy {name!r} is not one of {list(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


def layer_norm(dim: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance: the one-pass E[x²]−E[x]² form drifts past 1e-5 from PyTorch's LayerNorm.
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (the HF CLIP layout)."""

  def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"hidden size {dim} is not divisible by {heads} attention heads")
    self.heads = heads
    linear = lambda: nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.q, self.k, self.v, self.out = linear(), linear(), linear(), linear()

  def __call__(self, x: Array, *, causal: bool) -> Array:
    """x: [B, T, D] -> [B, T, D]."""
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads)
    # XLA picks a fused kernel (cuDNN flash attention on GPU) where shapes and dtype allow.
    y = jax.nn.dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                     is_causal=causal)
    return self.out(y.reshape(b, t, d))


class MLP(nnx.Module):

  def __init__(self, dim: int, hidden: int, act: str, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs)
    self.act = activation(act)

  def __call__(self, x: Array) -> Array:
    return self.fc2(self.act(self.fc1(x)))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, act: str, eps: float, *, dtype,
               rngs: nnx.Rngs):
    self.ln1 = layer_norm(dim, eps, dtype, rngs)
    self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
    self.ln2 = layer_norm(dim, eps, dtype, rngs)
    self.mlp = MLP(dim, mlp_dim, act, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, *, causal: bool) -> Array:
    x = x + self.attn(self.ln1(x), causal=causal)
    return x + self.mlp(self.ln2(x))


class Encoder(nnx.Module):
  """A stack of `layers` blocks applied in order.

  With `scan` (the default) the blocks run as one `lax.scan` over their parameters stacked on the
  fly; the parameters stay one module per layer (the Hugging Face name map, sharding rules and
  checkpoints see `blocks.<i>`). The loop boundary matters for speed: unrolled, XLA's CPU fusion
  copies the backward pass's residual-gradient chain (an elementwise add across all layers) into
  every layer's weight-gradient transpose, so layer k recomputes layers L..k (about a third of a
  ViT-B/32 step on CPU, and 5× the compile time). `scan=False` is the plain Python loop.

  `remat` (a `REMAT_POLICIES` key, set by `set_remat`) trades compute for activation memory in
  the backward pass. Under a mesh, each block's input is constrained to the batch split
  (`constrain_to_batch`): with FSDP, XLA otherwise may split activations by feature and gather
  them, instead of gathering the (much smaller) weights of one layer at a time.
  """

  def __init__(self, layers: int, dim: int, heads: int, mlp_dim: int, act: str, eps: float, *,
               dtype, rngs: nnx.Rngs, scan: bool = True, remat: str = "none"):
    self.blocks = nnx.List(
        [Block(dim, heads, mlp_dim, act, eps, dtype=dtype, rngs=rngs) for _ in range(layers)])
    self.scan = scan
    self.remat = remat

  @classmethod
  def from_config(cls, cfg, *, dtype, rngs: nnx.Rngs) -> "Encoder":
    """The stack a `TextConfig` or `VisionConfig` describes (they share these field names)."""
    return cls(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
               cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, *, causal: bool = False) -> Array:
    """x: [B, T, D] -> [B, T, D]."""
    policy = remat_policy(self.remat)
    scan = self.scan and len(self.blocks) >= 2

    def layer_fn(graphdef: nnx.GraphDef):
      def layer(h, state):
        return nnx.merge(graphdef, state)(constrain_to_batch(h), causal=causal), None
      if self.remat == "none":
        return layer
      return jax.checkpoint(layer, policy=policy, prevent_cse=not scan)

    blocks = [nnx.split(block) for block in self.blocks]
    if not scan:
      for graphdef, state in blocks:
        x = layer_fn(graphdef)(x, state)[0]
      return x
    stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *(state for _, state in blocks))
    return jax.lax.scan(layer_fn(blocks[0][0]), x, stacked)[0]


def set_remat(module: nnx.Module, policy: str) -> nnx.Module:
  """Sets the rematerialisation policy (a `REMAT_POLICIES` key) of every `Encoder` in `module`.

  An execution choice, not architecture: parameters, checkpoints and exports are unchanged.
  Returns `module`.
  """
  remat_policy(policy)  # fails on an unknown name before any module is changed
  for _, sub in nnx.iter_modules(module):
    if isinstance(sub, Encoder):
      sub.remat = policy
  return module


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))
