"""One run per workdir: an exclusive lock held by process 0 for the whole run.

The lock is `WORKDIR/.lock`, locked with `flock` (the kernel releases it when the process
ends, however it ends) and holding its holder's host, pid and start time, so a refused run
can name it. A lock file left by a crashed run is not locked by anyone: it is stale, and
the next run takes it over and says so. The file is removed when the run ends. Where
the filesystem has no `flock`, the recorded pid decides on the same host.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from dlu.errors import UsageError

LOCK_FILE = ".lock"


def _describe(holder: dict) -> str:
  return (
    f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
    f"started {holder.get('started', '?')}"
  )


def _read_holder(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    holder = json.loads(os.read(fd, 4096).decode("utf-8"))
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}


def _alive(holder: dict) -> bool:
  """Whether the process `holder` names may still run (unknown hosts are assumed alive)."""
  if not holder:
    return False
  if holder.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, ValueError, TypeError):
    return True
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir):` the body runs with the workdir to itself, or UsageError
  naming the run that holds it. `enabled=False` (processes other than the lead) does nothing."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self.stale: dict | None = None
    self._fd: int | None = None

  def acquire(self) -> None:
    if not self.enabled:
      return
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise UsageError(f"cannot create the lock {self.path}: {e.strerror or e}") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = _read_holder(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES) and not _alive(holder):
          break  # No flock on this filesystem: the holder's pid on this host decides.
        os.close(fd)
        raise UsageError(
          f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}); "
          "wait for it to end or use another --workdir"
        ) from None
      # The holder before us may have removed the file between our open and our lock.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = _read_holder(fd)
    if previous:
      self.stale = previous
    record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    self._fd = fd

  def stale_note(self) -> str | None:
    """What the stale lock said, when this run took one over from a run that crashed."""
    if self.stale is None:
      return None
    return f"took over the stale lock {self.path} of a run that ended ({_describe(self.stale)})"

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    try:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
    self._fd = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
