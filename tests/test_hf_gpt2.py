"""GPT-2 from and to Hugging Face: logits, greedy decoding and the tokenizer equal transformers';
export round-trips bit-exactly; bad files are one line; GPT-2's sizes; fine-tuning through main.

Offline: a tiny random GPT-2 (every tensor perturbed, so a mis-mapped bias or LayerNorm shows) and
a byte-level BPE trained here stand in for the real checkpoints.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, metric_events, run_main
from dl10_jax import config_recipes, models
from dl10_jax.data import tokenizer as tokenizer_lib
from dl10_jax.errors import ConfigError
from dl10_jax.models import decoding, gpt, hf_gpt2
from dl10_jax.train.experiment import restore_run

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

TEXT = ''.join(f'Line {i}: the quick brown fox jumps over {i % 7} lazy dogs; naïve café, 東京 😀.\n'
               f'{"  " * (i % 3)}indented\twith tabs and  double  spaces\n\n'
               for i in range(120))
MIXED = ('Hello  wörld\n\nnew<|endoftext|> 42 😀\n  x \n\n\n y\t\tz 1234567 \r\nend. '
         "It's 3.14159 — ünïcödé, 東京!\n\n\n")


def _script(name: str) -> types.ModuleType:
  """scripts/NAME.py as a module."""
  spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  """A tiny GPT-2 as scripts/make_tiny_gpt2.py writes it (transformers' save_pretrained and a BPE
  trained here), every tensor then perturbed: biases and LayerNorms start at 0 and 1."""
  path = tmp_path_factory.mktemp('tiny_gpt2')
  model = _script('make_tiny_gpt2').make(path, TEXT, layers=2, width=32, heads=2, positions=64,
                                         vocab_size=400)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path)
  return types.SimpleNamespace(path=path, model=model, vocab=model.config.vocab_size,
                               eos=model.config.eos_token_id)


@pytest.fixture(scope='module')
def loaded(ckpt):
  """Our GPT with the checkpoint's fields and parameters."""
  import flax.traverse_util
  model = gpt.GPT(**hf_gpt2.model_fields(ckpt.path))
  params = flax.traverse_util.unflatten_dict(hf_gpt2.read_params(ckpt.path), sep='/')
  return model, params


def _hf_logits(model, tokens, mask=None):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens)),
                 attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()


def test_logits_equal_transformers_with_and_without_right_padding(ckpt, loaded):
  model, params = loaded
  assert (model.positions, model.layer_norm_epsilon, model.block_size) == ('learned', 1e-5, 64)
  tokens = np.random.default_rng(0).integers(0, ckpt.vocab, (2, 48))
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(tokens)))
  np.testing.assert_allclose(ours, _hf_logits(ckpt.model, tokens), atol=1e-5, rtol=0)
  # Right padding: the second row has 30 real tokens; its real positions are unchanged.
  mask = np.ones_like(tokens)
  mask[1, 30:] = 0
  padded = np.where(mask, tokens, 0)
  theirs = _hf_logits(ckpt.model, padded, mask)
  ours = np.asarray(model.apply({'params': params}, jnp.asarray(padded)))
  np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(ours[1, :30], theirs[1, :30], atol=1e-5, rtol=0)


def test_greedy_kv_cache_decoding_equals_transformers_generate(ckpt, loaded):
  model, params = loaded
  prompt = np.random.default_rng(1).integers(0, ckpt.vocab, 7)
  ours = decoding.generate(model, params, jnp.asarray(prompt, jnp.int32), max_new_tokens=24,
                           temperature=0.0)
  with torch.no_grad():
    ids = torch.tensor(prompt[None])
    theirs = ckpt.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=24, eos_token_id=None, pad_token_id=ckpt.eos)
  assert len(set(np.asarray(ours[0]).tolist())) > 1  # Not one token repeated throughout.
  np.testing.assert_array_equal(np.asarray(ours[0]), theirs[0, 7:].numpy())


def test_export_then_from_pretrained_is_bit_exact(ckpt, loaded, tmp_path):
  model, params = loaded
  hf_gpt2.write_checkpoint(tmp_path, params, hf_gpt2.fields_of(model), ckpt.eos)
  back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
  original = ckpt.model.state_dict()
  assert back.state_dict().keys() == original.keys()
  for name, tensor in back.state_dict().items():
    assert torch.equal(tensor, original[name]), name
  assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # Tied.
  # And back in: the same parameters.
  again = hf_gpt2.read_params(tmp_path)
  for key, value in hf_gpt2.read_params(ckpt.path).items():
    np.testing.assert_array_equal(again[key], value)


def test_tokenizer_ids_equal_transformers_and_round_trip(ckpt, tmp_path):
  # From vocab.json + merges.txt (the older files) here, tokenizer.json below.
  tokenizers.Tokenizer.from_file(str(ckpt.path / 'tokenizer.json')).model.save(str(tmp_path))
  shutil.copy(ckpt.path / 'config.json', tmp_path)
  ours = tokenizer_lib.Gpt2Tokenizer.from_pretrained(tmp_path)
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in (MIXED, TEXT[:3000], ' \n', '\n\nx', 'a\n\nb'):
    ids = ours.encode(text)
    assert ids.dtype == np.int32 and ids.tolist() == theirs(text)['input_ids'], repr(text)
    assert ours.decode(ids) == text == theirs.decode(ids.tolist())
  assert ours.vocab_size == ckpt.vocab and ours.eos_id == ckpt.eos
  restored = tokenizer_lib.from_json(ours.to_json())  # As a run saves and restores it.
  assert restored == ours and restored.kind == 'gpt2'
  assert restored.encode(MIXED).tolist() == ours.encode(MIXED).tolist()
  # Saved (tokenizer.json + tokenizer_config.json), read by both libraries, and by us again.
  out = tmp_path / 'saved'
  out.mkdir()
  ours.save_pretrained(out)
  shutil.copy(ckpt.path / 'config.json', out)
  want = ours.encode(MIXED).tolist()
  assert transformers.AutoTokenizer.from_pretrained(out)(MIXED)['input_ids'] == want
  assert tokenizers.Tokenizer.from_file(str(out / 'tokenizer.json')).encode(MIXED).ids == want
  assert tokenizer_lib.Gpt2Tokenizer.from_pretrained(out).encode(MIXED).tolist() == want
  # A bpe run's tokenizer exports the same way (line by line it has the same ids).
  bpe = tokenizer_lib.build('bpe', TEXT, 300)
  bpe.save_pretrained(out)
  line = MIXED.splitlines()[-1]
  assert transformers.AutoTokenizer.from_pretrained(out)(line)['input_ids'] == \
      bpe.encode(line).tolist()
  with pytest.raises(ConfigError, match='read from a Hugging Face GPT-2 checkpoint'):
    tokenizer_lib.build('gpt2', 'text')


def _one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert '\n' not in message, message
  return message


def _copy(ckpt, path: pathlib.Path) -> pathlib.Path:
  shutil.copytree(ckpt.path, path)
  return path


def test_a_tensor_or_config_that_does_not_fit_is_one_line_naming_it(ckpt, tmp_path):
  from safetensors.numpy import load_file, save_file
  bad = _copy(ckpt, tmp_path / 'shape')
  tensors = load_file(bad / 'model.safetensors')
  tensors['transformer.h.1.mlp.c_fc.weight'] = tensors['transformer.h.1.mlp.c_fc.weight'][:, :100]
  save_file(tensors, bad / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ConfigError) as error:
    hf_gpt2.read_params(bad)
  assert 'tensor transformer.h.1.mlp.c_fc.weight has shape (32, 100)' in _one_line(error)
  assert 'needs (32, 128)' in str(error.value)

  del tensors['transformer.h.1.mlp.c_fc.weight']
  save_file(tensors, bad / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ConfigError, match=r'tensor transformer\.h\.1\.mlp\.c_fc\.weight is missing'):
    hf_gpt2.read_params(bad)

  config = json.loads((ckpt.path / 'config.json').read_text())
  for key, value, message in (('activation_function', 'relu', "activation_function='relu' is "
                               'not supported; allowed: gelu_new, gelu_pytorch_tanh'),
                              ('n_layer', 3, 'tensor transformer.h.2.ln_1.weight is missing'),
                              ('scale_attn_by_inverse_layer_idx', True, 'not supported')):
    changed = _copy(ckpt, tmp_path / key)
    (changed / 'config.json').write_text(json.dumps({**config, key: value}))
    with pytest.raises(ConfigError) as error:
      hf_gpt2.read_params(changed)
    assert message in _one_line(error)
  with pytest.raises(ConfigError, match='config.json does not exist'):
    hf_gpt2.model_fields(tmp_path / 'nowhere')


def _malicious_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
  class Payload:
    def __reduce__(self):
      return os.system, (f'touch {marker}',)
  torch.save({'transformer.wte.weight': Payload()}, path)


def test_pickles_only_through_weights_only_torch_load_and_safetensors_first(ckpt, tmp_path,
                                                                            monkeypatch):
  marker = tmp_path / 'code_ran'
  evil = tmp_path / 'evil'
  evil.mkdir()
  shutil.copy(ckpt.path / 'config.json', evil)
  _malicious_pickle(evil / 'pytorch_model.bin', marker)
  with pytest.raises(ConfigError) as error:
    hf_gpt2.read_params(evil)
  assert 'weights_only=True) refused it' in _one_line(error) and 'posix.system' in str(error.value)
  assert not marker.exists()
  # Beside model.safetensors the pickle is never opened.
  shutil.copy(ckpt.path / 'model.safetensors', evil)
  hf_gpt2.read_params(evil)
  assert not marker.exists()
  # A plain state dict loads, equal to the safetensors file; without torch it is refused.
  plain = tmp_path / 'plain'
  plain.mkdir()
  shutil.copy(ckpt.path / 'config.json', plain)
  torch.save(ckpt.model.state_dict(), plain / 'pytorch_model.bin')
  for key, value in hf_gpt2.read_params(ckpt.path).items():
    np.testing.assert_array_equal(hf_gpt2.read_params(plain)[key], value)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'torch' else find_spec(name, *a))
  with pytest.raises(ConfigError) as error:
    hf_gpt2.read_params(plain)
  assert 'torch is not installed: convert it to model.safetensors' in _one_line(error)


@pytest.mark.parametrize('size,count', [('gpt2', 124_439_808), ('gpt2-medium', 354_823_168),
                                        ('gpt2-large', 774_030_080), ('gpt2-xl', 1_557_611_200)])
def test_gpt2_presets_have_gpt2s_parameter_counts(size, count):
  from configs import gpt as gpt_config
  config = gpt_config.get_config(size)
  assert config.model.block_size == config.dataset.block_size == 1024
  assert (config.model.positions, config.model.layer_norm_epsilon) == ('learned', 1e-5)
  config.model.vocab_size = 50_257
  model = models.build(config.model)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == count
  assert size in config_recipes.GPT2_SIZES


def test_fine_tune_through_main_then_sample_and_export(ckpt, tmp_path, caplog):
  """init_from=hf:DIR on any GPT config: the checkpoint's shape and tokenizer; sampling and the
  export read the run; transformers decodes the exported weights as the run does."""
  text_file = tmp_path / 'corpus.txt'
  text_file.write_text(TEXT, encoding='utf-8')
  workdir = tmp_path / 'run'
  result = run_main(
      '--config', 'configs/gpt.py:smoke', '--workdir', str(workdir),
      f'--config.init_from=hf:{ckpt.path}', '--config.dataset.name=text_file',
      f'--config.dataset.path={text_file}', '--config.num_train_steps=4',
      '--config.warmup_steps=1', '--config.learning_rate=1e-3', '--config.mesh.data=1')
  assert result.returncode == 0, result.stderr
  assert 'the model takes the checkpoint\'s shape: block_size 32 -> 64' in caplog.text
  saved = json.loads((workdir / 'config.json').read_text())
  assert {k: saved['model'][k] for k in ('num_layers', 'width', 'num_heads', 'block_size',
                                          'positions', 'layer_norm_epsilon', 'vocab_size')} == \
      dict(num_layers=2, width=32, num_heads=2, block_size=64, positions='learned',
           layer_norm_epsilon=1e-5, vocab_size=ckpt.vocab)
  assert saved['dataset']['block_size'] == 32 and saved['dataset']['tokenizer'] == 'gpt2'
  assert tokenizer_lib.from_json((workdir / 'tokenizer.json').read_text()).kind == 'gpt2'
  assert sorted(metric_events(workdir, 'eval_loss')) == [0, 4]

  # What `python -m dl10_jax.sample --workdir ... --temperature 0` runs (sample.sample_text; its
  # flags cannot be defined beside main's in this process): the run's model and tokenizer.
  exp, state = restore_run(workdir, jax.devices()[:1])
  prompt = exp.splits.tokenizer.encode('The quick')
  greedy = decoding.generate(exp.objective.model, state.params, jnp.asarray(prompt),
                             max_new_tokens=12, temperature=0.0)
  sampled = 'The quick' + exp.splits.tokenizer.decode(np.asarray(greedy[0]))

  out = tmp_path / 'exported'
  _script('export_hf').export(workdir, out)
  tuned = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ids = tok('The quick', return_tensors='pt')['input_ids']
  with torch.no_grad():
    continued = tuned.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=12, eos_token_id=None, pad_token_id=ckpt.eos)
  assert continued[0, len(prompt):].tolist() == np.asarray(greedy[0]).tolist()
  assert sampled == tok.decode(continued[0])
  changed = any(not torch.equal(tuned.state_dict()[k], v)
                for k, v in ckpt.model.state_dict().items())
  assert changed  # Four steps of fine-tuning moved the weights.
