"""Orbax checkpoints of the train state: restore-or-init, periodic asynchronous saves.

Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from dlu.errors import UsageError


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`; the loop decides when to save."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target: Any, step: int | None = None) -> Any | None:
    """The checkpoint at `step` (default: the latest) laid out like `target` (arrays or
    ShapeDtypeStructs), or None when there is none.

    Raises UsageError when the checkpoint cannot be read or does not fit `target`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # Orbax raises many types: shape mismatches, truncated files, ...
      raise CheckpointError(step, os.path.join(self.directory, str(step)), e) from e

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save; a step already saved is left as it is."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class CheckpointError(UsageError):
  """The latest checkpoint could not be restored into the state this run builds."""

  def __init__(self, step: int, path: str, cause: Exception):
    self.step, self.path, self.cause = step, path, cause
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    super().__init__(f"cannot restore the checkpoint {path}: {first_line}")


def read_checkpoint(workdir: str, step: int | None = None) -> Any:
  """A run's checkpointed state as NumPy arrays, without building its model.

  For notebooks and tests: works whatever the number of devices or processes
  that wrote it. `step` defaults to the latest.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if step is None:
    steps = (
      [int(s) for s in os.listdir(directory) if s.isdigit()] if os.path.isdir(directory) else []
    )
    if not steps:
      raise UsageError(f"{directory} holds no checkpoint")
    step = max(steps)
  path = os.path.join(directory, str(step), "default")
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  abstract = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    tree,
    is_leaf=lambda m: hasattr(m, "shape"),
  )
  return jax.device_get(checkpointer.restore(path, abstract))
