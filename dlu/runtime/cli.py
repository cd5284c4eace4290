"""How every absl entry point runs: flag errors and stray arguments exit 2, a UsageError
exits 2 and a RunFailure 1, each as one line `error: ...` (the traceback and library
warnings with --verbose); JAX's persistent compilation cache is turned on
(`--compilation_cache_dir`).

    if __name__ == "__main__":
      cli.run(main)
"""

from __future__ import annotations

import logging as std_logging
import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging

from dlu.errors import RunFailure, UsageError
from dlu.runtime import compilation_cache

flags.DEFINE_bool(
  "verbose", False, "Print the traceback of a refusal or failure, not only its one-line message."
)


def _fail(message: str, status: int) -> None:
  if flags.FLAGS.is_parsed() and flags.FLAGS.verbose:
    traceback.print_exc()
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parse, with its errors (an unknown or misspelt flag, a bad value, a stray
  argument) as one line and exit status 2."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if len(rest) > 1:
    print(f"error: unexpected arguments: {' '.join(rest[1:])}", file=sys.stderr, flush=True)
    sys.exit(2)
  return rest


# What Orbax's reads still in flight report after a failed restore has closed their event
# loop, or after the interpreter began to shut down: echoes of an error already reported.
_ECHOES = (
  (RuntimeError, "Event loop is closed"),
  (ImportError, "sys.meta_path is None"),
)


def _is_echo(value: BaseException | None) -> bool:
  return any(isinstance(value, k) and text in str(value) for k, text in _ECHOES)


def _without_echoes(hook: Callable) -> Callable:
  def unraisablehook(unraisable):
    if not _is_echo(unraisable.exc_value):
      hook(unraisable)

  return unraisablehook


def start(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  verbose = flags.FLAGS.verbose
  if not flags.FLAGS["verbosity"].present:
    # Library logs (Orbax's, JAX's) stay off the console; --verbose shows their warnings.
    logging.set_verbosity(logging.WARNING if verbose else logging.FATAL)
  if not verbose:
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    sys.unraisablehook = _without_echoes(sys.unraisablehook)
  compilation_cache.enable(flags.FLAGS.compilation_cache_dir)


def guarded(main: Callable[[list[str]], None], argv: list[str]) -> None:
  """Runs `main(argv)`, turning refusals and failures into one line and an exit status."""
  try:
    start(argv)
    main(argv)
  except UsageError as e:
    _fail(str(e), 2)
  except RunFailure as e:
    _fail(str(e), 1)
  except OSError as e:  # A file the run writes (disk full, permissions): not a bug.
    _fail(f"{e.filename}: {e.strerror or e}" if e.filename else str(e), 1)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with `guarded` and `parse_flags`."""
  app.run(lambda argv: guarded(main, argv), flags_parser=parse_flags)
