"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import sys


def exit_with_parent(parent: int) -> None:
  """Makes this worker end when the process `parent` does, even by kill -9: no orphans.

  Call it first thing in a worker (Linux; elsewhere a no-op).
  """
  if not sys.platform.startswith("linux"):
    return
  import ctypes  # noqa: PLC0415  (Linux only)

  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:  # it ended before the call
    os._exit(1)


def init_input_worker(worker_index: int, worker_count: int, *, parent: int) -> None:
  """Grain's worker_init_fn for input workers (functools.partial(..., parent=os.getpid()))."""
  del worker_index, worker_count
  exit_with_parent(parent)
