"""The order in which training batches visit a dataset held in memory."""

from __future__ import annotations

import numpy as np

from dlu.errors import UsageError


class BatchSampler:
  """Deterministic per-epoch shuffles: the batch of global step s depends only on (seed, s).

  So a resumed run sees exactly the batches it would have seen, and the global batch is
  the same whatever the number of processes: process p takes the p-th contiguous slice.
  Each epoch's remainder is dropped: every batch is full, no example repeats in an epoch.
  """

  def __init__(
    self,
    num_examples: int,
    global_batch_size: int,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if num_examples < 1:
      raise UsageError(f"--dataset has no training examples (num_examples={num_examples})")
    if global_batch_size < 1:
      raise UsageError(f"--batch_size={global_batch_size} must be positive")
    if global_batch_size > num_examples:
      raise UsageError(
        f"--batch_size={global_batch_size} is larger than the {num_examples} "
        f"training examples; use at most {num_examples}"
      )
    if process_count < 1 or not 0 <= process_index < process_count:
      raise UsageError(
        f"process_index={process_index} must be in [0, process_count={process_count})"
      )
    if global_batch_size % process_count:
      raise UsageError(
        f"--batch_size={global_batch_size} must be divisible by the number of "
        f"processes ({process_count})"
      )
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.process_index = process_index
    self.process_count = process_count
    self.steps_per_epoch = num_examples // global_batch_size
    self._seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative entropy
    self._epoch, self._perm = -1, np.empty(0, np.int64)

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of all examples in `epoch`; [num_examples] int64."""
    if epoch != self._epoch:  # consecutive steps share an epoch: shuffle once per epoch
      self._perm = np.random.default_rng([self._seed, epoch]).permutation(self.num_examples)
      self._epoch = epoch
    return self._perm

  def global_indices(self, step: int) -> np.ndarray:
    """Indices into x_train of the whole batch of global step `step`; [global_batch_size]."""
    if step < 0:
      raise UsageError(f"step={step} must be non-negative")
    epoch, i = divmod(int(step), self.steps_per_epoch)
    b = self.global_batch_size
    return self.permutation(epoch)[i * b : (i + 1) * b]

  def indices(self, step: int) -> np.ndarray:
    """This process's contiguous slice of `global_indices(step)`; [global_batch_size // process_count]."""
    start = self.process_index * self.local_batch_size
    return self.global_indices(step)[start : start + self.local_batch_size]


class BatchReader:
  """This process's rows of the batch of a global step, read from `x` (an array, or rows on
  disk) in the sampler's order: `reader(step)` -> {"image", "label"?, "index"?}.

  It holds no open files or devices and pickles small (on-disk arrays pickle as their file
  names), so input worker processes can each read any step.
  """

  def __init__(
    self,
    x,
    sampler: BatchSampler,
    *,
    labels: np.ndarray | None = None,
    with_index: bool = False,
  ):
    self.x, self.sampler, self.labels, self.with_index = x, sampler, labels, with_index

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    indices = self.sampler.indices(int(step))
    batch = {"image": np.asarray(self.x[indices])}
    if self.labels is not None:
      batch["label"] = self.labels[indices]
    if self.with_index:
      batch["index"] = indices.astype(np.int32)
    return batch
