"""Files a run owns: read with one-line errors, written atomically: a reader (another process, a rerun after a kill) sees
the old file or the whole new one, never half of one.

    with files.atomic_write(path) as f:        # text; mode="wb" for bytes
      json.dump(results, f)
    files.atomic_save(path, lambda tmp: np.savez(tmp, x=x))   # a writer that takes a path

The temporary file sits beside the target (same file system, so `os.replace` is atomic), is
named for this process (two writers never share one), and is removed if the write fails.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from dlu.errors import UsageError


def temporary_path(path: str, suffix: str = "") -> str:
  """Where `path` is written before it is moved into place; `suffix` keeps an extension a
  writer insists on (np.savez appends .npz to names without it)."""
  return f"{path}.tmp{os.getpid()}{suffix}"


def atomic_save(path: str, write: Callable[[str], Any], *, suffix: str = "") -> None:
  """Calls `write(tmp)` to write the whole file at a temporary path, then moves it to `path`."""
  tmp = temporary_path(path, suffix)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):  # only after a failure
      os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
  """An open file whose contents replace `path` when the block ends without an error."""
  if "b" not in mode:
    open_kwargs.setdefault("encoding", "utf-8")
  tmp = temporary_path(path)
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
  """`obj` as JSON at `path`, atomically (indent 2 and sorted keys unless told otherwise)."""
  dump_kwargs.setdefault("indent", 2)
  dump_kwargs.setdefault("sort_keys", True)
  with atomic_write(path) as f:
    json.dump(obj, f, **dump_kwargs)


def read_text(path: str, expected: str) -> str:
  """The UTF-8 text of `path`; UsageError naming the file and what was `expected` (e.g. "the
  flags.txt of a dlu run") when it cannot be read or is not UTF-8."""
  try:
    with open(path, "rb") as f:
      return f.read().decode("utf-8")
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
  except UnicodeDecodeError as e:
    raise UsageError(f"{path} is not UTF-8 text (byte {e.start}): expected {expected}") from None


# What a spreadsheet reads as a formula when a cell starts with it (OWASP's CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
  """A string cell that a spreadsheet would run as a formula, quoted with a leading '; other
  strings, and numbers, unchanged (a negative number is no formula)."""
  if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
    return value
  try:
    float(value)
    return value
  except ValueError:
    return "'" + value
