"""`hf_text`: language-model text from a local Hugging Face dataset (the `datasets` library).

`dataset.path` is a directory written by `save_to_disk`, a local dataset directory (its parquet,
arrow or JSON-lines files, split by file name as the library infers it, e.g. a snapshot in the
Hugging Face hub cache), or data files (a file or a glob, one split: 'train'). Documents of the
`text_field` column are joined with `separator` into one text per split, which `text.py` tokenizes
and caches like any other corpus. Nothing is downloaded: the library runs in offline mode and only
ever gets local paths.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import pathlib
from typing import Any, Iterator

import ml_collections

from dl10_jax import runtime
from dl10_jax.errors import ConfigError, DataError

FORMATS = {'.parquet': 'parquet', '.arrow': 'arrow', '.jsonl': 'json', '.json': 'json',
           '.jsonl.gz': 'json', '.json.gz': 'json'}
_PIP = 'pip install datasets==5.2.0'
_BATCH = 1024  # Documents read per batch: the column is never read whole into Python strings.


def _files(path: str) -> list[pathlib.Path]:
  """The files `path` names (a file, a directory's files, or a glob's matches); [] if none."""
  p = pathlib.Path(path)
  if p.is_dir():
    return sorted(f for f in p.rglob('*') if f.is_file() and not f.name.startswith('.'))
  if p.is_file():
    return [p]
  return sorted(pathlib.Path(f) for f in glob.glob(path, recursive=True) if os.path.isfile(f))


def _checked_files(config: ml_collections.ConfigDict) -> list[pathlib.Path]:
  if not config.path:
    raise ConfigError('dataset.path is empty; hf_text needs a local dataset: a save_to_disk '
                      'directory, a dataset directory, or parquet / arrow / jsonl files (a glob)')
  files = _files(config.path)
  if not files:
    raise DataError(f'dataset.path={config.path!r} does not exist or names no files; '
                    'hf_text reads only local datasets')
  return files


def corpus_key(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the prepared text depends on: the files' names, sizes and times, and the fields that
  select and join documents (cheap: a cached run never imports `datasets`)."""
  digest = hashlib.sha256()
  for f in _checked_files(config):
    stat = f.stat()
    digest.update(f'{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  fields = ('train_split', 'eval_split', 'eval_holdout', 'text_field', 'separator',
            'max_documents', 'max_chars')
  return {'files': digest.hexdigest(), **{k: config.get(k) for k in fields}}


def _import_datasets() -> Any:
  # Set before the library's first import, which reads them: nothing may reach the network.
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
  try:
    import datasets
  except ImportError:
    raise DataError(f'dataset.name=hf_text needs the Python package datasets: {_PIP}') from None
  datasets.disable_progress_bars()
  return datasets


def _open(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{split name: datasets.Dataset} of the local dataset at `config.path`."""
  datasets = _import_datasets()
  files, path = _checked_files(config), config.path
  cache = str(runtime.cache_root(config.get('cache_dir', '')) / 'huggingface')
  try:
    if any(os.path.isfile(os.path.join(path, n)) for n in ('dataset_dict.json', 'state.json')):
      loaded = datasets.load_from_disk(path)
    elif os.path.isdir(path):
      loaded = datasets.load_dataset(path, cache_dir=cache)
    else:
      kinds = {FORMATS.get(''.join(f.suffixes[-2:])) or FORMATS.get(f.suffix) for f in files}
      if None in kinds or len(kinds) > 1:
        raise ConfigError(f'dataset.path={path!r} must name files of one format; allowed: '
                          f'{", ".join(FORMATS)}')
      loaded = datasets.load_dataset(kinds.pop(), data_files=path, cache_dir=cache)
  except (ConfigError, DataError):
    raise
  except Exception as e:  # Corrupt or unrecognised files: the library's error kinds vary.
    raise DataError(f'cannot read dataset.path={path!r} with datasets: {type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""}') from None
  return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {'train': loaded}


def _split(config: ml_collections.ConfigDict, splits: dict[str, Any], field: str) -> Any:
  name = config[field]
  if name not in splits:
    hint = "; or dataset.eval_split='' to hold out training documents" if field == 'eval_split' \
        else ''
    raise DataError(f'dataset.{field}={name!r} is not a split of {config.path}; available: '
                    f'{", ".join(sorted(splits))}{hint}')
  split, text_field = splits[name], config.text_field
  if text_field not in split.column_names:
    raise DataError(f'dataset.text_field={text_field!r} is not a column of {config.path} '
                    f'({name}); columns: {", ".join(split.column_names)}')
  dtype = getattr(split.features[text_field], 'dtype', None)
  if dtype not in ('string', 'large_string'):
    raise DataError(f'dataset.text_field={text_field!r} of {config.path} holds {dtype or "lists"}, '
                    'not strings; choose a text column')
  return split


def _documents(split: Any, config: ml_collections.ConfigDict) -> Iterator[str]:
  """The split's non-empty documents in order, up to `max_documents` and `max_chars` (> 0)."""
  max_docs, max_chars = config.get('max_documents', -1), config.get('max_chars', -1)
  docs = chars = 0
  for batch in split.select_columns([config.text_field]).iter(batch_size=_BATCH):
    for doc in batch[config.text_field]:
      if not doc:
        continue
      if 0 < max_docs <= docs or 0 < max_chars <= chars:
        return
      if max_chars > 0:
        doc = doc[:max_chars - chars]
      docs, chars = docs + 1, chars + len(doc)
      yield doc


def _separator(config: ml_collections.ConfigDict) -> str:
  """`separator`, whose escapes (`\\n` from a command line) become the characters they name."""
  sep = config.get('separator', '\n\n')
  return codecs.decode(sep, 'unicode_escape') if '\\' in sep else sep


def _holdout(docs: list[str], holdout: float, path: str) -> int:
  """How many of the last training documents are held out for eval."""
  n = int(holdout) if holdout >= 1 else round(len(docs) * holdout)
  if holdout <= 0 or not 1 <= n < len(docs):
    raise ConfigError(f'dataset.eval_holdout={holdout} leaves no eval or no training documents '
                      f'of the {len(docs)} in {path}; use a fraction in (0, 1) or a count of '
                      'documents (>= 1) smaller than that')
  return n


def texts(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(train text, eval text): the documents of each split, joined by the separator."""
  splits = _open(config)
  train = _split(config, splits, 'train_split')
  sep = _separator(config)
  if config.eval_split:
    valid = _split(config, splits, 'eval_split')
    return sep.join(_documents(train, config)), sep.join(_documents(valid, config))
  docs = list(_documents(train, config))
  n = _holdout(docs, config.get('eval_holdout', 0.05), config.path)
  return sep.join(docs[:-n]), sep.join(docs[-n:])
