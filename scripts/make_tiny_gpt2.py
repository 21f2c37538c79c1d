"""A tiny random GPT-2 in Hugging Face's format, to try init_from=hf:DIR without a network.

  python scripts/make_tiny_gpt2.py --text FILE --out runs/tiny_gpt2 \
      [--layers 2 --width 64 --heads 2 --positions 256 --vocab_size 1024 --seed 0]

Writes what transformers writes for a GPT-2: `GPT2LMHeadModel(GPT2Config(...)).save_pretrained`
(config.json, model.safetensors; the weights are transformers' seeded random initialisation) and a
byte-level BPE tokenizer trained on FILE the way GPT-2's is built (`<|endoftext|>` special;
tokenizer.json, tokenizer_config.json). A stand-in for a real checkpoint such as `gpt2`, with the
same files. Needs transformers and torch (requirements-dev.txt); dl10_jax itself does not.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dl10_jax.data.tokenizer import GPT2_EOS, BpeTokenizer  # noqa: E402


def make(out: str | pathlib.Path, text: str, *, layers: int = 2, width: int = 64, heads: int = 2,
         positions: int = 256, vocab_size: int = 1024, seed: int = 0) -> Any:
  """Writes the checkpoint to `out`; returns its transformers.GPT2LMHeadModel."""
  import torch
  import transformers
  tokenizer = BpeTokenizer.build(text, vocab_size, special_tokens=(GPT2_EOS,))
  torch.manual_seed(seed)
  config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads,
                                   n_positions=positions, vocab_size=tokenizer.vocab_size,
                                   bos_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id)
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(out)
  tokenizer.save_pretrained(out)
  return model


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--text', required=True, help='a UTF-8 text file to train the tokenizer on')
  parser.add_argument('--out', required=True, help='the checkpoint directory to write')
  for name, default in (('layers', 2), ('width', 64), ('heads', 2), ('positions', 256),
                        ('vocab_size', 1024), ('seed', 0)):
    parser.add_argument(f'--{name}', type=int, default=default)
  args = parser.parse_args(argv)
  make(args.out, pathlib.Path(args.text).read_text(encoding='utf-8'), layers=args.layers,
       width=args.width, heads=args.heads, positions=args.positions, vocab_size=args.vocab_size,
       seed=args.seed)
  print(f'wrote {args.out}: config.json, model.safetensors, tokenizer.json, tokenizer_config.json')


if __name__ == '__main__':
  main()
