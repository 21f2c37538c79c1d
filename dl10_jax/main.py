"""Entry point: flags -> config -> trainer.

  python -m dl10_jax.main --config configs/cnn.py --workdir runs/cnn [--config.key=value ...]
  python -m dl10_jax.main --config configs/cnn.py:smoke --workdir /tmp/smoke

A mistake in the command line or the config ends with one line naming the bad value and what is
allowed (exit code 2), not a traceback. SIGTERM saves a checkpoint at the next step boundary and
exits 75 (dl10_jax/train/preemption.py); rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterator

from absl import app, flags, logging
from ml_collections import config_flags

from dl10_jax import cli, config_lib, runtime

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/cnn.py (configs/cnn.py:smoke passes '
    '"smoke" to get_config). Override any field with --config.field=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and '
                               'TensorBoard files; rerunning in the same directory resumes.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first, one process per host: on '
    'Cloud TPU pods, SLURM and Kubernetes it finds the other processes by itself. Implied by '
    '--coordinator_address and by a multi-task SLURM step or JAX_COORDINATOR_ADDRESS.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for '
                                   'clusters jax cannot detect (with --num_processes, --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 .. num_processes-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def _explain_override(argv: list[str], config_arg: str) -> str | None:
  """Names the first --config.a.b override whose path does not exist in the config."""
  _, config = cli.load_config(config_arg)
  for arg in argv:
    if arg.startswith('--config.'):
      unknown = config_lib.unknown_field(config, arg[len('--config.'):].split('=', 1)[0])
      if unknown:
        return f'unknown field {unknown[0]!r} in {arg}; {unknown[1]}'
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with every failure turned into one line."""
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if config_arg is None and '--config' in argv[:-1]:
    config_arg = argv[argv.index('--config') + 1]
  if config_arg is not None:
    with cli.one_line_errors():
      cli.check_config_file(config_arg)
  try:
    return cli.parse_absl_flags(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cli.fail(lines[0] if len(lines) == 1 else f'{lines[0]} {lines[-1]}')  # The config's own error.
  except (AttributeError, KeyError) as e:  # ml_collections: an override names an absent field.
    try:
      explanation = _explain_override(argv, config_arg)
    except Exception:  # The config file itself is broken: report the original error.
      explanation = None
    cli.fail(explanation or cli.cannot_load(config_arg, e))
  except Exception as e:  # A config file that does not import or has no get_config().
    cli.fail(cli.cannot_load(config_arg, e))


def _distributed_requested() -> bool:
  """The flags, or an environment that runs one process per host and expects them to meet."""
  env = os.environ
  return (_DISTRIBUTED.value or _COORDINATOR.value is not None or
          'JAX_COORDINATOR_ADDRESS' in env or int(env.get('SLURM_NTASKS', '1')) > 1)


JOIN_TIMEOUT_S = 300  # jax's default: hosts of a large slice may start minutes apart.
HEARTBEAT_TIMEOUT_S = 60
# What a collective or jax's coordination service says when another process has died.
_PEER_LOST = re.compile(r'Gloo .* failed|Connection reset by peer|heartbeat timeout|'
                        r'tasks are unhealthy|coordination service', re.I)


@contextlib.contextmanager
def _peer_loss_is_one_line() -> Iterator[None]:
  """A dead process fails the others' next collective: one line, and an exit that skips jax's
  shutdown barrier (it would wait out the heartbeat timeout for the dead one, then abort)."""
  import jax
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1 or not _PEER_LOST.search(str(e)):
      raise
    print(f'error: process {jax.process_index()} of {jax.process_count()} lost another process '
          f'of the run ({str(e).strip().splitlines()[0][:200]}); see the other processes\' logs, '
          'then rerun all of them to resume from the last checkpoint', file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _initialize_distributed() -> None:
  """jax.distributed.initialize(), before anything asks JAX for its devices."""
  import jax
  explicit = {'coordinator_address': _COORDINATOR.value, 'num_processes': _NUM_PROCESSES.value,
              'process_id': _PROCESS_ID.value}
  given = {k: v for k, v in explicit.items() if v is not None}
  if given and len(given) < 3:
    missing = ', '.join(f'--{k}' for k in explicit if k not in given)
    cli.fail('--coordinator_address, --num_processes and --process_id go together; missing '
             f'{missing}')
  if given and not 0 <= given['process_id'] < given['num_processes']:
    cli.fail(f'--process_id={given["process_id"]} must be in [0, --num_processes='
             f'{given["num_processes"]})')
  # Collectives between CPU processes (tests, CPU clusters) need an implementation; TPU and GPU
  # processes ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # Bounds: a process that never joins fails the others after initialization_timeout; one that
  # stops sending heartbeats (a dead or hung host) ends the others after heartbeat_timeout.
  jax.distributed.initialize(**given, initialization_timeout=JOIN_TIMEOUT_S,
                             heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
  logging.warning('process %d of %d, %d local of %d devices', jax.process_index(),
                  jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv: list[str]) -> None:
  cli.reject_positional(argv, '; every setting is a --config.field=value override')
  cli.quiet_logging()
  from dl10_jax.train import preemption  # Heavy imports after flag parsing.
  from dl10_jax.train.trainer import train_and_evaluate
  with cli.one_line_errors(_WORKDIR.value):  # Before anything creates JAX's backends.
    runtime.use_cpu_devices(_CONFIG.value.get('cpu_devices', 0))
  if _distributed_requested():
    _initialize_distributed()
  runtime.log_allocator_advice_once()
  with cli.one_line_errors(_WORKDIR.value), _peer_loss_is_one_line():
    try:
      metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except preemption.Preempted as e:  # Saved: a retry loop reruns on this exit code.
      print(e, file=sys.stderr)
      sys.exit(preemption.PREEMPTED_EXIT_CODE)
  logging.info('Final metrics: %s', metrics)
  print(' '.join(f'{k}={v:.4f}' for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
