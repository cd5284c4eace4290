"""Feeds of training batches: gathered in device memory, gathered by the host, or streamed.

`--input_pipeline` chooses (`choose_pipeline`; auto by the split's size and where it lives):
- device: small training splits are put in device memory once and each batch is gathered
  on device by index: per step only the indices (from the BatchSampler's per-epoch
  permutation, so the order is exactly the host loop's) cross to the device.
  `steps_per_dispatch=K` runs K steps in one jitted `lax.scan`, so the host launches one
  program per K steps; the loop logs, evaluates and checkpoints between dispatches and gets
  the metrics of each dispatch's last step.
- host: each process gathers its slice of every batch from host memory, one step per dispatch.
- stream: Grain reads each process's slice of every batch, in the same order, from rows that
  stay on disk (records:, npy:) or in memory, in worker processes (`--data_workers`), and a
  thread puts the next batches on the devices while the current step runs.
All three give the same batches, so the same run.

Batches hold `image`, plus `index` (the rows) for families that set `needs_index` and
`label` (y_train at those rows, int32) for families that set `needs_label`.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import Mesh

from dlu.data import processes
from dlu.data.sampler import BatchReader, BatchSampler
from dlu.errors import UsageError
from dlu.runtime import parallel

# Larger training splits stay in host memory and are fed one batch per step.
MAX_DEVICE_BYTES = 2 << 30


def _replicate(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A copy of `x` (the same in every process) on every device of the mesh: a transfer made on
  purpose, so allowed under `jax.transfer_guard("disallow")`, which catches the others."""
  with jax.transfer_guard_host_to_device("allow"):
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def dispatch_length(
  step: int, num_steps: int, steps_per_dispatch: int, boundaries: tuple[int, ...]
) -> int:
  """Steps in the dispatch that starts after `step`: at most K, never past a multiple of a
  boundary (log, eval, checkpoint intervals) or `num_steps`, so those happen as with K=1."""
  n = min(steps_per_dispatch, num_steps - step)
  for every in boundaries:
    n = min(n, every - step % every)
  return n


def _check_labels(family: Any, y_train: np.ndarray | None) -> np.ndarray | None:
  """The labels the family's batches need (int32), or None when it needs none."""
  if not family.needs_label:
    return None
  if y_train is None:
    raise UsageError(
      "this model trains on labelled batches (--conditional), but the training split has no labels"
    )
  return np.asarray(y_train, np.int32)


def _abstract(x: Any, sharding: jax.sharding.Sharding | None = None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None))


def lowered_flops(step: Callable, *args: Any, scale: int = 1) -> float | None:
  """FLOPs of one call of the jitted (or pmapped) `step` on `args` (arrays or their shapes), from
  XLA's cost analysis of the lowered program before partitioning (so over the global batch;
  a pmapped step's per-device count times `scale`). Nothing runs or compiles. None when XLA
  gives no count. A `lax.scan`'s body counts once, so this is taken of the one-step program."""
  try:
    cost = step.lower(*args).cost_analysis()
  except Exception:  # pylint: disable=broad-except  # a backend without cost analysis
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", 0.0))
  return flops * scale if flops > 0 else None


def _batch_shapes(mesh: Mesh, local: dict, *, pmap: bool) -> dict:
  """The shapes of the global batch assembled from this process's rows `local`."""
  if pmap:
    return parallel.pmap_batch({k: np.asarray(v) for k, v in local.items()})
  sharding, n = parallel.data_sharded(mesh), jax.process_count()
  return {
    k: jax.ShapeDtypeStruct((v.shape[0] * n, *v.shape[1:]), v.dtype, sharding=sharding)
    for k, v in local.items()
  }


def make_multi_step(family: Any, mesh: Mesh) -> Callable:
  """(state, arrays, indices [K, B], rng) -> (state, metrics of the last step), state donated.

  `arrays`: {"image": x_train} and, for families that need labels, {"label": y_train}.
  """
  repl, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)

  def multi_step(state, arrays, indices, rng):
    def one(state, idx):  # The same step as K=1, on a batch sharded as global_batch shards it.
      batch = {
        name: jax.lax.with_sharding_constraint(jnp.take(v, idx, axis=0), sharded)
        for name, v in arrays.items()
      }
      if family.needs_index:
        batch["index"] = jax.lax.with_sharding_constraint(idx, sharded)
      return family.train_step(state, batch, rng)

    state, metrics = jax.lax.scan(one, state, indices)
    return state, jax.tree.map(lambda m: m[-1], metrics)

  # K is the leading size of `indices`: one compilation per distinct K.
  return jax.jit(
    multi_step,
    in_shardings=(repl, repl, repl, repl),
    out_shardings=(repl, repl),
    donate_argnums=(0,),
  )


class DeviceFeed:
  """Runs training steps on batches gathered on device; `__call__(state, step, n)` runs n steps.

  n = 1 calls the ordinary jitted step (the program a host-fed loop runs), so K=1 gives
  bit-identical results; n > 1 runs the steps in one `lax.scan`.
  """

  def __init__(
    self,
    family: Any,
    mesh: Mesh,
    x_train: np.ndarray,
    sampler: BatchSampler,
    train_step: Callable,
    rng: jax.Array,
    *,
    y_train: np.ndarray | None = None,
  ):
    self.sampler, self.train_step, self.rng = sampler, train_step, rng
    self._replicated = parallel.replicated(mesh)
    # [N, H, W, C] as stored (uint8: 4x less), and [N] int32 labels when the family needs them.
    self.arrays = {"image": _replicate(x_train, self._replicated)}
    labels = _check_labels(family, y_train)
    if labels is not None:
      self.arrays["label"] = _replicate(labels, self._replicated)
    with_index = family.needs_index

    def gather(arrays, idx):
      batch = {name: jnp.take(v, idx, axis=0) for name, v in arrays.items()}
      return {**batch, "index": idx} if with_index else batch

    self.gather = jax.jit(gather, out_shardings=parallel.data_sharded(mesh))
    self.multi_step = make_multi_step(family, mesh)

  def indices(self, step: int, n: int) -> jax.Array:
    """[n, global batch] int32: the BatchSampler's global batches of steps step..step+n-1."""
    idx = np.stack([self.sampler.global_indices(s) for s in range(step, step + n)]).astype(np.int32)
    return _replicate(idx, self._replicated)

  def __call__(self, state: Any, step: int, n: int) -> tuple[Any, Any]:
    if n == 1:  # [global batch] indices, put on the devices as they are (no slicing there).
      idx = _replicate(self.sampler.global_indices(step).astype(np.int32), self._replicated)
      return self.train_step(state, self.gather(self.arrays, idx), self.rng)
    return self.multi_step(state, self.arrays, self.indices(step, n), self.rng)

  def flops_per_step(self, state: Any) -> float | None:
    """FLOPs of one training step (see `lowered_flops`); call once, before the first dispatch."""
    idx = jax.ShapeDtypeStruct(
      (self.sampler.global_batch_size,), np.int32, sharding=self._replicated
    )
    batch = jax.eval_shape(self.gather, self.arrays, idx)
    return lowered_flops(self.train_step, jax.tree.map(_abstract, state), batch, self.rng)

  def close(self) -> None:
    pass


class HostFeed:
  """One step per dispatch on batches gathered in this process, when asked for (pmap, or data
  too large for the devices)."""

  def __init__(
    self,
    mesh: Mesh,
    reader: BatchReader,
    train_step: Callable,
    rng: jax.Array,
    *,
    pmap: bool,
  ):
    self.mesh, self.reader, self.train_step, self.rng, self.pmap = (
      mesh,
      reader,
      train_step,
      rng,
      pmap,
    )

  def __call__(self, state: Any, step: int, n: int) -> tuple[Any, Any]:
    assert n == 1, "a HostFeed runs one step per dispatch"
    local = self.reader(step)
    batch = parallel.pmap_batch(local) if self.pmap else parallel.global_batch(self.mesh, local)
    return self.train_step(state, batch, self.rng)

  def flops_per_step(self, state: Any) -> float | None:
    """FLOPs of one training step (see `lowered_flops`); reads one batch's rows for its shapes."""
    batch = _batch_shapes(self.mesh, self.reader(0), pmap=self.pmap)
    if self.pmap:
      return lowered_flops(self.train_step, state, batch, self.rng, scale=jax.device_count())
    return lowered_flops(self.train_step, jax.tree.map(_abstract, state), batch, self.rng)

  def close(self) -> None:
    pass


class StreamFeed:
  """One step per dispatch on batches streamed by Grain in the sampler's order: read by
  `workers` processes (0: threads of this one), put on the devices ahead of use by a thread.

  Each process reads only its own slice of every global batch. Rows arrive as stored (uint8
  pixels; a table's rows already scaled) and are scaled on device, as with the other feeds,
  so the batches, and the run, are those of a DeviceFeed. Call `close()` (or use it as a
  context manager) to stop the workers.
  """

  def __init__(
    self,
    mesh: Mesh,
    reader: BatchReader,
    train_step: Callable,
    rng: jax.Array,
    *,
    start_step: int,
    num_steps: int,
    workers: int = 0,
    prefetch: int = 2,
  ):
    import grain

    self.mesh, self.reader, self.train_step, self.rng = mesh, reader, train_step, rng
    self.next_step = start_step
    steps = grain.MapDataset.range(start_step, max(start_step, num_steps)).map(reader)
    # Each element is a whole batch: buffer a few, not grain's default of hundreds.
    stream = steps.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch))
    if workers > 0:
      if not flags.FLAGS.is_parsed():  # Grain reads its own absl flags (a notebook parses none)
        flags.FLAGS.mark_as_parsed()
      stream = stream.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
        worker_init_fn=functools.partial(processes.init_input_worker, parent=os.getpid()),
      )
    self._batches = iter(stream)
    self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._put_on_devices, daemon=True)
    self._thread.start()

  def _put_on_devices(self) -> None:
    try:
      for local in self._batches:
        item = parallel.global_batch(self.mesh, jax.tree.map(_own_memory, local))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except BaseException as e:  # handed to the loop, which raises it
      self._queue.put(e)
    else:
      self._queue.put(RuntimeError(f"the input stream ended before step {self.next_step + 1}"))

  def next_batch(self) -> Any:
    while True:
      try:
        item = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise RuntimeError("the input stream stopped without a word") from None
    if isinstance(item, BaseException):
      raise item
    return item

  def __call__(self, state: Any, step: int, n: int) -> tuple[Any, Any]:
    assert n == 1, "a StreamFeed runs one step per dispatch"
    if step != self.next_step:
      raise RuntimeError(f"the input stream is at step {self.next_step}, the loop at {step}")
    self.next_step += 1
    return self.train_step(state, self.next_batch(), self.rng)

  def flops_per_step(self, state: Any) -> float | None:
    """FLOPs of one training step (see `lowered_flops`); reads one batch's rows for its shapes."""
    batch = _batch_shapes(self.mesh, self.reader(self.next_step), pmap=False)
    return lowered_flops(self.train_step, jax.tree.map(_abstract, state), batch, self.rng)

  def close(self) -> None:
    """Stops the device thread and the worker processes; safe to call more than once."""
    self._stop.set()
    while True:  # unblock the thread if it waits on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    close = getattr(self._batches, "close", None)
    if close is not None:
      close()
    self._thread.join(timeout=10)

  def __enter__(self) -> StreamFeed:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _own_memory(x: np.ndarray) -> np.ndarray:
  """A worker's batch (in shared memory) copied to this process; the shared block is freed."""
  free = getattr(x, "close_and_unlink_shm", None)
  if free is None:  # read in this process: already its own
    return x
  own = np.array(x)
  free()
  return own


PIPELINES = ("auto", "device", "host", "stream")


def choose_pipeline(requested: str, x_train: Any, *, parallelism: str = "jit") -> str:
  """The feed `--input_pipeline=auto` means for this training split: `device` when it fits
  MAX_DEVICE_BYTES (and, for rows on disk, a quarter of the host's memory), `stream` for rows on
  disk (records:, npy:) that do not, `host` for larger splits in memory. An explicit choice is
  checked."""
  if requested not in PIPELINES:
    raise UsageError(f"--input_pipeline={requested!r}: expected one of {', '.join(PIPELINES)}")
  in_memory = isinstance(x_train, np.ndarray)
  fits = x_train.nbytes <= MAX_DEVICE_BYTES
  if parallelism == "pmap" and requested in ("device", "stream"):
    raise UsageError(
      f"--input_pipeline={requested} runs under --parallelism=jit; pmap is fed by the host "
      "(use --input_pipeline=host or auto)"
    )
  if requested == "device" and not fits:
    raise UsageError(
      f"--input_pipeline=device: the training split is {x_train.nbytes / 2**30:.1f} GiB, more "
      f"than the {MAX_DEVICE_BYTES / 2**30:.0f} GiB kept in device memory; use stream or host"
    )
  if requested != "auto":
    return requested
  if parallelism == "pmap":
    return "host"
  if not in_memory:  # rows on disk: loaded whole only when small beside the host's memory
    small = fits and x_train.nbytes <= _host_memory_bytes() // 4
    return "device" if small else "stream"
  return "device" if fits else "host"


def _host_memory_bytes() -> int:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):  # not POSIX: assume little
    return 4 << 30


def check_pipeline(
  requested: str, x_train: Any, *, parallelism: str = "jit", steps_per_dispatch: int = 1
) -> str:
  """`choose_pipeline`, and a UsageError when --steps_per_dispatch cannot run on its choice."""
  pipeline = choose_pipeline(requested, x_train, parallelism=parallelism)
  if steps_per_dispatch > 1 and pipeline != "device":
    if parallelism == "pmap":
      why = "--parallelism=pmap"
    else:
      why = f"--input_pipeline={pipeline}"
      if x_train.nbytes > MAX_DEVICE_BYTES:
        why += f" (a training split of {x_train.nbytes / 2**30:.1f} GiB)"
    raise UsageError(
      f"--steps_per_dispatch={steps_per_dispatch} needs the training data in device "
      f"memory (--input_pipeline=device); {why} feeds one step at a time: use 1"
    )
  return pipeline


def make_feed(
  family: Any,
  mesh: Mesh,
  x_train: Any,
  sampler: BatchSampler,
  train_step: Callable,
  rng: jax.Array,
  *,
  y_train: np.ndarray | None = None,
  parallelism: str = "jit",
  steps_per_dispatch: int = 1,
  input_pipeline: str = "auto",
  start_step: int = 0,
  num_steps: int = 0,
  data_workers: int = 0,
) -> DeviceFeed | HostFeed | StreamFeed:
  """The feed `--input_pipeline` asks for (see `choose_pipeline`); call its `close()` when done.

  `y_train` feeds the batches' `label` for families that set `needs_label`. A StreamFeed
  streams steps start_step..num_steps-1 in order with `data_workers` processes.
  """
  pipeline = check_pipeline(
    input_pipeline, x_train, parallelism=parallelism, steps_per_dispatch=steps_per_dispatch
  )
  labels = _check_labels(family, y_train)
  if parallelism != "pmap":  # The key on every device once, not copied there at every step.
    rng = parallel.put_replicated(mesh, rng)
  if pipeline == "device":
    x = x_train if isinstance(x_train, np.ndarray) else np.asarray(x_train)
    return DeviceFeed(family, mesh, x, sampler, train_step, rng, y_train=y_train)
  reader = BatchReader(x_train, sampler, labels=labels, with_index=family.needs_index)
  if pipeline == "host":
    return HostFeed(mesh, reader, train_step, rng, pmap=parallelism == "pmap")
  return StreamFeed(
    mesh,
    reader,
    train_step,
    rng,
    start_step=start_step,
    num_steps=num_steps,
    workers=data_workers,
  )
