"""Evaluation batches: padded to the device count, not to --eval_batch_size; capped by bytes."""

import jax
import numpy as np

from dlu.runtime import batched_eval


def test_a_small_split_is_padded_to_the_device_count_only():
  n = jax.device_count()
  x = np.arange(n + 2, dtype=np.float32)[:, None]
  batches = list(batched_eval.padded_batches(x, 512))
  assert [len(b) for b, _ in batches] == [2 * n]
  assert batches[0][1].sum() == n + 2
  np.testing.assert_array_equal(batches[0][0][: n + 2], x)


def test_large_images_make_smaller_batches():
  n = jax.device_count()
  huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2, 4000, 4000, 3), (0, 0, 0, 0))
  assert batched_eval.fit_batch_size(huge, 512) == n  # Not 512 copies of 4000x4000x3.
  assert batched_eval.fit_batch_size(np.zeros((2, 8, 8, 1), np.uint8), 512) == 512
