"""How this process runs XLA: default XLA:CPU flags, the allocator check, the compilation cache.

Nothing here imports JAX at module level: `dl10_jax/__init__.py` calls `set_default_xla_flags()`
on import, and XLA reads XLA_FLAGS once, when JAX creates its first backend.
"""

from __future__ import annotations

import functools
import glob
import os
import pathlib

from absl import logging

from dl10_jax.errors import ConfigError

# XLA:CPU flags to add by default: those that made training steps faster on this project's CPUs
# without making any family slower. None has yet: on a quiet 2-core Xeon, XNNPACK graph fusion
# and oneDNN fusions (the candidates jax 0.12 offers) were within noise of no flags for all nine
# benchmark configs (experiments/xla_flags), and oneDNN's fusion thunks abort the process when an
# executable is freed while its pool is in use (object_pool.h check). A flag the user already put
# in XLA_FLAGS keeps the user's value; DL10_DEFAULT_XLA_FLAGS=0 leaves XLA_FLAGS exactly as given.
DEFAULT_XLA_CPU_FLAGS: dict[str, str] = {}

# Debian/Ubuntu's libtcmalloc-minimal4. XLA:CPU allocates and frees its buffers every step;
# glibc's malloc hands large ones back to the kernel each time (page faults, system time), tcmalloc
# keeps them.
TCMALLOC_GLOBS = ('/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4',
                  '/usr/lib/libtcmalloc_minimal.so.4', '/usr/lib64/libtcmalloc_minimal.so.4')


def set_default_xla_flags(environ: os._Environ | dict[str, str] = os.environ) -> None:
  """Appends the DEFAULT_XLA_CPU_FLAGS the user has not set to XLA_FLAGS."""
  if environ.get('DL10_DEFAULT_XLA_FLAGS', '1') == '0':
    return
  given = environ.get('XLA_FLAGS', '')
  names = {flag.lstrip('-').split('=', 1)[0] for flag in given.split()}
  extra = [f'--{name}={value}' for name, value in DEFAULT_XLA_CPU_FLAGS.items()
           if name not in names]
  if extra:
    environ['XLA_FLAGS'] = ' '.join([given, *extra]).strip()


def use_cpu_devices(count: int, environ: os._Environ | dict[str, str] = os.environ) -> bool:
  """Splits the CPU into `count` JAX devices; returns whether this call set the count.

  XLA:CPU runs a program's operations one after another, and most elementwise loops and small
  matmuls on one thread. With the batch split over two devices (the `data` mesh axis), two
  programs run at once and keep both cores of a 2-core machine busy. There the recurrent models
  train 1.2-1.4x faster and ResNet-20 and the DDPM U-Net ~1.15x, while GPT gains nothing and the
  DCGAN, MobileNetV1 and the CNN lose (experiments/benchmarks.md), so each config chooses; 0
  keeps JAX's default. The user's own --xla_force_host_platform_device_count or
  JAX_NUM_CPU_DEVICES wins, and so does a process whose backends exist already (JAX fixes the
  count when it creates them).
  """
  if count < 0:
    raise ConfigError(f'cpu_devices={count!r} must be >= 0 (0: JAX\'s default, one CPU device)')
  if not count or 'JAX_NUM_CPU_DEVICES' in environ or \
      'xla_force_host_platform_device_count' in environ.get('XLA_FLAGS', ''):
    return False
  import jax
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # Backends already created: this process keeps its devices.
    log_once(f'cpu_devices={count} ignored: JAX made its CPU devices before the config was read')
    return False
  log_once(f'cpu_devices={count}: the CPU runs as {count} JAX devices, each with a share of '
           'every batch')
  return True


def allocator() -> str:
  """The malloc this process runs with: tcmalloc, jemalloc, mimalloc, glibc, or unknown."""
  try:
    maps = pathlib.Path('/proc/self/maps').read_text()
  except OSError:  # Not Linux.
    return 'unknown'
  return next((name for name in ('tcmalloc', 'jemalloc', 'mimalloc') if f'lib{name}' in maps),
              'glibc')


def tcmalloc_path() -> str | None:
  """The installed libtcmalloc_minimal, if any."""
  return next((path for pattern in TCMALLOC_GLOBS for path in sorted(glob.glob(pattern))), None)


def allocator_advice() -> str | None:
  """One line on how to run with tcmalloc, where this process runs with glibc's malloc."""
  if allocator() != 'glibc':
    return None
  path = tcmalloc_path()
  how = (f'LD_PRELOAD={path} python -m ...' if path else
         'apt-get install libtcmalloc-minimal4, then LD_PRELOAD=<its libtcmalloc_minimal.so.4>')
  return (f'running with glibc malloc: XLA:CPU trains ~1.3x faster with tcmalloc ({how}; '
          '`make run` does this)')


@functools.lru_cache(maxsize=None)
def log_once(message: str) -> None:
  """Logs `message` (INFO) the first time this process asks: a choice made on every trace (which
  implementation runs a shape) is worth one line, not one per call."""
  logging.info('%s', message)


def cache_root(configured: str = '') -> pathlib.Path:
  """The project's cache directory: `configured` (a config's cache_dir), $DL10_CACHE_DIR, else
  $XDG_CACHE_HOME/dl10_jax or ~/.cache/dl10_jax (data under a read-only data dir cannot hold
  derived files)."""
  if configured:
    return pathlib.Path(configured)
  if os.environ.get('DL10_CACHE_DIR'):
    return pathlib.Path(os.environ['DL10_CACHE_DIR'])
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'dl10_jax'


def compilation_cache_dir(configured: str = '') -> pathlib.Path | None:
  """Where compiled programs persist, or None (off). The first that is set decides: the config's
  `compilation_cache_dir`, $DL10_COMPILATION_CACHE, then <cache_root>/xla; 'off' in either of the
  first two disables the cache."""
  choice = configured or os.environ.get('DL10_COMPILATION_CACHE', '')
  if choice.lower() in ('off', 'none', '0', 'false'):
    return None
  return pathlib.Path(choice).expanduser() if choice else cache_root() / 'xla'


def enable_compilation_cache(configured: str = '') -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache (see compilation_cache_dir) for this process.

  A second process (a resume, a sweep point, a sample, a test) then loads the compiled steps from
  disk instead of compiling them again. JAX_COMPILATION_CACHE_DIR, JAX's own setting, wins. Every
  compile is kept (JAX's default keeps only those over 1 s) unless the user's environment says
  otherwise. The cache is not bounded: JAX's bound (jax_compilation_cache_max_size) rescans the
  whole directory under a file lock at every read and write, and CPU programs are small (~10 KB
  each; delete the directory to reclaim it). Takes effect before this process's first compile.
  """
  import jax
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return pathlib.Path(os.environ['JAX_COMPILATION_CACHE_DIR'])
  directory = compilation_cache_dir(configured)
  if directory is None:
    return None
  jax.config.update('jax_compilation_cache_dir', str(directory))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return directory


@functools.cache
def log_allocator_advice_once() -> None:
  """Logs allocator_advice() once per process, on the CPU backend (where it matters)."""
  import jax
  advice = allocator_advice() if jax.default_backend() == 'cpu' else None
  if advice:
    from absl import logging
    logging.warning(advice)
