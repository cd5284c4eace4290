"""Writing a records directory: shards in parallel, resumable, with a progress line.

A preparation first writes OUT/prepare.json (its plan: the source, its fingerprint, the shards
and their rows). Every shard is written under a temporary name beside it (dlu.files),
renamed when complete, and then gets SHARD.done (its rows and the rows skipped), so a rerun of
the same plan keeps the finished shards and writes only the others. dataset.json comes last
(`records.write_meta`); then the bookkeeping files go.

Shards are jobs: `Job.write(path)` writes one shard (with `write_shard`, which counts rows for
the progress line) and returns the rows it skipped. Jobs run in worker processes (they must
pickle: a top-level function with its arguments) or, for data already in memory, in threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from dlu import files
from dlu.data import processes, records
from dlu.errors import UsageError

PLAN_FILE = "prepare.json"
DONE_SUFFIX = ".done"
SHARD_BYTES = 128 << 20  # default shard size
_COUNT_EVERY = 64  # rows a worker writes between updates of the shared counter
_counter: Any = None  # rows handled (written or skipped) in this run, shared with the workers


@dataclasses.dataclass(frozen=True)
class Job:
  """One shard: its file name in OUT, the source rows it covers, and how to write it.

  write(path) writes rows `start`..`stop` of the source to `path` and returns the rows it
  skipped, as [index, file, reason] lists (empty unless bad rows are skipped).
  """

  name: str
  start: int
  stop: int
  write: Callable[[str], list]


def default_workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def num_shards(num_rows: int, row_bytes: int, *, at_least: int = 1) -> int:
  """Shards of about SHARD_BYTES each, at least `at_least` (and at most one per row)."""
  count = max(math.ceil(num_rows * row_bytes / SHARD_BYTES), at_least, 1)
  return max(1, min(count, num_rows))


def jobs_for(
  split: str, num_rows: int, shards: int, make: Callable[[int, int], Callable[[str], list]]
) -> list[Job]:
  """`shards` jobs over rows 0..num_rows of `split`, as even as can be; make(start, stop)
  gives each its writer."""
  bounds = np.linspace(0, num_rows, shards + 1).astype(int).tolist()
  return [
    Job(records.shard_name(split, i, shards), bounds[i], bounds[i + 1], make(*bounds[i : i + 2]))
    for i in range(shards)
  ]


def write_shard(path: str, rows: Iterable[np.ndarray]) -> int:
  """`records.write_shard`, counting rows for the progress line."""
  return records.write_shard(path, _counted(rows))


def skipped_row() -> None:
  """Counts a row that a job skipped, for the progress line."""
  _advance(1)


# --- The state of OUT, read before anything is written there.


def read_plan(out: str) -> dict | None:
  """The plan of an unfinished preparation in `out`, or None."""
  path = os.path.join(out, PLAN_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"{path} is not a readable preparation plan ({e}); remove {out}") from e


def finished(
  out: str,
  source: str,
  label_column: str | None,
  what: str,
  *,
  fingerprint: str = "",
  source_files: int | None = None,
) -> records.Meta | None:
  """The Meta of `out` when it holds the finished records of `source` (with these labels);
  None when it holds none; a UsageError when they are another dataset's, or were prepared from
  other contents of it (`fingerprint`: what its files are now, compared when both are known).
  Writes nothing."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out={out} is a file; expected a directory for the records")
  if not os.path.isfile(os.path.join(out, records.META_FILE)):
    return None
  meta = records.Meta.load(out)
  if (meta.source, meta.label_column) != (source, label_column):
    raise UsageError(
      f"--out={out} holds the records of another dataset ({meta.source or 'unnamed'}"
      f"{_labelled(meta.label_column)}), not of {what}{_labelled(label_column)}; "
      "choose another --out"
    )
  if fingerprint and meta.fingerprint and fingerprint != meta.fingerprint:
    then, now = meta.source_files, source_files
    if then is not None and now is not None and then != now:
      change = f"{then:,} files then, {now:,} now"
    elif max(then or 0, now or 0) > 1:
      change = "files changed in size or modification time"
    else:
      change = "the file changed in size or modification time"
    raise UsageError(
      f"--out={out} holds records of {source} prepared from other contents ({change}); "
      "remove it or choose another --out to prepare them again"
    )
  return meta


def check_out(out: str, plan: dict) -> str:
  """ "resume" (`out` holds an unfinished preparation of this plan) or "new" (`out` is absent
  or empty); else a UsageError. Writes nothing."""
  if not os.path.isdir(out):
    return "new"
  stored = read_plan(out)
  if stored is not None:
    for key in plan:
      if stored.get(key) != plan[key]:
        hint = (
          "the source changed since"
          if key == "fingerprint"
          else f"its {key} was {stored.get(key)}, now {plan[key]}; rerun with the flags of"
        )
        raise UsageError(
          f"--out={out} holds an unfinished preparation of {stored.get('source')} that this "
          f"one cannot resume ({hint} it began); remove {out} or choose another --out"
        )
    return "resume"
  if any(not e.startswith(".") for e in os.listdir(out)):
    raise UsageError(
      f"--out={out} is not empty and holds no records; choose a new or empty directory"
    )
  return "new"


def _labelled(label_column: str | None) -> str:
  return f", labels {label_column!r}" if label_column else ""


# --- Writing.


def begin(out: str, plan: dict) -> None:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, PLAN_FILE)
  files.write_json(path, plan, sort_keys=False)


def run(
  out: str, jobs: list[Job], *, workers: int, processes: bool, label: str = "prepare"
) -> dict[str, list]:
  """Writes the shards not finished before; {shard name: rows skipped} for every job.

  With `processes` (and workers > 1) jobs run in `workers` spawned processes, else in threads.
  On an error the jobs not started are cancelled, those running finish (their shards count as
  done on a rerun), and the error of the first failing shard is raised.
  """
  global _counter
  results, todo = {}, []
  for job in jobs:
    done = _read_done(out, job.name)
    if done is None:
      todo.append(job)
    else:
      results[job.name] = done
  total = sum(j.stop - j.start for j in jobs)
  progress = _Progress(label, total, total - sum(j.stop - j.start for j in todo))
  context = multiprocessing.get_context("spawn")
  _counter = context.Value("q", 0)
  if processes and workers > 1:
    pool = cf.ProcessPoolExecutor(
      min(workers, len(todo)) or 1,
      mp_context=context,
      initializer=_start_worker,
      initargs=(_counter, os.getpid()),
    )
  else:
    pool = cf.ThreadPoolExecutor(max(1, min(workers, len(todo))))
  order = {job.name: k for k, job in enumerate(jobs)}
  errors = {}
  try:
    futures = {pool.submit(job.write, os.path.join(out, job.name)): job for job in todo}
    pending = set(futures)
    while pending:
      finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
      for future in finished:
        job = futures[future]
        if future.cancelled():
          continue
        error = future.exception()
        if error is not None:
          errors[order[job.name]] = error
          for other in pending:
            other.cancel()
          continue
        results[job.name] = future.result()
        _write_done(out, job, results[job.name])
      progress.show(_counter.value)
  except BaseException:
    pool.shutdown(wait=True, cancel_futures=True)
    progress.end()
    raise
  pool.shutdown(wait=True)
  progress.end()
  if errors:
    error = errors[min(errors)]
    if isinstance(error, cf.process.BrokenProcessPool):
      raise RuntimeError(
        f"a worker process writing {out} died (out of memory?); finished shards are kept: "
        "rerun to resume, with fewer --workers"
      ) from error
    raise error
  return results


def finish(out: str, meta: records.Meta, jobs: list[Job]) -> None:
  """dataset.json, then the bookkeeping removed: the preparation is complete."""
  records.write_meta(out, meta)
  for job in jobs:
    _remove(os.path.join(out, job.name + DONE_SUFFIX))
  _remove(os.path.join(out, PLAN_FILE))


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _read_done(out: str, name: str) -> list | None:
  """The rows skipped in a finished shard, or None when it is not finished."""
  shard, done = os.path.join(out, name), os.path.join(out, name + DONE_SUFFIX)
  if not (os.path.isfile(shard) and os.path.isfile(done)):
    return None
  try:
    with open(done, encoding="utf-8") as f:
      return json.load(f)["skipped"]
  except (OSError, ValueError, KeyError):
    return None  # written again


def _write_done(out: str, job: Job, skipped: list) -> None:
  path = os.path.join(out, job.name + DONE_SUFFIX)
  files.write_json(
    path, {"start": job.start, "stop": job.stop, "skipped": skipped}, indent=None, sort_keys=False
  )


def _start_worker(counter: Any, parent: int) -> None:
  global _counter
  _counter = counter
  processes.exit_with_parent(parent)


def _advance(n: int) -> None:
  if _counter is not None:
    with _counter.get_lock():
      _counter.value += n


def _counted(rows: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
  pending = 0
  for row in rows:
    yield row
    pending += 1
    if pending == _COUNT_EVERY:
      _advance(pending)
      pending = 0
  _advance(pending)


class _Progress:
  """One console line: rows done, rows/s and the time left; redrawn in place on a terminal,
  every 10 s otherwise."""

  def __init__(self, label: str, total: int, done_before: int):
    self.label, self.total, self.before = label, total, done_before
    self.start = self.last = time.monotonic()
    self.tty = sys.stderr.isatty()
    self.now = 0

  def show(self, done_now: int) -> None:
    self.now = done_now
    t = time.monotonic()
    if self.tty or t - self.last >= 10:
      self.last = t
      self._print("\r" if self.tty else "")

  def end(self) -> None:
    self._print("\r" if self.tty else "")
    if self.tty:
      print(file=sys.stderr)

  def _print(self, start: str) -> None:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    done = self.before + self.now
    rate = self.now / elapsed
    left = (self.total - done) / rate if rate > 0 else math.nan
    eta = "-:--:--"
    if math.isfinite(left):
      eta = f"{int(left) // 3600}:{int(left) // 60 % 60:02d}:{int(left) % 60:02d}"
    line = (
      f"{self.label}: {done:,}/{self.total:,} rows ({100 * done / max(self.total, 1):.0f}%), "
      f"{rate:,.0f} rows/s, ETA {eta}"
    )
    print(start + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
