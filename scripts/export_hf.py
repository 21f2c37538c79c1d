"""A GPT run as a Hugging Face GPT-2 checkpoint: config.json, model.safetensors and its tokenizer.

  python scripts/export_hf.py --workdir runs/gpt2_ft --out runs/gpt2_ft_hf
  python -c "import transformers as t; t.GPT2LMHeadModel.from_pretrained('runs/gpt2_ft_hf')"

Restores the run's newest checkpoint (experiment.restore_run) and writes its parameters (float32)
through the name table of dl10_jax/models/hf_gpt2.py, its model fields as GPT2LMHeadModel's
config.json, and its tokenizer as tokenizer.json + tokenizer_config.json, which
`transformers.AutoTokenizer` and `tokenizers.Tokenizer.from_file` read. It needs a GPT with
learned positions and a byte-level BPE tokenizer: `gpt2` (a run started from init_from=hf:DIR) or
`bpe`; torch is not needed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dl10_jax.data.tokenizer import BpeTokenizer  # noqa: E402
from dl10_jax.errors import ConfigError, UserError  # noqa: E402
from dl10_jax.models import hf_gpt2  # noqa: E402
from dl10_jax.train import experiment  # noqa: E402


def export(workdir: str | pathlib.Path, out: str | pathlib.Path) -> None:
  """Writes the run in `workdir` to the directory `out` as a Hugging Face GPT-2 checkpoint."""
  import jax
  exp, state = experiment.restore_run(workdir, jax.devices()[:1])
  if exp.config.model.name != 'gpt':
    raise ConfigError(f'{workdir} holds a {exp.config.model.name!r} model; only gpt runs export '
                      'as GPT-2')
  tokenizer = exp.splits.tokenizer
  if not isinstance(tokenizer, BpeTokenizer):
    raise ConfigError(f'{workdir} has a {tokenizer.kind!r} tokenizer, which Hugging Face cannot '
                      'read; export needs a byte-level BPE one (gpt2 or bpe)')
  hf_gpt2.write_checkpoint(out, state.params, hf_gpt2.fields_of(exp.objective.model),
                           tokenizer.eos_id)
  tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='the --workdir of a dl10_jax.main GPT run')
  parser.add_argument('--out', required=True, help='the directory to write the checkpoint to')
  args = parser.parse_args(argv)
  try:
    export(args.workdir, args.out)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'wrote {args.out}: config.json, model.safetensors, tokenizer.json, '
        'tokenizer_config.json')


if __name__ == '__main__':
  main()
