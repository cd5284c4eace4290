"""The streaming input pipeline: the device feed's batches, read from rows on disk by worker
processes; resumes bit-identically; each process reads only its slice; workers never outlive
the run."""

import multiprocessing
import os
import pickle
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlu
from dlu import config, data
from dlu.data import feeds, records
from dlu.errors import UsageError
from dlu.runtime import parallel
from dlu.runtime.checkpointing import read_checkpoint
from dlu.train import apply, loop

PROBE = types.SimpleNamespace(needs_index=True, needs_label=True)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  """The 1,797 digits as an in-memory npz and as records on disk (same rows, same split)."""
  ds = data.load("digits")
  x = np.concatenate([ds.x_train, ds.x_test])
  y = np.concatenate([ds.y_train, ds.y_test])
  root = tmp_path_factory.mktemp("digits")
  np.savez(root / "digits.npz", x=x, y=y)
  records.write(str(root / "records"), {"all": (x, y)}, num_shards=3, num_classes=10)
  return f"npz:{root / 'digits.npz'}", f"records:{root / 'records'}"


def _batches(feed, start, n):
  out = []
  for step in range(start, start + n):
    _, batch = feed(jnp.zeros(()), step, 1)
    out.append(jax.device_get(batch))
  feed.close()
  return out


@pytest.mark.slow
def test_stream_gives_the_device_feeds_batches_across_an_epoch_boundary(digits):
  in_memory, on_disk = (data.load(d) for d in digits)
  assert isinstance(on_disk.x_train, records.RecordArray)
  mesh = parallel.make_mesh()
  sampler = data.BatchSampler(len(in_memory.x_train), 64, seed=1)  # 25 steps per epoch
  step = jax.jit(lambda state, batch, rng: (state, batch))

  def feed(ds, pipeline, workers=0):
    return feeds.make_feed(
      PROBE,
      mesh,
      ds.x_train,
      sampler,
      step,
      jax.random.key(0),
      y_train=ds.y_train,
      input_pipeline=pipeline,
      start_step=22,
      num_steps=28,
      data_workers=workers,
    )

  assert isinstance(feed(on_disk, "auto"), feeds.DeviceFeed)  # small: loaded whole
  expected = _batches(feed(in_memory, "device"), 22, 6)
  for streamed in (feed(on_disk, "stream", workers=1), feed(in_memory, "stream")):
    for want, got in zip(expected, _batches(streamed, 22, 6), strict=True):
      assert set(got) == {"image", "label", "index"} and got["image"].dtype == np.uint8
      for key in want:
        np.testing.assert_array_equal(want[key], got[key])
  assert not multiprocessing.active_children()  # the worker stopped with its feed


def test_each_process_reads_only_its_slice_of_the_global_batch():
  read = []

  class Recording(np.ndarray):
    def __getitem__(self, idx):
      read.append(np.asarray(idx).copy())
      return np.asarray(self).__getitem__(idx)

  x = np.arange(40, dtype=np.uint8).reshape(40, 1).view(Recording)
  full = data.BatchSampler(40, 8, seed=0)
  for p in range(2):
    sampler = data.BatchSampler(40, 8, seed=0, process_index=p, process_count=2)
    batch = data.BatchReader(x, sampler, with_index=True)(7)  # epoch 1
    np.testing.assert_array_equal(read[-1], full.global_indices(7)[4 * p : 4 * p + 4])
    np.testing.assert_array_equal(batch["image"][:, 0], batch["index"])


def _cfg(dataset, **overrides):
  return config.make_config(
    **{
      "model": "ae_mlp",
      "widths": ["16"],
      "latent_dim": 4,
      "dataset": dataset,
      "batch_size": 64,
      "num_steps": 30,  # 25 steps per epoch: the runs cross an epoch boundary
      "log_every": 15,
      "eval_every": 30,
      "checkpoint_every": 15,
      "evaluators": ["metrics"],
      "num_images": 8,
      **overrides,
    }
  )


@pytest.mark.slow
def test_stream_run_resumes_bit_identically_and_matches_the_device_run(digits, tmp_path):
  in_memory, on_disk = digits
  stream = _cfg(on_disk, input_pipeline="stream", data_workers=1)
  resumed = str(tmp_path / "resumed")
  loop.train_and_evaluate(stream.replace(num_steps=15), resumed)
  loop.train_and_evaluate(stream, resumed)  # resumes at 15, mid-epoch
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(stream.replace(data_workers=0), straight)
  device = str(tmp_path / "device")
  loop.train_and_evaluate(_cfg(in_memory, input_pipeline="device"), device)
  params = [read_checkpoint(w, 30)["params"] for w in (resumed, straight, device)]
  for other in params[1:]:
    jax.tree.map(np.testing.assert_array_equal, params[0], other)
  assert not multiprocessing.active_children()
  # A trained run applied to rows on disk reads them batch by batch: the in-memory numbers.
  run = dlu.load_run(resumed)
  rows = apply.read_inputs(on_disk, run)
  assert isinstance(rows, data.RowArray) and len(rows) == 1797
  np.testing.assert_allclose(
    run.score(rows), run.score(data.read_rows(in_memory)), rtol=1e-6, atol=1e-7
  )


@pytest.mark.slow
def test_a_corrupt_record_stops_the_run_naming_it_and_its_workers(digits, tmp_path):
  _, on_disk = digits
  directory = str(tmp_path / "corrupt")
  ds = data.load(on_disk)
  x = np.asarray(ds.x_train)
  records.write(directory, {"all": (x, None)})
  shard = os.path.join(directory, records.Meta.load(directory).splits["all"]["shards"][0])
  raw = bytearray(open(shard, "rb").read())
  at = bytes(raw).find(x[700].tobytes())
  raw[at + 10] ^= 0xFF
  open(shard, "wb").write(bytes(raw))
  cfg = _cfg(f"records:{directory}", input_pipeline="stream", data_workers=1, num_steps=60)
  with pytest.raises(UsageError, match="record 700 cannot be read"):
    loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not multiprocessing.active_children()


def test_pipeline_choice_and_its_errors(digits):
  in_memory, on_disk = (data.load(d) for d in digits)
  choose = feeds.choose_pipeline
  assert choose("auto", in_memory.x_train) == "device"
  assert choose("auto", in_memory.x_train, parallelism="pmap") == "host"
  big = types.SimpleNamespace(nbytes=feeds.MAX_DEVICE_BYTES + 1)
  assert choose("auto", big) == "stream"  # rows on disk, too large for the devices
  assert choose("auto", np.broadcast_to(np.uint8(0), (1 << 31, 2))) == "host"
  with pytest.raises(UsageError, match="--input_pipeline=device: the training split is"):
    choose("device", big)
  with pytest.raises(UsageError, match="--input_pipeline=stream runs under --parallelism=jit"):
    choose("stream", on_disk.x_train, parallelism="pmap")
  with pytest.raises(UsageError, match="--steps_per_dispatch=4 needs .* --input_pipeline=stream"):
    feeds.check_pipeline("stream", on_disk.x_train, steps_per_dispatch=4)


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
      except (OSError, ValueError, IndexError):
        continue
  return out


def _cmdline(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().decode(errors="replace")
  except OSError:
    return ""


@pytest.mark.slow
def test_input_workers_end_with_a_killed_run(digits, tmp_path):
  _, on_disk = digits
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "experiments.train",
      f"--flagfile={root}/experiments/configs/ae_digits.flags",
      f"--dataset={on_disk}",
      "--input_pipeline=stream",
      "--data_workers=1",
      "--num_steps=1000000",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=root,
    env={**os.environ, "XLA_FLAGS": ""},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and not workers:
      time.sleep(0.5)
      workers = [w for w in _children(proc.pid) if "spawn_main" in _cmdline(w)]
    assert workers, "no input worker process was started"
  finally:
    proc.kill()
    proc.wait()
  deadline = time.time() + 20
  while time.time() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
    time.sleep(0.2)
  alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
  for w in alive:
    os.kill(w, 9)
  assert not alive, "input workers outlived the killed run"


@pytest.mark.slow
def test_a_tfds_dataset_too_large_to_hold_is_read_by_row(monkeypatch):
  from dlu.data import tfds_offline

  held = data.load("fashion_mnist")
  monkeypatch.setattr(tfds_offline, "IN_MEMORY_LIMIT", 0)  # as if it did not fit
  lazy = data.load("fashion_mnist")
  assert isinstance(lazy.x_train, tfds_offline.TfdsArray) and lazy.x_train.shape == (
    60000,
    28,
    28,
    1,
  )
  np.testing.assert_array_equal(lazy.y_train, held.y_train)
  rows = np.array([59999, 3, 3, 12345])
  np.testing.assert_array_equal(lazy.x_train[rows], held.x_train[rows])
  np.testing.assert_array_equal(lazy.x_test[-5:], held.x_test[-5:])
  sampler = data.BatchSampler(60000, 32, seed=0)
  batch = data.BatchReader(pickle.loads(pickle.dumps(lazy.x_train)), sampler)(1875)  # epoch 1
  np.testing.assert_array_equal(batch["image"], held.x_train[sampler.indices(1875)])
