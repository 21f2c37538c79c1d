"""The per-objective part of training: what the one shared loop (trainer.py) asks of each kind.

An objective builds its optimizer and initial state, makes one update, and evaluates. Two bases
derive from `Objective`: `supervised.Supervised` (one model, one loss: classification, language
modelling, seq2seq, diffusion; they write `model_inputs`, `loss`, `eval_step`, `summarize_eval`
and share the update) and `generative.ImageGenerative` (an EMA of the weights, sample grids and
the classifier_fid metric: the GAN and diffusion). The state is a `TrainState` or a subclass.

A model may add to its training loss by sowing (flax `self.sow`) into two collections: 'losses'
(scalar terms, added as they are) and 'policy' (per-example `log_prob` and `baseline` of a sampled
choice, e.g. hard attention): the objective supplies a per-example reward and `sown_loss` adds the
REINFORCE terms. A model with a schedule (a Gumbel temperature) sets `uses_step = True` and is
called with `step=` in training.
"""

from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dl10_jax.train import optim
from dl10_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
SOWN = ('losses', 'policy')  # What a model sows during a training step for its loss.
NOT_STATE = SOWN + ('intermediates',)  # Sown outputs, never part of the train state.


def policy_gradient_loss(log_prob: jax.Array, baseline: jax.Array,
                         reward: jax.Array) -> jax.Array:
  """REINFORCE with a learned baseline, all [B]: its gradient is -E[(r - b) grad log p] (unbiased
  for any b), plus the baseline's regression (r - b)^2, which reduces the variance."""
  advantage = jax.lax.stop_gradient(reward - baseline)
  return -(advantage * log_prob).mean() + \
      jnp.square(jax.lax.stop_gradient(reward) - baseline).mean()


def sown_loss(sown: dict[str, Any], reward: jax.Array) -> tuple[jax.Array, Metrics]:
  """The extra loss of what a model sowed: 'losses' terms + REINFORCE of each 'policy' with reward
  [B]; and its metrics (the surrogate's value means nothing, so the baseline's error is logged)."""
  total = sum((jnp.sum(x) for x in jax.tree.leaves(sown.get('losses', {}))), jnp.zeros(()))
  policies = flax.traverse_util.flatten_dict(dict(sown.get('policy', {})))
  metrics = {}
  for path, log_probs in policies.items():
    if path[-1] == 'log_prob':
      for log_prob, baseline in zip(log_probs, policies[path[:-1] + ('baseline',)]):
        total = total + policy_gradient_loss(log_prob, baseline, reward)
        metrics['train_baseline_mse'] = metrics.get('train_baseline_mse', 0.0) + \
            jnp.square(reward - baseline).mean()
  metrics['train_aux_loss'] = total
  if policies:
    metrics['train_reward'] = reward.mean()
  return total, metrics


def with_sown_loss(loss: jax.Array, metrics: Metrics, sown: dict[str, Any],
                   reward: jax.Array) -> tuple[jax.Array, Metrics]:
  """`loss` + `sown_loss` (REINFORCE rewarded by `reward` [B]) and the metrics with its terms;
  both as they are when the model sowed nothing."""
  if not sown:
    return loss, metrics
  extra, extra_metrics = sown_loss(sown, reward)
  return loss + extra, {**metrics, **extra_metrics}


class Objective(abc.ABC):
  """Base class: what the loop asks. `train_step` and `eval_step` are traced under jit."""

  # The metric the loop checks for NaN/inf and shows in the progress bar.
  loss_metric = 'train_loss'
  # What `python -m dl10_jax.sample` draws from a trained run: 'text' (a next-token language
  # model continuing --prompt with its data's tokenizer), 'images' (`generate`), or None.
  samples: str | None = None
  state_class: type[TrainState] = TrainState

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, splits: Any = None):
    self.config = config
    self.model = model
    self.splits = splits  # data.Splits: what the objective may need to know of its data.
    self.tx = self.make_optimizer()

  def make_optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.config)

  # --- The initial state. ---

  @abc.abstractmethod
  def init_args(self, batch: Batch) -> tuple[Any, ...]:
    """The model's positional arguments at init (only their shapes matter)."""

  def init_opt_state(self, params: Any) -> Any:
    return self.tx.init(params)

  def init_model_state(self, variables: dict[str, Any]) -> Any:
    """The model's variables other than 'params' -> `model_state` (what it sows is not state)."""
    return {k: v for k, v in variables.items() if k not in NOT_STATE}

  def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
    """Fresh parameters and optimizer state; `batch` only lends its shapes."""
    init_rng, state_rng = jax.random.split(rng)
    variables = dict(self.model.init(init_rng, *self.init_args(batch), train=False))
    params = variables.pop('params')
    return self.state_class(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=self.init_opt_state(params),
                            model_state=self.init_model_state(variables), rng=state_rng,
                            apply_fn=self.model.apply, tx=self.tx)

  def load_pretrained(self, state: Any, params: Any, model_state: Any) -> Any:
    """A fresh state holding another run's weights (init_from). An objective that keeps a copy
    of the weights (an EMA) overrides this to start the copy from them too."""
    return state.replace(params=params, model_state=model_state)

  # --- One update and the eval. ---

  @abc.abstractmethod
  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One update: (the new state, this step's metrics)."""

  @abc.abstractmethod
  def eval_step(self, state: TrainState, batch: Batch) -> Metrics:
    """Sums over the batch's unmasked rows (the loop adds them up over the eval set)."""

  @abc.abstractmethod
  def summarize_eval(self, sums: dict[str, float]) -> dict[str, float]:
    """Eval-set sums -> the metrics written to metrics.jsonl."""

  def _microbatches(self, batch: Batch) -> Batch | None:
    """[B, ...] -> [n, B/n, ...] chunks of `config.microbatch_size`, or None for the whole batch.

    Chunk k holds examples k, k + n, ..., so a batch sharded over devices stays sharded.
    """
    size = self.config.get('microbatch_size', 0)
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    if not size or size >= batch_size or batch_size % size:
      return None
    n = batch_size // size
    return jax.tree.map(lambda x: x.reshape(size, n, *x.shape[1:]).swapaxes(0, 1), batch)

  def eval_batch(self, state: TrainState, batch: Batch) -> Metrics:
    """`eval_step` over micro-batches if set; its sums add up exactly."""
    chunks = self._microbatches(batch)
    if chunks is None:
      return self.eval_step(state, batch)
    sums = jax.lax.map(lambda chunk: self.eval_step(state, chunk), chunks)
    return jax.tree.map(lambda x: x.sum(axis=0), sums)

  # --- What the loop logs and writes besides the metrics. ---

  def flops_per_step(self, params: Any) -> float | None:
    """Model FLOPs of one training step (for `mfu` in the logs), where the model can tell."""
    return None

  def write_eval_artifacts(self, state: Any, step: int, workdir: Any, writer: Any) -> None:
    """Called at every eval point after the metrics: an objective may write more than numbers
    (a generative model's sample grid, to `workdir` and `writer.write_image`)."""

  def throughput(self, steps_per_sec: float) -> dict[str, float]:
    """Objective-specific rates logged beside steps_per_sec (e.g. tokens_per_sec)."""
    return {}
