"""Flash attention (kernels/flash_attention.py) in CPU-only CI, and on hardware when present.

- Numerics: both variants (Triton-style and TPU-style) in the Pallas interpreter equal
  `reference_attention` in output and in dq, dk, dv, for causal and non-causal, padding and segment
  masks, odd lengths, several head dims and dtypes, batch, heads and grouped heads > 1.
- Lowering: `jax.export` for 'cuda' (Triton) and 'tpu' (Mosaic) of the forward and the gradient at
  training-sized shapes (abstract inputs: nothing is allocated); the TPU and Triton checks reject
  illegal blocks, and the block table never produces one.
- Wiring: `attention_impl=pallas_interpret` in GPT and in a padded call equals `xla`; `pallas` on
  CPU is one ConfigError line.

Tolerances: max |flash - reference| <= tol * max(1, max |reference|) for the output and each
gradient, tol = 2e-5 (float32), 5e-3 (float16), 3e-2 (bfloat16): the kernels round p and dS to
the input dtype before their matmuls, as every flash kernel does; the reference does not.
Interpret mode compiles every shape anew (~3 s each), so shapes stay small except where length is
the point. Hardware-only tests carry `gpu` / `tpu` markers and skip elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from conftest import EXPORT_PLATFORM, export_for
from configs import gpt as gpt_config
from dl10_jax import models
from dl10_jax.errors import ConfigError
from dl10_jax.kernels import _flash_tpu, _flash_triton
from dl10_jax.kernels import flash_attention as fa
from dl10_jax.models import attention

TOL = {jnp.float32: 2e-5, jnp.float16: 5e-3, jnp.bfloat16: 3e-2}
FAST_COMPILE = {'xla_backend_optimization_level': 0}
ON_GPU = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU')
ON_TPU = pytest.mark.skipif(jax.default_backend() != 'tpu', reason='needs a TPU')


def _inputs(b, tq, tk, h, kv_heads, d, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (b, tq, h, d))
  k, v = (jax.random.normal(key, (b, tk, kv_heads, d)) for key in keys[1:3])
  cotangent = jax.random.normal(keys[3], (b, tq, h, d))
  return tuple(x.astype(dtype) for x in (q, k, v, cotangent))


def _masks(kind, b, tq, tk):
  """kwargs for both functions: padding keeps >= 1 key per row (no fully masked query)."""
  if kind == 'padding':
    lengths = jnp.array([tk, max(1, tk // 2 + 1)] * b)[:b]
    return {'kv_valid': jnp.arange(tk)[None, :] < lengths[:, None]}
  if kind == 'segments':  # Self-attention: a query always sees itself.
    ids = (jnp.arange(tq)[None, :] >= jnp.array([tq // 3, tq // 2])[:b, None]).astype(jnp.int32)
    return {'segment_ids': ids + jnp.arange(b)[:, None]}
  return {}


def _value_and_grads(f, q, k, v, cotangent):
  out, vjp = jax.vjp(f, q, k, v)
  return (out, *vjp(cotangent))


def _both(flash, reference, *args):
  """(flash's, the reference's) output and gradients, from one quick compile (the interpreter's
  loops compile ~40 % faster without LLVM's optimisations, and run in milliseconds anyway)."""
  both = lambda *a: (_value_and_grads(flash, *a), _value_and_grads(reference, *a))
  return jax.jit(both, compiler_options=FAST_COMPILE)(*args)


def _assert_close(got, want, dtype, what=''):
  for name, g, w in zip(('out', 'dq', 'dk', 'dv'), got, want):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    assert g.shape == w.shape, (name, g.shape, w.shape)
    err, scale = np.abs(g - w).max(), max(1.0, np.abs(w).max())
    assert err <= TOL[dtype] * scale, f'{what} {name}: max error {err:.3g} (scale {scale:.3g})'


# (backend, B, Tq, Tk, H, K, D, dtype, causal, mask): every feature on both variants, each case
# adding others, at the cost of one interpreter compile each (Triton's non-causal padding is the
# cross-attention case's, its bfloat16 the segments case's).
CASES = [
    ('triton', 2, 129, 129, 2, 1, 64, jnp.float32, True, None),
    ('tpu', 2, 129, 129, 2, 1, 64, jnp.float32, True, None),
    ('tpu', 2, 7, 7, 2, 2, 128, jnp.bfloat16, True, 'segments'),
    ('triton', 2, 129, 129, 2, 2, 64, jnp.bfloat16, True, 'segments'),
    ('tpu', 2, 129, 129, 4, 2, 128, jnp.bfloat16, False, 'padding'),
    ('triton', 1, 1000, 1000, 1, 1, 64, jnp.bfloat16, True, None),
    ('tpu', 1, 1000, 1000, 1, 1, 64, jnp.bfloat16, True, 'padding'),
    ('triton', 1, 1, 1, 2, 2, 32, jnp.float32, False, None),
    ('tpu', 1, 1, 1, 2, 2, 32, jnp.float32, True, None),
    ('triton', 2, 7, 129, 2, 1, 96, jnp.float16, False, 'padding'),  # Cross-attention, D padded.
    ('tpu', 2, 129, 7, 2, 1, 96, jnp.float16, True, 'padding'),
]


@pytest.mark.parametrize('backend,b,tq,tk,h,kv_heads,d,dtype,causal,mask', CASES,
                         ids=lambda x: getattr(x, '__name__', str(x)))
def test_interpret_equals_the_reference_in_value_and_gradients(backend, b, tq, tk, h, kv_heads,
                                                               d, dtype, causal, mask):
  q, k, v, cotangent = _inputs(b, tq, tk, h, kv_heads, d, dtype)
  kwargs = dict(causal=causal, **_masks(mask, b, tq, tk))
  flash = functools.partial(fa.flash_attention, backend=backend, interpret=True, **kwargs)
  _assert_close(*_both(flash, functools.partial(fa.reference_attention, **kwargs), q, k, v,
                       cotangent), dtype)


@pytest.mark.parametrize('backend,block_q,block_k', [('triton', 16, 16), ('tpu', 8, 128)])
def test_causal_blocks_above_the_diagonal_are_skipped_not_masked(backend, block_q, block_k):
  """NaN where only a skipped block would read it stays out (a masked block would let it in:
  0 * NaN): in the second half of the keys for the output and dq of the first half of the
  queries, in the first half of the queries for dk and dv of the second half of the keys."""
  t = 2 * max(block_q, block_k)
  q, k, v, cotangent = _inputs(1, t, t, 1, 1, 32, jnp.float32)
  second = jnp.arange(t)[None, :, None, None] >= t // 2
  flash = functools.partial(fa.flash_attention, causal=True, backend=backend, interpret=True,
                            block_q=block_q, block_k=block_k)
  run = jax.jit(functools.partial(_value_and_grads, flash), compiler_options=FAST_COMPILE)
  want = jax.jit(functools.partial(_value_and_grads, functools.partial(
      fa.reference_attention, causal=True)), compiler_options=FAST_COMPILE)(q, k, v, cotangent)
  out, dq, _, _ = run(q, jnp.where(second, jnp.nan, k), jnp.where(second, jnp.nan, v), cotangent)
  for got, ref in ((out, want[0]), (dq, want[1])):
    np.testing.assert_allclose(got[:, :t // 2], ref[:, :t // 2], atol=1e-5)
  _, _, dk, dv = run(jnp.where(second, q, jnp.nan), k, v, cotangent)
  for got, ref in ((dk, want[2]), (dv, want[3])):
    np.testing.assert_allclose(got[:, t // 2:], ref[:, t // 2:], atol=1e-5)


def test_tpu_interpret_params_simulate_memory_and_dmas():
  """pltpu.InterpretParams: the TPU variant with VMEM, DMAs and race detection simulated."""
  q, k, v, _ = _inputs(1, 130, 130, 1, 1, 32, jnp.float32)
  ids = (jnp.arange(130) >= 60).astype(jnp.int32)[None]
  got = fa.flash_attention(q, k, v, causal=True, segment_ids=ids, backend='tpu', block_q=64,
                           interpret=pltpu.InterpretParams(detect_races=True))
  np.testing.assert_allclose(got, fa.reference_attention(q, k, v, causal=True, segment_ids=ids),
                             atol=2e-5)


# --- Lowering, without the hardware. ---

def _grad_of(f):
  return jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))


@pytest.mark.parametrize('backend', ['triton', 'tpu'])
@pytest.mark.parametrize('b,t,h,kv_heads,d,causal,segments', [
    (2, 8192, 8, 2, 128, True, False),  # B * T = 16k tokens, grouped heads.
    (8, 2048, 12, 12, 64, True, True),
    (4, 1000, 4, 4, 128, False, False),  # Padded to the block.
    (16, 1024, 4, 4, 64, False, True),
])
def test_export_for_the_hardware_lowers_forward_and_gradient(backend, b, t, h, kv_heads, d,
                                                             causal, segments):
  q = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((b, t, kv_heads, d), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def run(grad, q, k, v, ids=None):
    f = functools.partial(fa.flash_attention, causal=causal, segment_ids=ids, backend=backend)
    return _grad_of(f)(q, k, v) if grad else f(q, k, v)

  for grad in (False, True):
    exported = export_for(backend, functools.partial(run, grad), q, kv, kv,
                       *([ids] if segments else []))
    assert exported.platforms == (EXPORT_PLATFORM[backend],)
    kernels = exported.mlir_module()
    assert ('tpu_custom_call' if backend == 'tpu' else 'triton') in kernels


@pytest.mark.parametrize('backend', ['triton', 'tpu'])
@pytest.mark.parametrize('dtype,d', [(jnp.float32, 256), (jnp.float16, 32), (jnp.float32, 96)])
def test_export_covers_other_dtypes_and_head_dims(backend, dtype, d):
  q = jax.ShapeDtypeStruct((2, 512, 2, d), dtype)
  f = functools.partial(fa.flash_attention, causal=True, backend=backend)
  export_for(backend, _grad_of(f), q, q, q)


@pytest.mark.parametrize('backend,module,block_q,block_k,message', [
    ('tpu', _flash_tpu, 12, 128, 'divisible by 8 and 128'),  # 12 query rows: not (8, 128)-tiled.
    ('triton', _flash_triton, 24, 32, 'power of 2'),
])
def test_export_rejects_an_illegal_block(backend, module, block_q, block_k, message):
  """The export check is real: the kernel itself, handed a block the hardware cannot tile."""
  plan = fa.Plan(backend, False, 0.125, None, block_q, block_k, block_q, block_k, False)
  q = jax.ShapeDtypeStruct((1, 2 * block_q, 2, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 4 * block_k, 2, 64), jnp.bfloat16)
  with pytest.raises(Exception, match=message):
    export_for(backend, lambda q, k, v: module.forward(q, k, v, None, None, plan), q, kv, kv)
  with pytest.raises(ConfigError, match=f'block_q={block_q} does not tile on {backend}'):
    fa.flash_attention(jnp.zeros((1, 8, 1, 64)), jnp.zeros((1, 8, 1, 64)),
                       jnp.zeros((1, 8, 1, 64)), backend=backend, block_q=block_q)


def test_the_block_table_never_produces_an_illegal_block():
  for backend in fa.BACKENDS:
    for dtype in fa.DTYPES:
      for d in (16, 32, 64, 128, 256):
        for tq in (1, 7, 8, 100, 129, 512, 1000, 2048, 4097, 8192, 32768):
          for tk in (1, 129, 1000, 8192):
            blocks = fa.block_sizes(backend, dtype, d, tq, tk)
            for name, block in vars(blocks).items():
              assert fa.block_error(backend, name[6], block) is None, (backend, d, tq, tk, name)
            assert max(blocks.block_q, blocks.block_q_bwd) % min(blocks.block_q,
                                                                 blocks.block_q_bwd) == 0


# --- Wiring into the models. ---

def test_gpt_smoke_model_with_pallas_interpret_equals_xla():
  config = gpt_config.get_config('smoke').model
  config.vocab_size = 65
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, config.block_size), 0, 65)
  config.attention_impl = 'xla'
  xla = models.build(config)
  params = jax.jit(xla.init)(jax.random.PRNGKey(1), tokens)
  config.attention_impl = 'pallas_interpret'
  pallas = models.build(config)
  got, want = jax.jit(lambda p, t: (pallas.apply(p, t), xla.apply(p, t)),
                      compiler_options=FAST_COMPILE)(params, tokens)
  np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)


def test_padding_masks_reach_the_kernel_and_other_masks_fall_back():
  q, k, v, _ = _inputs(2, 20, 20, 2, 2, 16, jnp.float32)
  padding = attention.make_mask(20, 20, kv_valid=jnp.arange(20)[None] < jnp.array([[20], [9]]))
  dense = attention.make_mask(20, 20, causal=True, q_offset=3)
  def run(q, k, v):
    return [[attention.dot_product_attention(q, k, v, mask=mask, causal=causal, impl=impl)
             for impl in ('pallas_interpret', 'xla')]
            for mask, causal in ((padding, True), (dense, False))]

  for got, want in jax.jit(run, compiler_options=FAST_COMPILE)(q, k, v):
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_an_impl_the_backend_cannot_run_is_one_line(monkeypatch):
  q = jnp.zeros((1, 4, 2, 8))
  if jax.default_backend() == 'cpu':
    with pytest.raises(ConfigError, match='attention_impl=pallas needs a GPU or TPU') as error:
      attention.dot_product_attention(q, q, q, impl='pallas')
    assert '\n' not in str(error.value)
    with pytest.raises(ConfigError, match='flash attention needs a GPU or TPU'):
      fa.flash_attention(q, q, q)
  with pytest.raises(ConfigError, match="backend='cuda' is not supported; allowed: triton, tpu"):
    fa.flash_attention(q, q, q, backend='cuda')
  with pytest.raises(ConfigError, match='dtypes int32'):
    fa.flash_attention(q.astype(jnp.int32), q, q, backend='tpu')


@pytest.mark.parametrize('platform,dtype,flash_ok,cudnn_ok,want', [
    ('tpu', jnp.bfloat16, True, True, 'pallas'), ('gpu', jnp.float16, True, True, 'cudnn'),
    ('gpu', jnp.bfloat16, True, False, 'pallas'), ('gpu', jnp.bfloat16, False, True, 'cudnn'),
    ('gpu', jnp.bfloat16, False, False, 'xla'), ('gpu', jnp.float32, True, True, 'xla'),
    ('tpu', jnp.float32, True, False, 'xla'), ('cpu', jnp.bfloat16, True, True, 'xla'),
])
def test_auto_picks_the_fastest_measured_where_it_applies(monkeypatch, platform, dtype, flash_ok,
                                                          cudnn_ok, want):
  """GPU: cuDNN, then the Pallas kernel (the H200's order); TPU: the Pallas kernel."""
  monkeypatch.setattr(jax, 'default_backend', lambda: platform)
  assert attention.resolve_impl('auto', dtype, flash_ok=flash_ok, cudnn_ok=cudnn_ok) == want


# --- On the hardware (skipped elsewhere). ---

def _compiled_equals_reference(backend):
  for causal, mask, dtype in ((True, None, jnp.bfloat16), (False, 'padding', jnp.float16),
                              (True, 'segments', jnp.float32)):
    q, k, v, cotangent = _inputs(2, 1000, 1000, 4, 2, 128, dtype)
    kwargs = dict(causal=causal, **_masks(mask, 2, 1000, 1000))
    flash = functools.partial(fa.flash_attention, backend=backend, **kwargs)
    got = jax.jit(functools.partial(_value_and_grads, flash))(q, k, v, cotangent)
    want = jax.jit(functools.partial(_value_and_grads, functools.partial(
        fa.reference_attention, **kwargs)))(q, k, v, cotangent)
    _assert_close(got, want, dtype, f'{backend} {causal} {mask}')


@pytest.mark.gpu
@ON_GPU
def test_triton_kernels_on_a_gpu_equal_the_reference():
  _compiled_equals_reference('triton')


@pytest.mark.tpu
@ON_TPU
def test_mosaic_kernels_on_a_tpu_equal_the_reference():
  _compiled_equals_reference('tpu')
