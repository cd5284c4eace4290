"""JAX's persistent compilation cache, on by default for every entry point.

A run's programs (the train step, the evaluators' functions) are compiled once per machine and
config; later starts of the same config (a resume, an evaluate, a sweep's next seed) load them
from `--compilation_cache_dir` instead of compiling again. The cache is keyed by the program,
the devices and the JAX version, so a stale entry is never used.
"""

from __future__ import annotations

import os

from absl import flags

from dlu.errors import UsageError

#: Every program is kept, however fast it compiled, so what the cache holds does not depend on
#: the machine's speed (a run's programs are a few hundred KB).
MIN_COMPILE_SECONDS = 0.0


def default_dir() -> str:
  """$DLU_CACHE_DIR/jax_compilation_cache, else the user's cache directory's dlu/ folder."""
  root = os.environ.get("DLU_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dlu"
  )
  return os.path.join(root, "jax_compilation_cache")


flags.DEFINE_string(
  "compilation_cache_dir",
  None,
  "Where JAX keeps compiled programs between runs, so that a second start of the same config "
  "does not compile again. Default: $DLU_CACHE_DIR, else ~/.cache/dlu (or $XDG_CACHE_HOME/dlu), "
  "/jax_compilation_cache; 'none' turns the cache off.",
)


def enable(directory: str | None) -> str | None:
  """Turns the cache on in `directory` (None: `default_dir()`; 'none': off); returns the
  directory used. UsageError when it cannot be created."""
  if directory is not None and directory.lower() == "none":
    return None
  directory = directory or default_dir()
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UsageError(
      f"--compilation_cache_dir={directory} cannot be created: {e.strerror or e}"
    ) from None
  import jax  # noqa: PLC0415  (only when an entry point starts)

  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
