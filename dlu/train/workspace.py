"""The workdir: what a run keeps there beside its checkpoints, and the chores around it.

- One run per workdir: an exclusive lock held by process 0 for the whole run (`WorkdirLock`).
- Checks before anything is written (`check_workdir`, `check_writable`).
- flags.txt, the flagfile of the run, with the history of flags changed on resume
  (`write_flags`, `differing_flags`); preprocessing.json, a table's fitted preprocessing;
  data_fingerprint.json, the table it trained on (`check_data_fingerprint`);
  embeddings_test.npz; the summary of where the results are.

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
from typing import Any

import numpy as np
from absl import flags as absl_flags

from dlu import config, files
from dlu.errors import UsageError
from dlu.runtime import metric_writers, parallel

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


# --- Checks before anything is written.


def check_workdir(workdir: str) -> None:
  """UsageError when what the workdir already holds cannot be resumed or written to: a
  file where a folder belongs, an unreadable flags.txt or metrics.jsonl."""
  if not os.path.isdir(workdir):
    if os.path.lexists(workdir):
      raise UsageError(f"--workdir={workdir} is a file; expected a folder")
    return
  for name in ("checkpoints", "images"):
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise UsageError(f"{path} is not a folder; move it aside (a run writes its {name} there)")
  flags_path = os.path.join(workdir, FLAGS_FILE)
  if os.path.lexists(flags_path):
    if not os.path.isfile(flags_path):
      raise UsageError(f"{flags_path} is not a file; expected the flags.txt of a dlu run")
    config.config_from_flagfile(flags_path)
  metric_writers.check_jsonl(os.path.join(workdir, "metrics.jsonl"))


def check_writable(workdir: str) -> bool:
  """Fail before training if results could not be written there; True when the workdir
  was created here (so a refusal can remove it again)."""
  created = not os.path.lexists(workdir)
  probe = os.path.join(workdir, f".write_test_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("x" * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    if created:
      remove_if_empty(workdir)
    raise UsageError(f"--workdir={workdir} is not writable: {e.strerror or e}") from None
  return created


def remove_if_empty(workdir: str) -> None:
  try:
    os.rmdir(workdir)
  except OSError:
    pass


# --- flags.txt: the flagfile of the run, and what changed on resume.

FLAGS_FILE = "flags.txt"

# Flags that change how a run is driven or logged, not what its state holds (and every flag
# of the evaluators).
RUN_FLAGS = frozenset(
  {
    "num_steps",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "workdir",
    "keep_checkpoints",
    "eval_batch_size",
    "num_images",
    "parallelism",
    "debug_nans",
    "data_dir",
    "idx_dir",
    "steps_per_dispatch",
    "profile_steps",
    "allow_flag_changes",
    "resume_from",
    "input_pipeline",
    "data_workers",
    "early_stopping_metric",
    "early_stopping_patience",
    "early_stopping_min_delta",
    "keep_best_checkpoint",
    "checkpoint",
  }
)


def _state_flag(name: str) -> bool:
  if name in RUN_FLAGS:
    return False
  defined_in = getattr(absl_flags.FLAGS.find_module_defining_flag(name), "startswith", None)
  return not (defined_in and defined_in("dlu.evaluators"))


def differing_flags(workdir: str, cfg: config.Config) -> list[tuple[str, Any, Any]]:
  """(name, recorded, now) of each run-defining flag that differs from the workdir's
  flags.txt (none when it has none)."""
  path = os.path.join(workdir, FLAGS_FILE)
  if not os.path.lexists(path):
    return []
  old = config.config_from_flagfile(path)
  return [
    (k, getattr(old, k), v)
    for k, v in sorted(vars(cfg).items())
    if _state_flag(k) and getattr(old, k, v) != v and not _same_choice(k, getattr(old, k), v)
  ]


def _same_choice(name: str, old: Any, new: Any) -> bool:
  """A value that resolves as the recorded one did: --impute=auto is none where the run's table
  had no missing cell (runs recorded before auto, the default, was added), and the run's stored
  preprocessing.json fixes imputation on resume either way."""
  return name == "impute" and new == "auto" and old == "none"


def listed(differing: list[tuple[str, Any, Any]]) -> str:
  """`differing_flags` as the text of an error message."""
  return ", ".join(f"--{k} (checkpoint {old!r}, now {new!r})" for k, old, new in differing)


def write_flags(workdir: str, cfg: config.Config, step: int) -> None:
  """flags.txt: the flagfile of this run. Flags changed on resume (--allow_flag_changes) are
  kept above it as comments, the history of what the checkpoints were trained with."""
  path = os.path.join(workdir, FLAGS_FILE)
  history = []
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      history = [line for line in f.read().splitlines() if line.startswith("# ")]
    history += [
      f"# from step {step}: --{k}={v!r} (was {old!r})"
      for k, old, v in differing_flags(workdir, cfg)
    ]
  with files.atomic_write(path) as f:
    f.write("".join(line + "\n" for line in history) + cfg.to_flagfile())


# --- The run's other files.

#: A run's table preprocessing (columns, imputation, scaling statistics of its training split).
PREPROCESSING_FILE = "preprocessing.json"
EMBEDDINGS_FILE = "embeddings_test.npz"


def save_preprocessing(workdir: str, preprocessing: Any) -> None:
  """The table preprocessing beside the checkpoints (lead process; nothing for images)."""
  if preprocessing is not None and parallel.is_lead_process():
    name = getattr(preprocessing, "FILE_NAME", PREPROCESSING_FILE)  # series: series.json
    preprocessing.save(os.path.join(workdir, name))


#: A table's fingerprint (dlu.data.fingerprints) as the run first trained on it.
DATA_FINGERPRINT_FILE = "data_fingerprint.json"


def save_data_fingerprint(workdir: str, dataset: Any, *, replace: bool) -> None:
  """The table's fingerprint beside the checkpoints: when `replace` (a fresh start, or a run
  continued on another table on purpose) or when the run has none yet (lead process; nothing
  for images)."""
  path = os.path.join(workdir, DATA_FINGERPRINT_FILE)
  if dataset.fingerprint is None or not parallel.is_lead_process():
    return
  if replace or not os.path.isfile(path):
    files.write_json(path, {"dataset": dataset.name, **dataset.fingerprint})


def check_data_fingerprint(workdir: str, dataset: Any, *, hint: str = "") -> None:
  """UsageError when the table differs from the one the run in `workdir` trained on (its
  splits and statistics were made from that one); a warning when the run recorded none.
  `hint`: another way out, said in the message."""
  path = os.path.join(workdir, DATA_FINGERPRINT_FILE)
  now = dataset.fingerprint
  if now is None:
    return
  if not os.path.isfile(path):
    if os.path.isfile(os.path.join(workdir, PREPROCESSING_FILE)):
      print(
        f"warning: {workdir} records no fingerprint of its table (it predates them): "
        f"{dataset.name} is not checked against the table it trained on",
        flush=True,
      )
    return
  try:
    with open(path, encoding="utf-8") as f:
      then = json.load(f)
    if not isinstance(then, dict) or not isinstance(then.get("columns", []), list):
      raise ValueError("not a table fingerprint")
  except (OSError, ValueError) as e:
    raise UsageError(f"{path}: unreadable ({e}); move it aside to skip the check") from None
  if then.get("fingerprint") == now["fingerprint"]:
    return
  added = sorted(set(now["columns"]) - set(then.get("columns", [])))
  removed = sorted(set(then.get("columns", [])) - set(now["columns"]))
  changes = [
    f"column{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))} {how}"
    for names, how in ((added, "added"), (removed, "removed"))
    if names
  ]
  if then.get("rows") != now["rows"]:
    changes.append(f"{then.get('rows')} rows then, {now['rows']} now")
  if not changes:
    changes.append(f"cells changed in its {now['rows']} rows")
  raise UsageError(
    f"--dataset={dataset.name}: the table differs from the one {workdir} trained on "
    f"({'; '.join(changes)}); its splits and statistics came from that one: restore it, "
    f"{hint}or train on this one in another --workdir"
  )


def write_embeddings(path: str, embeddings: np.ndarray, labels: np.ndarray | None) -> None:
  """`embeddings` and `labels` (-1 when the data has none) to an npz at `path` (lead
  process)."""
  if parallel.is_lead_process():
    if labels is None:
      labels = np.full(len(embeddings), -1, np.int32)
    files.atomic_save(
      path, lambda tmp: np.savez(tmp, embeddings=embeddings, labels=labels), suffix=".npz"
    )


def print_summary(workdir: str) -> None:
  w = os.path.abspath(workdir)
  print(
    f"\nResults in {w}:\n"
    f"  checkpoints:  {w}/checkpoints\n"
    f"  metrics:      {w}/metrics.jsonl\n"
    f"  images:       {w}/images\n"
    f"  embeddings:   {w}/{EMBEDDINGS_FILE}\n"
    f"  flags:        {w}/{FLAGS_FILE}\n"
    f"  TensorBoard:  tensorboard --logdir {w}",
    flush=True,
  )
