"""Orbax checkpoints of the train state: restore-or-init, periodic asynchronous saves, and a
checksum of every file of a checkpoint, written once its save is complete.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest one. `CHECKSUMS` (SHA-256
of each file of the step) is written beside it afterwards and checked on every restore, so
bytes changed on disk are found before they reach training; a step without one (killed
between the rename and the checksum) is restored unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from dlu.errors import UsageError
from dlu.files import write_json

#: Per step: {"files": {relative path: sha256}}, written after the save completes.
CHECKSUMS = "dlu_checksums.json"


def _file_digests(step_dir: str) -> dict[str, str]:
  digests = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(CHECKSUMS):
        continue
      with open(path, "rb") as f:
        digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests


def write_checksums(step_dir: str) -> None:
  """CHECKSUMS of a complete checkpoint step (atomically: a reader sees all or nothing)."""
  path = os.path.join(step_dir, CHECKSUMS)
  digests = _file_digests(step_dir)
  write_json(path, {"files": digests}, indent=0)


def verify_checksums(step_dir: str) -> str | None:
  """None when `step_dir` matches its CHECKSUMS (or has none); else the first file that
  does not, with what is wrong."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, "rb") as f:
      expected = json.loads(f.read().decode("utf-8"))["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{path} is unreadable ({type(e).__name__})"
  try:
    actual = _file_digests(step_dir)
  except OSError as e:
    return f"{e.filename or step_dir} is unreadable ({e.strerror or e})"
  for rel, digest in sorted(expected.items()):
    if rel not in actual:
      return f"{os.path.join(step_dir, rel)} is missing"
    if actual[rel] != digest:
      return f"{os.path.join(step_dir, rel)} has changed since it was saved (checksum mismatch)"
  return None


class CheckpointError(UsageError):
  """A checkpoint could not be restored into the state this run builds."""

  def __init__(self, step: int, path: str, cause: Exception | str, *, intact: int | None = None):
    self.step, self.path, self.cause, self.intact = step, path, cause, intact
    if isinstance(cause, str):
      message = f"checkpoint step {step} is corrupt: {cause}; " + (
        f"the last intact step is {intact}" if intact is not None else "no intact step is left"
      )
    else:
      first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
      message = f"cannot restore the checkpoint {path}: {first_line}"
    super().__init__(message)


class SaveError(RuntimeError):
  """A save failed (a full disk, ...): nothing of it became a checkpoint."""

  def __init__(self, directory: str, steps: list[int], cause: Exception):
    reason = getattr(cause, "strerror", None) or str(cause).strip().splitlines()[0][:300]
    if "No space left on device" in str(cause):
      reason = "No space left on device"
    where = os.path.join(directory, str(steps[-1])) if steps else directory
    super().__init__(f"cannot save the checkpoint {where} ({reason})")


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; the loop decides when to save.

  `read_only`: for evaluation and loaders of a trained run: nothing is created, cleaned up or
  deleted (a run still training keeps its in-flight temporaries), and only finalised steps
  are seen. Nothing is created before the first save either.
  """

  def __init__(self, directory: str, *, keep: int = 1, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise UsageError(f"{self.directory} is a file; expected the folder of a run's checkpoints")
    if read_only:
      options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0
      )
    else:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=False, cleanup_tmp_directories=True
      )
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unsealed: set[int] = set()  # Saved by this process, checksums not yet written.

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def kept_step(self) -> int | None:
    """The newest finalised step on disk (after a failed save too)."""
    if not os.path.isdir(self.directory):
      return None
    return max((int(s) for s in os.listdir(self.directory) if s.isdigit()), default=None)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def intact_steps(self) -> list[int]:
    """Steps whose files match their checksums, newest first."""
    return [s for s in reversed(self.all_steps()) if verify_checksums(self.step_dir(s)) is None]

  def restore(self, target: Any, step: int | None = None) -> Any | None:
    """The latest checkpoint (or `step`) laid out like `target` (arrays or
    ShapeDtypeStructs), or None when there is none.

    Raises CheckpointError when its checksums do not match, or it cannot be read or does not
    fit `target`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    problem = verify_checksums(self.step_dir(step))
    if problem is not None:
      intact = next(iter(self.intact_steps()), None)
      raise CheckpointError(step, self.step_dir(step), problem, intact=intact)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many types: shape mismatches, truncated files, ...
      raise CheckpointError(step, self.step_dir(step), e) from e

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save (after sealing the previous one); a step already saved
    is left as it is."""
    self.wait()
    if step in self.manager.all_steps():
      return
    os.makedirs(self.directory, exist_ok=True)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._unsealed.add(step)

  def wait(self) -> None:
    """Waits for the save in flight, then checksums the steps this process saved (a step
    found on disk without checksums is never sealed: it may have changed since)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # Orbax raises OSError, or ValueError for tensorstore's errors.
      unsealed, self._unsealed = sorted(self._unsealed), set()
      raise SaveError(self.directory, unsealed, e) from e
    finished, self._unsealed = self._unsealed & set(self.manager.all_steps()), set()
    if jax.process_index() == 0:
      for step in sorted(finished):
        write_checksums(self.step_dir(step))

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


def read_checkpoint(workdir: str, step: int | None = None) -> Any:
  """A run's checkpointed state as NumPy arrays, without building its model.

  For notebooks and tests: works whatever the number of devices or processes that wrote
  it, touches nothing, and checks the checksums. `step` defaults to the latest finalised.
  """
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise UsageError(f"{ckpt.directory} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
      raise UsageError(f"{ckpt.directory} holds no checkpoint of step {step} (it holds {steps})")
    problem = verify_checksums(ckpt.step_dir(step))
    if problem is not None:
      intact = next(iter(ckpt.intact_steps()), None)
      raise CheckpointError(step, ckpt.step_dir(step), problem, intact=intact)
    path = os.path.join(ckpt.step_dir(step), "default")
    checkpointer = ocp.StandardCheckpointer()
    try:
      tree = checkpointer.metadata(path).item_metadata.tree
      device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
      abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        tree,
        is_leaf=lambda m: hasattr(m, "shape"),
      )
      return jax.device_get(checkpointer.restore(path, abstract))
    except Exception as e:  # As in Checkpointer.restore.
      raise CheckpointError(step, ckpt.step_dir(step), e) from e
    finally:
      checkpointer.close()
  finally:
    ckpt.close()
