"""The README's results table is what the committed raw records say (scripts/results_table.py)."""

import importlib.util
import json
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def results_table():
  spec = importlib.util.spec_from_file_location('results_table', ROOT / 'scripts/results_table.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up there.
  spec.loader.exec_module(module)
  return module


def test_readme_table_is_generated_from_the_records(results_table):
  readme = (ROOT / 'README.md').read_text()
  assert results_table.replace_table(readme, results_table.render()) == readme, (
      'README.md differs from the raw records: run python scripts/results_table.py')


def test_every_record_holds_its_command_config_and_metrics(results_table):
  for rel in results_table.RECORDS.values():
    record = ROOT / 'experiments' / rel
    config = json.loads((record / 'config.json').read_text())
    assert config['model'], record
    command = (record / 'command.txt').read_text().splitlines()
    assert any(line.strip() and not line.startswith('#') for line in command), record
    assert json.loads((record / 'record.json').read_text())['exit_status'] == 0, record


def test_a_changed_record_changes_the_table(results_table, tmp_path):
  for rel in results_table.RECORDS.values():
    shutil.copytree(ROOT / 'experiments' / rel, tmp_path / rel)
  before = results_table.render(tmp_path)
  metrics = tmp_path / results_table.RECORDS['resnet20'] / 'metrics.jsonl'
  rows = [json.loads(l) for l in metrics.read_text().splitlines()]
  rows[-1]['eval_accuracy'] = 0.5  # Say the run had ended at 50 %.
  metrics.write_text('\n'.join(json.dumps(r) for r in rows))
  after = results_table.render(tmp_path)
  assert before != after and '**50.00 %**' in after and 'target 93.5 % in 30 min: missed' in after
  (tmp_path / results_table.RECORDS['cnn'] / 'record.json').unlink()
  with pytest.raises(SystemExit, match='lacks record.json'):
    results_table.render(tmp_path)
