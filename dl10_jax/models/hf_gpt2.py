"""GPT-2 weights from and to Hugging Face checkpoints (`GPT2LMHeadModel`): one name table, read
both ways.

`gpt.GPT` with learned positions and LayerNorm epsilon 1e-5 is GPT-2: a tanh-approximated GELU,
biases everywhere and the output projection tied to the token embedding, as GPT always has.
Hugging Face's `Conv1D` stores [in, out] like a flax Dense kernel, so every tensor maps by a reshape
alone: `c_attn` [W, 3W] is q | k | v, each heads x head dim, which our `qkv` keeps as [W, 3, H, D].

- Import, `init_from=hf:DIR` (train/experiment.py, train/checkpoint.py): `configure` takes the
  model's shape from DIR's config.json and GPT-2's tokenizer from its tokenizer files;
  `read_params` reads the tensors as our parameters, each checked against the shape config.json
  implies.
- Export (scripts/export_hf.py): `write_checkpoint`, config.json and model.safetensors that
  `transformers.GPT2LMHeadModel.from_pretrained` loads.

Checkpoint files are untrusted input. `model.safetensors` (data only) is read when present;
`pytorch_model.bin`, a pickle, only through `torch.load(weights_only=True)`, which refuses anything
but tensors and runs no code, and only where torch is installed (no dependency of this project).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import numpy as np
from absl import logging

from dl10_jax.data.tokenizer import Gpt2Tokenizer
from dl10_jax.errors import ConfigError, check_choice, describe

PREFIX = 'hf:'  # init_from=hf:DIR
SAFETENSORS, PICKLE, CONFIG = 'model.safetensors', 'pytorch_model.bin', 'config.json'
ACTIVATIONS = ('gelu_new', 'gelu_pytorch_tanh')  # Both are GPT-2's tanh approximation.
_BODY = 'transformer.'  # GPT2LMHeadModel's prefix of the network's tensors (older files: none).
# Tensors that are no parameters: older files' causal-mask buffers, and the output matrix, which
# is the token embedding (tie_word_embeddings).
_NOT_PARAMETERS = re.compile(r'^h\.\d+\.attn\.(masked_)?bias$|^lm_head\.weight$')

# Our model field and config.json's key.
_FIELDS = (('vocab_size', 'vocab_size'), ('block_size', 'n_positions'), ('num_layers', 'n_layer'),
           ('width', 'n_embd'), ('num_heads', 'n_head'), ('layer_norm_epsilon', 'layer_norm_epsilon'))
# Our parameter, Hugging Face's tensor, and their shapes in V(ocabulary), T (positions), W(idth),
# H(eads), D (head dim), F (MLP width); block tensors once per layer (block{i}/..., h.{i}....).
_TOP = (('wte/embedding', 'wte.weight', 'V W', 'V W'),
        ('wpe/embedding', 'wpe.weight', 'T W', 'T W'),
        ('ln_f/scale', 'ln_f.weight', 'W', 'W'),
        ('ln_f/bias', 'ln_f.bias', 'W', 'W'))
_BLOCK = (('ln1/scale', 'ln_1.weight', 'W', 'W'),
          ('ln1/bias', 'ln_1.bias', 'W', 'W'),
          ('attn/qkv/kernel', 'attn.c_attn.weight', 'W 3 H D', 'W 3W'),
          ('attn/qkv/bias', 'attn.c_attn.bias', '3 H D', '3W'),
          ('attn/proj/kernel', 'attn.c_proj.weight', 'W W', 'W W'),
          ('attn/proj/bias', 'attn.c_proj.bias', 'W', 'W'),
          ('ln2/scale', 'ln_2.weight', 'W', 'W'),
          ('ln2/bias', 'ln_2.bias', 'W', 'W'),
          ('mlp/fc/kernel', 'mlp.c_fc.weight', 'W F', 'W F'),
          ('mlp/fc/bias', 'mlp.c_fc.bias', 'F', 'F'),
          ('mlp/proj/kernel', 'mlp.c_proj.weight', 'F W', 'F W'),
          ('mlp/proj/bias', 'mlp.c_proj.bias', 'W', 'W'))


def directory(init_from: str) -> pathlib.Path | None:
  """The checkpoint directory of `init_from=hf:DIR`; None for any other init_from."""
  return pathlib.Path(init_from[len(PREFIX):]).expanduser() if init_from.startswith(PREFIX) \
      else None


def name_table(fields: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...], tuple[int, ...]]]:
  """(our parameter path, Hugging Face's tensor name, our shape, its shape) of every parameter of
  a GPT with model `fields`."""
  w, h = fields['width'], fields['num_heads']
  dims = {'V': fields['vocab_size'], 'T': fields['block_size'], 'W': w, 'H': h, 'D': w // h,
          '3W': 3 * w, 'F': fields['mlp_ratio'] * w}
  shape = lambda spec: tuple(dims[d] if d in dims else int(d) for d in spec.split())
  rows = list(_TOP) + [(f'block{i}/{ours}', f'h.{i}.{theirs}', a, b)
                       for i in range(fields['num_layers']) for ours, theirs, a, b in _BLOCK]
  return [(ours, theirs, shape(a), shape(b)) for ours, theirs, a, b in rows]


# --- Import. ---

def _read_config(path: pathlib.Path) -> dict[str, Any]:
  try:
    config = json.loads((path / CONFIG).read_text(encoding='utf-8'))
  except FileNotFoundError:
    raise ConfigError(f'init_from={PREFIX}{path}: {path / CONFIG} does not exist; pass a Hugging '
                      'Face GPT-2 checkpoint directory (config.json, model.safetensors, '
                      'tokenizer files)') from None
  except (OSError, ValueError) as e:
    raise ConfigError(f'cannot read {path / CONFIG}: {describe(e)}') from None
  if not isinstance(config, dict):
    raise ConfigError(f'{path / CONFIG} holds no JSON object')
  return config


def model_fields(path: pathlib.Path) -> dict[str, Any]:
  """The `model` fields of GPT for the checkpoint in `path` (from its config.json); anything of
  it that GPT is not is one line naming the key."""
  hf = _read_config(path)
  where = path / CONFIG
  check_choice(f'{where}: model_type', hf.get('model_type'), ('gpt2',))
  check_choice(f'{where}: activation_function', hf.get('activation_function', 'gelu_new'),
               ACTIVATIONS)
  for key, gpt2 in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                    ('add_cross_attention', False), ('tie_word_embeddings', True)):
    if hf.get(key, gpt2) != gpt2:
      raise ConfigError(f'{where}: {key}={hf[key]} is not supported (GPT-2 has {gpt2})')
  fields = {}
  for ours, theirs in _FIELDS:
    value = hf.get(theirs, 1e-5 if theirs == 'layer_norm_epsilon' else None)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'{where}: {theirs}={value!r} must be a positive number')
    fields[ours] = value
  inner = hf.get('n_inner') or 4 * fields['width']
  if inner % fields['width']:
    raise ConfigError(f'{where}: n_inner={inner} must be a multiple of n_embd={fields["width"]}')
  return {**fields, 'mlp_ratio': inner // fields['width'], 'positions': 'learned'}


def configure(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` starting from the checkpoint of init_from=hf:DIR (a copy; `config` itself for any
  other init_from): the model's shape fields are the checkpoint's (a warning names each one the
  config had otherwise) and its tokenizer GPT-2's."""
  path = directory(config.init_from)
  if path is None:
    return config
  if config.model.name != 'gpt':
    raise ConfigError(f'init_from={config.init_from} holds GPT-2 weights, which model.name=gpt '
                      f'takes, not {config.model.name!r}')
  fields = model_fields(path)
  if config.dataset.block_size > fields['block_size']:
    raise ConfigError(f'dataset.block_size={config.dataset.block_size} is longer than the '
                      f'{fields["block_size"]} positions of {path}; use at most that')
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked; the block sizes now apart.
  changed = [f'{k} {config.model.get(k)} -> {v}' for k, v in fields.items()
             if config.model.get(k) != v and not (k == 'vocab_size' and config.model.get(k) == -1)]
  if changed:
    logging.warning('init_from=%s: the model takes the checkpoint\'s shape: %s', config.init_from,
                    ', '.join(changed))
  config.model.update(fields)
  config.dataset.tokenizer = Gpt2Tokenizer.kind
  return config


def tokenizer(init_from: str) -> Gpt2Tokenizer | None:
  """The GPT-2 tokenizer of the checkpoint of init_from=hf:DIR; None for any other init_from."""
  path = directory(init_from)
  return None if path is None else Gpt2Tokenizer.from_pretrained(path)


# The lines of torch.load's refusal that say nothing about the file.
_TORCH_ADVICE = ('Weights only load failed', 'Check the documentation', 'Please file an issue')


def _refusal(error: Exception) -> str:
  """Why torch.load(weights_only=True) refused a file ('unsupported GLOBAL posix.system ...')."""
  reasons = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith(_TORCH_ADVICE)]
  return reasons[0][:200] if reasons else describe(error)


def _read_pickle(file: pathlib.Path) -> dict[str, np.ndarray]:
  if importlib.util.find_spec('torch') is None:
    raise ConfigError(f'{file} is a pickle, which is read only by torch.load(weights_only=True), '
                      f'and torch is not installed: convert it to {SAFETENSORS} (or install torch)')
  import torch
  try:
    state = torch.load(file, map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001 - A refused global, a damaged file: one line either way.
    raise ConfigError(f'{file}: torch.load(weights_only=True) refused it ({_refusal(e)}); nothing '
                      f'in it was run; use {SAFETENSORS}') from None
  if not isinstance(state, dict):
    raise ConfigError(f'{file} holds a {type(state).__name__}, not a dict of tensors')
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()
          if isinstance(v, torch.Tensor)}


def _read_tensors(path: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
  """(the file read, its tensors): model.safetensors if there is one, else pytorch_model.bin."""
  file = path / SAFETENSORS
  if file.is_file():
    from safetensors import safe_open
    try:  # flax arrays: numpy has no bfloat16. On the host: converted there next.
      with jax.default_device(jax.devices('cpu')[0]), safe_open(str(file), framework='flax') as f:
        return file, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - The library's error for a damaged file: one line.
      raise ConfigError(f'cannot read {file}: {describe(e)}') from None
  if (path / PICKLE).is_file():
    return path / PICKLE, _read_pickle(path / PICKLE)
  raise ConfigError(f'{path} holds no weights: it needs {SAFETENSORS} (or {PICKLE})')


def read_params(path: pathlib.Path) -> dict[str, np.ndarray]:
  """{our parameter path: float32 array} of the checkpoint in `path`; a missing, unknown or
  misshapen tensor is one line naming it."""
  fields = model_fields(path)
  file, tensors = _read_tensors(path)
  names = {name.removeprefix(_BODY): name for name in tensors}
  table = name_table(fields)
  expected = {theirs for _, theirs, _, _ in table}
  shape_of = ', '.join(f'{theirs}={fields[ours]}' for ours, theirs in _FIELDS[:-1])
  for short, name in sorted(names.items()):
    if short not in expected and not _NOT_PARAMETERS.match(short):
      raise ConfigError(f'{file}: tensor {name} is no parameter of a GPT-2 of {shape_of} '
                        f'({CONFIG})')
  params = {}
  for ours, theirs, our_shape, their_shape in table:
    if theirs not in names:
      raise ConfigError(f'{file}: tensor {_BODY}{theirs} is missing')
    x = tensors[names[theirs]]
    if tuple(x.shape) != their_shape:
      raise ConfigError(f'{file}: tensor {names[theirs]} has shape {tuple(x.shape)}, but '
                        f'{CONFIG} ({shape_of}) needs {their_shape}')
    params[ours] = np.asarray(x, np.float32).reshape(our_shape)
  return params


# --- Export. ---

def fields_of(model: Any) -> dict[str, Any]:
  """The fields of a `gpt.GPT` the name table and config.json read."""
  names = [ours for ours, _ in _FIELDS] + ['mlp_ratio', 'positions', 'dropout_rate']
  return {name: getattr(model, name) for name in names}


def hf_config(fields: dict[str, Any], eos_id: int | None) -> dict[str, Any]:
  """config.json of GPT2LMHeadModel for a GPT with model `fields`."""
  width, ratio = fields['width'], fields['mlp_ratio']
  return {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
          **{theirs: fields[ours] for ours, theirs in _FIELDS},
          'n_inner': None if ratio == 4 else ratio * width, 'activation_function': 'gelu_new',
          # Dropout where GPT drops: embeddings and residual branches, not attention weights.
          'embd_pdrop': fields['dropout_rate'], 'resid_pdrop': fields['dropout_rate'],
          'attn_pdrop': 0.0, 'scale_attn_weights': True, 'tie_word_embeddings': True,
          'bos_token_id': eos_id, 'eos_token_id': eos_id, 'dtype': 'float32'}


def write_checkpoint(out: str | os.PathLike, params: Any, fields: dict[str, Any],
                     eos_id: int | None = None) -> None:
  """config.json and model.safetensors (float32) of GPT parameters `params` in directory `out`."""
  from safetensors.numpy import save_file
  if fields['positions'] != 'learned':
    raise ConfigError(f'model.positions={fields["positions"]!r}: GPT-2 has learned positions, so '
                      'only a run with positions=learned exports as GPT-2')
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep='/')
  table = name_table(fields)
  extra = sorted(set(flat) - {ours for ours, _, _, _ in table})
  if extra:
    raise ConfigError(f'parameter {extra[0]} has no place in GPT-2')
  tensors = {_BODY + theirs: np.ascontiguousarray(np.asarray(flat[ours], np.float32)
                                                  .reshape(their_shape))
             for ours, theirs, _, their_shape in table}
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  save_file(tensors, out / SAFETENSORS, metadata={'format': 'pt'})
  (out / CONFIG).write_text(json.dumps(hf_config(fields, eos_id), indent=2) + '\n')
