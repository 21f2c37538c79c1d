"""A trained classification run with float32 and with int8 weights: accuracy, loss and size.

  python scripts/quantize_eval.py --workdir runs/cnn [--json quantized.json]

Restores the run's newest checkpoint (experiment.restore_run) and evaluates the eval split twice
with the objective's own eval step: on the float32 weights, and on their per-channel int8
quantization (dl10_jax/models/quantization.py), whose int8 arrays and scales are the inputs of the
jitted step and are dequantized inside it. Prints one line per variant: accuracy, loss, model
bytes and the accuracy drop from float32, in percentage points.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dl10_jax.errors import ConfigError, UserError  # noqa: E402
from dl10_jax.models import quantization  # noqa: E402
from dl10_jax.train import experiment  # noqa: E402


def compare(workdir: str | pathlib.Path) -> dict[str, dict[str, float]]:
  """{'float32': ..., 'int8': ...}, each {accuracy, loss, bytes, accuracy_drop}."""
  exp, state = experiment.restore_run(workdir)
  if exp.config.objective != 'classification':
    raise ConfigError(f'{workdir} holds a {exp.config.objective!r} run; this script evaluates '
                      'classification runs (accuracy)')
  qparams = quantization.quantize(state.params)
  int8_step = quantization.quantized_eval_step(exp.objective.eval_batch)
  variants = {
      'float32': (experiment.evaluate(exp, state), quantization.model_bytes(state.params)),
      'int8': (experiment.evaluate(exp, state, lambda s, batch: int8_step(s, qparams, batch)),
               quantization.model_bytes(qparams)),
  }
  reference = variants['float32'][0]['eval_accuracy']
  return {name: {'accuracy': m['eval_accuracy'], 'loss': m['eval_loss'], 'bytes': size,
                 'accuracy_drop': reference - m['eval_accuracy']}
          for name, (m, size) in variants.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='the --workdir of a dl10_jax.main run')
  parser.add_argument('--json', help='also write the results to this file')
  args = parser.parse_args(argv)
  try:
    results = compare(args.workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for name, r in results.items():
    print(f'{name:8s} accuracy {r["accuracy"]:.2%}  loss {r["loss"]:.4f}  '
          f'{r["bytes"]:,} bytes ({r["bytes"] / results["float32"]["bytes"]:.1%} of float32)  '
          f'accuracy drop {100 * r["accuracy_drop"]:+.2f} points')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
