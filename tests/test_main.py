"""The command line: --help, overrides, and one-line errors (exit code 2, no traceback).

Errors found while parsing flags run as a real process (they exit before JAX is imported); the
rest run `main` in this process (conftest.run_main): no interpreter start, compiled steps reused.
"""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, read_metrics, run_main, run_module


def test_help_lists_the_flags():
  result = run_module('dl10_jax.main', '--help', timeout=120)
  assert result.returncode == 0
  assert '--config' in result.stdout and '--workdir' in result.stdout


# Mistakes found while parsing the flags end the process before JAX is imported: those run as a
# real process (cheap), the ones the trainer finds run in this process.
PARSE_ERRORS = [
    (['--config', 'configs/nope.py'], "config file 'configs/nope.py' not found"),
    (['--config', 'configs/cnn.py:tiny'], "unknown config argument 'tiny'; allowed: smoke"),
    (['--config.optimzer=sgd'], "unknown field 'optimzer'.*fields of config: .*optimizer"),
    (['--config.model.depth=3'], "unknown field 'model.depth'.*conv_features"),
    (['--config.batch_size=big'], 'flag --config.batch_size=big: invalid literal for int'),
    (['--config', 'README.md'], "cannot load config 'README.md'"),
    (['--config', 'tests/conftest.py'], "cannot load config 'tests/conftest.py'.*get_config"),
]
TRAINER_ERRORS = [
    (['--config.model.name=vgg'], "model.name='vgg' is unknown; allowed: cnn"),
    (['--config.dataset.name=no_such_set', '--config.dataset.source=idx'],
     "dataset.source=idx supports only fashion_mnist, mnist, not 'no_such_set'"),
    (['--config.batch_size=12'], 'batch_size=12 is not divisible by the 8 devices'),
    (['--config.seed=-1'], r'seed=-1 must be in \[0, 2\*\*32\)'),
    (['--config.warmup_steps=5'], "warmup_steps=5 needs schedule=warmup_cosine, not 'cosine'"),
]


@pytest.mark.parametrize('args,message,in_process',
                         [(*case, False) for case in PARSE_ERRORS] +
                         [(*case, True) for case in TRAINER_ERRORS])
def test_bad_input_fails_with_one_clear_line(args, message, in_process, tmp_path):
  if args[0] != '--config':
    args = ['--config', 'configs/cnn.py:smoke', *args]
  args = [*args, '--workdir', str(tmp_path)]
  result = run_main(*args) if in_process else run_module('dl10_jax.main', *args, timeout=120)
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, result.stderr
  assert re.search(message, lines[0]), lines[0]


def test_overrides_reach_the_run(tmp_path):
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path),
                    '--config.num_train_steps=3', '--config.log_every_steps=1',
                    '--config.learning_rate=0.0005', '--config.schedule=constant',
                    '--config.model.dense_features=16')
  assert result.returncode == 0, result.stderr
  events = read_metrics(tmp_path)
  assert [e['step'] for e in events if 'train_loss' in e] == [1, 2, 3]
  assert events[0]['learning_rate'] == 0.0005
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['dense_features'] == 16 and saved['num_train_steps'] == 3
  assert (tmp_path / 'tensorboard').is_dir() and any((tmp_path / 'tensorboard').iterdir())


def test_plot_metrics_draws_overlaid_runs(tmp_path):
  for name, loss in (('a', 2.0), ('b', 1.5)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'metrics.jsonl').write_text('\n'.join(json.dumps(e) for e in [
        {'step': 1, 'train_loss': loss, 'examples_per_sec': 100.0},
        {'step': 2, 'train_loss': loss / 2, 'examples_per_sec': 120.0},
        {'step': 2, 'eval_loss': loss, 'eval_accuracy': 0.5}]))
  out = tmp_path / 'curves.png'
  result = subprocess.run([sys.executable, 'scripts/plot_metrics.py', str(tmp_path / 'a'),
                           str(tmp_path / 'b'), '--out', str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 10_000


def test_a_workdir_that_is_a_file_fails_with_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  result = run_main('--config', 'configs/cnn.py:smoke', '--workdir', str(tmp_path / 'file'))
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert f"error: cannot use --workdir '{tmp_path / 'file'}'" in result.stderr
