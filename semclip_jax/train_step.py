"""The train state and the jitted, sharded train step.

The step is one `jax.jit` of a pure function over (params, rest) states: the NNX graph is merged
inside the trace only, so no Python graph traversal happens per step. The image tower runs on B
images and the text tower on all 3B captions (original, paraphrase, negation) in one call; the
loss runs in `shard_map` (see `losses`). A step whose loss or gradient is not finite leaves
parameters and optimizer state untouched and is counted.

After each update the CLIP model's own `logit_scale` is clamped to [0, log 100], as CLIP and
open_clip clamp theirs after each optimizer step; the losses use exp(logit_scale) unclamped, so
its gradient is never cut. SigLIP's scale and `paper_compat`'s temperature are not clamped (their
official code does not).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from semclip_jax.data.transforms import NORMALIZATIONS, normalize
from semclip_jax.losses import MAX_LOGIT_SCALE
from semclip_jax.models.clip import CLIP
from semclip_jax.objective import Objective
from semclip_jax.optim import trainable_filter
from semclip_jax.sharding import Rule, path_str, replicated, tree_shardings

# "image": uint8 [B, H, W, C] pixels (normalised inside the step) or float, already normalised,
# or instead "image_embedding": float32 [B, D], the frozen image tower's output, cached;
# "tokens": int32 [B, 3, L].
Batch = dict[str, jax.Array]
MODEL_TEMPERATURE = "model.logit_scale"  # the clamped parameter's path in a Trainee's state


class NonFiniteLossError(RuntimeError):
  """Raised when too many consecutive steps had a non-finite loss or gradient."""


class Trainee(nnx.Module):
  """Everything with trainable state: the CLIP model and the loss's own parameters."""

  def __init__(self, model: CLIP, objective: Objective):
    self.model = model
    self.objective = objective


@struct.dataclass
class TrainState:
  step: jax.Array  # batches consumed (skipped ones included)
  params: nnx.State  # the trained parameters
  rest: nnx.State  # frozen parameters and fixed state (e.g. a fixed projection basis)
  opt_state: optax.OptState  # allocated for `params` only: frozen towers cost no optimizer memory
  skipped: jax.Array  # steps skipped for a non-finite loss or gradient, in total
  consecutive_skipped: jax.Array  # ... and in a row up to now


def create_train_state(trainee: Trainee, tx: optax.GradientTransformation,
                       freeze: tuple[str, ...] = ()) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, rest = nnx.split(trainee, trainable_filter(freeze), ...)
  zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the step donates each of them
  return graphdef, TrainState(step=zero(), params=params, rest=rest, opt_state=tx.init(params),
                              skipped=zero(), consecutive_skipped=zero())


def shard_train_state(state: TrainState, mesh: Mesh, rules: tuple[Rule, ...] = ()
                      ) -> tuple[TrainState, Any]:
  """Places the state on the mesh by the partition rules; returns it and its shardings."""
  shardings = tree_shardings(state, mesh, rules)
  return jax.device_put(state, shardings), shardings


def model_images(images: jax.Array, normalization: str) -> jax.Array:
  """The image tower's input: uint8 pixels normalised here, on the device (the input pipeline
  ships uint8), with `transforms.normalize`; float images are taken as already normalised."""
  return normalize(images, normalization) if images.dtype == jnp.uint8 else images


def forward(trainee: Trainee, batch: Batch, mesh: Mesh | None, normalization: str = "clip"
            ) -> tuple[jax.Array, dict]:
  """Embeds the batch (text tower once on all 3B captions) and applies the objective."""
  tokens = batch["tokens"]
  b, num_captions, length = tokens.shape
  if num_captions != 3:
    raise ValueError(f"tokens must be [B, 3, L] (original, paraphrase, negation), got {tokens.shape}")
  if "image_embedding" in batch:  # cached by `image_embedding_cache`: the frozen tower's output
    zi = batch["image_embedding"]
  else:
    zi = trainee.model.encode_image(model_images(batch["image"], normalization))
  z = trainee.model.encode_text(tokens.reshape(b * 3, length)).reshape(b, 3, -1)
  return trainee.objective(zi, z[:, 0], z[:, 1], z[:, 2], trainee.model.logit_scale[...], mesh)


def _micro_batches(batch: Batch, k: int) -> Batch:
  """[k·B, ...] -> [k, B, ...] taking rows j, j+k, ...: each device keeps its rows local."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={k}")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _clamp_temperature(params: nnx.State) -> nnx.State:
  """`params` with the model's logit_scale clamped to [0, MAX_LOGIT_SCALE]; a no-op when frozen.

  A frozen logit_scale lives in the state's `rest`, which this never sees, so it stays bitwise.
  """
  return jax.tree.map_with_path(
      lambda path, x: jnp.clip(x, 0.0, MAX_LOGIT_SCALE) if path_str(path) == MODEL_TEMPERATURE
      else x, params)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    mesh: Mesh | None = None, state_shardings: Any = None,
                    grad_accum_steps: int = 1, donate: bool = True, normalization: str = "clip"
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """Returns the jitted step(state, batch) -> (state, metrics); uint8 images are normalised with
  `normalization` (`transforms.NORMALIZATIONS`) inside it."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown data.normalization {normalization!r}; choose one of "
                     f"{sorted(NORMALIZATIONS)}")

  def loss_fn(params, rest, batch):
    return forward(nnx.merge(graphdef, params, rest), batch, mesh, normalization)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(params, rest, batch):
    rows = batch["tokens"].shape[0]
    if mesh is not None and (rows // grad_accum_steps) % mesh.size:
      raise ValueError(f"batch of {rows} in {grad_accum_steps} micro-batch(es) gives "
                       f"{rows // grad_accum_steps} rows, not divisible by the {mesh.size} devices")
    if grad_accum_steps == 1:
      (_, metrics), grads = grad_fn(params, rest, batch)
      return grads, metrics

    def accumulate(total, micro):
      (_, metrics), grads = grad_fn(params, rest, micro)
      return jax.tree.map(jnp.add, total, grads), metrics

    grads, metrics = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params),
                                  _micro_batches(batch, grad_accum_steps))
    return (jax.tree.map(lambda g: g / grad_accum_steps, grads),
            jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics))

  def step(state: TrainState, batch: Batch):
    # The mesh as context, for the model's activation constraints (`constrain_to_batch`).
    context = (jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None
               else contextlib.nullcontext())
    with context:
      grads, metrics = gradients(state.params, state.rest, batch)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & _all_finite(grads)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return _clamp_temperature(optax.apply_updates(state.params, updates)), opt_state

    # A branch, not a select per leaf: XLA would copy the all-finite test into each of the
    # hundreds of update fusions (minutes of compilation for ViT-B).
    params, opt_state = jax.lax.cond(finite, update, lambda _: (state.params, state.opt_state),
                                     None)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, skipped=state.skipped + skipped,
        consecutive_skipped=jnp.where(finite, 0, state.consecutive_skipped + 1))
    metrics = {**metrics, "grad_norm": grad_norm, "skipped": new_state.skipped,
               "consecutive_skipped": new_state.consecutive_skipped}
    return new_state, metrics

  kwargs = {}
  if mesh is not None and state_shardings is not None:
    kwargs["out_shardings"] = (state_shardings, replicated(mesh))
  return jax.jit(step, donate_argnums=(0,) if donate else (), **kwargs)


def check_skips(metrics: dict[str, Any], max_consecutive: int) -> None:
  """Raises NonFiniteLossError once `max_consecutive` steps in a row were skipped."""
  consecutive = int(metrics["consecutive_skipped"])
  if consecutive >= max_consecutive:
    raise NonFiniteLossError(
        f"{consecutive} consecutive steps had a non-finite loss or gradient (limit "
        f"{max_consecutive}); parameters were kept from before them. Lower the learning rate, "
        "check the data for NaN/Inf, or use float32 compute.")
