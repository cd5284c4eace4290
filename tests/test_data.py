"""Tests for dlu.data: every source, the offline fashion_mnist build, batching and scaling."""

import gzip
import importlib
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from dlu import data
from dlu.data import sources, tfds_offline
from dlu.errors import UsageError
from dlu.runtime import cli

# --- digits ---


def test_digits_shapes_split_and_determinism():
  ds = data.load("digits")
  assert ds.name == "digits" and ds.num_classes == 10 and ds.example_shape == (8, 8, 1)
  assert ds.x_train.shape == (1500, 8, 8, 1) and ds.x_test.shape == (297, 8, 8, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
  assert ds.x_train.max() == 255 and ds.x_train.min() == 0
  assert set(np.unique(ds.x_train)) <= {round(v * 255 / 16) for v in range(17)}
  assert set(np.unique(ds.y_train)) == set(range(10)) and ds.y_test.max() <= 9
  again = data.load("digits")
  np.testing.assert_array_equal(ds.x_train, again.x_train)
  np.testing.assert_array_equal(ds.y_test, again.y_test)


# --- normalize ---


def test_normalize_uint8_and_float():
  x = np.array([0, 51, 255], np.uint8)
  unit = data.normalize(x)
  assert isinstance(unit, np.ndarray) and unit.dtype == np.float32
  np.testing.assert_allclose(unit, [0, 0.2, 1], rtol=1e-6)
  np.testing.assert_allclose(data.normalize(x, "symmetric"), [-1, -0.6, 1], rtol=1e-6)
  f = np.array([0.0, 0.5, 1.0], np.float32)
  assert data.normalize(f) is f
  np.testing.assert_allclose(data.normalize(f, "symmetric"), [-1, 0, 1])


def test_normalize_traces_under_jit():
  x = jnp.array([[0, 255]], jnp.uint8)
  out = jax.jit(data.normalize, static_argnums=1)(x, "symmetric")
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [[-1, 1]])


def test_normalize_errors():
  with pytest.raises(UsageError, match=r"--pixel_range='zero_one'.*'unit', 'symmetric'"):
    data.normalize(np.zeros(2, np.uint8), "zero_one")
  with pytest.raises(UsageError, match="uint8 or float"):
    data.normalize(np.zeros(2, np.int16))


# --- BatchSampler ---


def test_sampler_covers_each_example_once_per_epoch():
  s = data.BatchSampler(103, 10, seed=3)
  assert s.steps_per_epoch == 10
  epoch = np.concatenate([s.global_indices(step) for step in range(10)])
  assert len(np.unique(epoch)) == 100 and epoch.min() >= 0 and epoch.max() < 103
  next_epoch = np.concatenate([s.global_indices(step) for step in range(10, 20)])
  assert not np.array_equal(epoch, next_epoch)


def test_sampler_depends_only_on_seed_and_step():
  a, b = data.BatchSampler(50, 8, seed=1), data.BatchSampler(50, 8, seed=1)
  for _ in range(3):  # b jumps around, a goes in order: same batches
    np.testing.assert_array_equal(a.global_indices(13), b.global_indices(13))
    b.global_indices(2)
  assert not np.array_equal(
    a.global_indices(13), data.BatchSampler(50, 8, seed=2).global_indices(13)
  )
  assert data.BatchSampler(50, 8, seed=-1).global_indices(0).shape == (8,)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_sampler_process_slices_make_the_global_batch(count):
  single = data.BatchSampler(64, 16, seed=7)
  parts = [
    data.BatchSampler(64, 16, seed=7, process_index=i, process_count=count) for i in range(count)
  ]
  for step in (0, 5, 11):
    assert all(p.indices(step).shape == (16 // count,) for p in parts)
    np.testing.assert_array_equal(
      np.concatenate([p.indices(step) for p in parts]), single.global_indices(step)
    )


def test_sampler_errors():
  with pytest.raises(UsageError, match="--batch_size=11 is larger than the 10"):
    data.BatchSampler(10, 11, seed=0)
  with pytest.raises(UsageError, match="--batch_size=6 must be divisible.*4"):
    data.BatchSampler(10, 6, seed=0, process_count=4)
  with pytest.raises(UsageError, match="--batch_size=0"):
    data.BatchSampler(10, 0, seed=0)


# --- fashion_mnist from IDX files, without TensorFlow ---


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(name="idx_dir")
def _idx_dir(tmp_path):
  """20 train + 10 test random images in the original file layout."""
  rng = np.random.default_rng(0)
  d = tmp_path / "idx"
  d.mkdir()
  for prefix, n in (("train", 20), ("t10k", 10)):
    _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
  return d


def _by_pixels(x, y):
  return {img.tobytes(): int(label) for img, label in zip(x, y)}


def test_fashion_mnist_prepared_offline_from_idx(idx_dir, tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  ds = data.load("fashion_mnist", data_dir=str(data_dir), idx_dir=str(idx_dir))
  assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
  original = tfds_offline.read_idx_dir(str(idx_dir))
  for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
    # tfds shuffles records when it writes them: compare as image -> label maps.
    assert _by_pixels(x, y) == _by_pixels(*original[split])

  # The stock tfds builder reads what was written, in the order the cache holds.
  stock = tfds.data_source("fashion_mnist", data_dir=str(data_dir))
  assert len(stock["train"]) == 20 and len(stock["test"]) == 10
  first = stock["train"][0]
  np.testing.assert_array_equal(first["image"], ds.x_train[0])
  assert first["label"] == ds.y_train[0]

  # A second load comes from the cache, without tfds.
  assert (data_dir / "fashion_mnist" / "3.0.1" / tfds_offline.CACHE_FILE).is_file()
  monkeypatch.setattr(tfds_offline, "_builder", lambda *a: pytest.fail("cache not used"))
  again = data.load("fashion_mnist", data_dir=str(data_dir), idx_dir=str(idx_dir))
  np.testing.assert_array_equal(again.x_train, ds.x_train)
  np.testing.assert_array_equal(again.y_test, ds.y_test)
  assert "cached" in data.prepare("fashion_mnist", data_dir=str(data_dir))

  # With several versions on disk the cache is found through tfds, still without decoding.
  monkeypatch.undo()
  monkeypatch.setattr(tfds_offline, "read", lambda *a: pytest.fail("cache not used"))
  (data_dir / "fashion_mnist" / "3.0.0").mkdir()
  np.testing.assert_array_equal(
    data.load("fashion_mnist", data_dir=str(data_dir)).x_test, ds.x_test
  )


def test_damaged_cache_is_rebuilt(idx_dir, tmp_path):
  data_dir = str(tmp_path)
  ds = data.load("fashion_mnist", data_dir=data_dir, idx_dir=str(idx_dir))
  cache = tmp_path / "fashion_mnist" / "3.0.1" / tfds_offline.CACHE_FILE
  cache.write_bytes(cache.read_bytes()[:100])
  np.testing.assert_array_equal(data.load("fashion_mnist", data_dir=data_dir).x_train, ds.x_train)
  assert cache.stat().st_size > 100


def test_idx_files_are_validated(idx_dir):
  images = idx_dir / "train-images-idx3-ubyte.gz"
  good = images.read_bytes()
  images.write_bytes(good[: len(good) // 2])
  with pytest.raises(
    UsageError, match=r"--idx_dir: .*train-images-idx3-ubyte\.gz is not a readable gzip"
  ):
    tfds_offline.read_idx_dir(str(idx_dir))
  with gzip.open(images, "wb") as f:
    f.write(gzip.decompress(good)[:-5])
  with pytest.raises(UsageError, match=r"train-images-idx3-ubyte\.gz holds 15675 bytes.*truncated"):
    tfds_offline.read_idx_dir(str(idx_dir))
  _write_idx(images, np.zeros((20, 28), np.uint8))
  with pytest.raises(UsageError, match=r"train-images-idx3-ubyte\.gz has magic number 00000802"):
    tfds_offline.read_idx_dir(str(idx_dir))
  _write_idx(images, np.zeros((19, 28, 28), np.uint8))
  with pytest.raises(UsageError, match="has 20 labels but .* has 19 images"):
    tfds_offline.read_idx_dir(str(idx_dir))


def test_corrupt_idx_file_fails_load(idx_dir, tmp_path):
  (idx_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
  with pytest.raises(UsageError, match=r"--idx_dir: .*t10k-labels-idx1-ubyte\.gz"):
    data.load("fashion_mnist", data_dir=str(tmp_path), idx_dir=str(idx_dir))
  assert not (tmp_path / "fashion_mnist" / "3.0.1").exists()


def test_bad_directories(idx_dir, tmp_path, monkeypatch):
  assert data.DEFAULT_IDX_DIR == "/usr/share/datasets/fashion-mnist"
  with pytest.raises(UsageError, match="--idx_dir=.*nope does not exist"):
    data.load("fashion_mnist", data_dir=str(tmp_path), idx_dir=str(tmp_path / "nope"))
  with pytest.raises(UsageError, match="--data_dir=.*nope does not exist"):
    data.prepare("fashion_mnist", data_dir=str(tmp_path / "nope"), idx_dir=str(idx_dir))
  (idx_dir / "t10k-images-idx3-ubyte.gz").unlink()
  with pytest.raises(UsageError, match="--idx_dir=.* lacks t10k-images-idx3-ubyte.gz"):
    data.load("fashion_mnist", data_dir=str(tmp_path), idx_dir=str(idx_dir))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))
  assert data.default_data_dir() == str(tmp_path / "default")


# --- other tfds datasets ---


def test_unprepared_dataset_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_offline, "tensorflow_available", lambda: False)
  with pytest.raises(
    UsageError,
    match=r"--dataset=mnist is not prepared .*pip install 'dlu\[prepare\]'.*"
    r"experiments.prepare_data --dataset=mnist",
  ):
    data.load("mnist", data_dir=str(tmp_path))
  monkeypatch.setattr(sources, "DEFAULT_IDX_DIR", str(tmp_path / "no_idx_files"))
  with pytest.raises(UsageError, match="--dataset=fashion_mnist is not prepared .*--idx_dir="):
    data.prepare("fashion_mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_data(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load(name, data_dir=str(tmp_path))
  assert ds.x_train.shape == (12, *shape) and ds.x_test.shape == (12, *shape)
  assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
  assert ds.y_train.dtype == np.int32 and 0 <= ds.y_train.min() and ds.y_train.max() < 10
  assert not list(tmp_path.iterdir())  # nothing prepared or cached for mocked data


@pytest.mark.parametrize(
  "dataset, match",
  [
    ("no_such_dataset", "--dataset=no_such_dataset is not a known dataset; .*npz:PATH, folder:DIR"),
    ("Not A Name", "--dataset='Not A Name' is not a dataset name"),
    ("mnist:9.9.9", "--dataset=mnist:9.9.9: .*version 9.9.9"),
    ("imdb_reviews", "--dataset=imdb_reviews has no 'image' feature"),
    ("npz:", "--dataset=npz: names no file"),
    ("", "--dataset is empty"),
  ],
)
def test_bad_dataset_names(dataset, match, tmp_path):
  with pytest.raises(UsageError, match=match):
    data.load(dataset, data_dir=str(tmp_path))


# --- npz ---


def _npz(tmp_path, **arrays):
  path = tmp_path / "d.npz"
  np.savez(path, **arrays)
  return f"npz:{path}"


def test_npz_held_out_split(tmp_path):
  x = np.random.default_rng(0).integers(0, 256, (25, 6, 5), dtype=np.uint8)
  ds = data.load(_npz(tmp_path, x=x, y=np.arange(25) % 3))
  assert ds.x_train.shape == (23, 6, 5, 1) and ds.x_test.shape == (2, 6, 5, 1)
  assert ds.num_classes == 3 and ds.y_train.dtype == np.int32
  assert sorted(map(bytes, np.concatenate([ds.x_train, ds.x_test]))) == sorted(
    map(bytes, x[..., None])
  )


def test_npz_with_test_split_and_float(tmp_path):
  x = np.full((4, 3, 3, 3), 0.5, np.float64)
  ds = data.load(_npz(tmp_path, x=x, x_test=x[:1]))
  assert ds.x_train.shape == (4, 3, 3, 3) and ds.x_test.shape == (1, 3, 3, 3)
  assert ds.x_train.dtype == np.float32 and ds.y_train is None and ds.num_classes is None
  ds = data.load(_npz(tmp_path, x=np.zeros((2, 4, 4, 1), np.uint8)))
  assert len(ds.x_train) == 1 and len(ds.x_test) == 1


@pytest.mark.parametrize(
  "arrays, match",
  [
    ({"images": np.zeros((3, 4, 4))}, r"has no array 'x' \(it has: images\)"),
    ({"x": np.zeros((3, 4, 4, 1, 1))}, r"x has shape \(3, 4, 4, 1, 1\); expected images"),
    ({"x": np.ones((3, 4))}, "column 'f0' is constant on the training split"),  # vectors
    ({"x": np.zeros((3, 4, 4, 2))}, r"with C in 1, 3, 4"),
    ({"x": np.zeros((0, 4, 4))}, "x is empty"),
    ({"x": np.zeros((3, 4, 4)), "y": np.zeros(2, int)}, r"y has shape \(2,\); expected \(3,\)"),
    ({"x": np.full((3, 4, 4), 2.0)}, r"values outside \[0, 1\]"),
    ({"x": np.zeros((3, 4, 4), np.int32)}, "dtype int32"),
    (
      {"x": np.zeros((3, 4, 4)), "x_test": np.zeros((2, 5, 4))},
      "x_test images are 5x4x1 but x images are 4x4x1",
    ),
    ({"x": np.zeros((1, 4, 4))}, "at least 2 are needed"),
  ],
)
def test_npz_errors(tmp_path, arrays, match):
  dataset = _npz(tmp_path, **arrays)
  with pytest.raises(UsageError, match=rf"--dataset={dataset}: .*{match}"):
    data.load(dataset)


def test_npz_missing_or_unreadable(tmp_path):
  with pytest.raises(UsageError, match="--dataset=npz:.*: no such file .*missing.npz"):
    data.load(f"npz:{tmp_path / 'missing.npz'}")
  (tmp_path / "bad.npz").write_bytes(b"junk")
  with pytest.raises(UsageError, match="cannot read .*bad.npz"):
    data.load(f"npz:{tmp_path / 'bad.npz'}")


# --- folder ---


def _png(path, size=(5, 4), mode="L", value=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value).save(path)


def test_folder_labelled_and_flat(tmp_path):
  for i in range(6):
    _png(
      tmp_path / "tree" / ("b_cat" if i % 2 else "a_dog") / f"{i}.png", mode="RGB", value=(i, 0, 0)
    )
  ds = data.load(f"folder:{tmp_path / 'tree'}")
  assert (
    ds.example_shape == (4, 5, 3) and len(ds.x_train) + len(ds.x_test) == 6 and len(ds.x_test) == 1
  )
  assert ds.num_classes == 2
  for x, y in zip(np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])):
    assert y == x[0, 0, 0] % 2  # odd pixels were in b_cat, class 1
  for i in range(3):
    _png(tmp_path / "flat" / f"{i}.png")
  ds = data.load(f"folder:{tmp_path / 'flat'}")
  assert ds.example_shape == (4, 5, 1) and ds.y_train is None and ds.num_classes is None


def test_folder_errors(tmp_path):
  with pytest.raises(UsageError, match="--dataset=folder:.*no such directory"):
    data.load(f"folder:{tmp_path / 'missing'}")
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(UsageError, match="no images in"):
    data.load(f"folder:{tmp_path / 'empty'}")
  _png(tmp_path / "sizes" / "a.png", size=(5, 4))
  _png(tmp_path / "sizes" / "b.png", size=(6, 4))
  with pytest.raises(UsageError, match=r"differ in size: .*a\.png is 4x5 but .*b\.png is 4x6"):
    data.load(f"folder:{tmp_path / 'sizes'}")
  _png(tmp_path / "modes" / "a.png")
  _png(tmp_path / "modes" / "b.png", mode="RGB")
  with pytest.raises(
    UsageError, match=r"differ in colour mode: .*a\.png is grey but .*b\.png is RGB"
  ):
    data.load(f"folder:{tmp_path / 'modes'}")


# --- the prepare_data entry point ---


def test_prepare_data_main(tmp_path, capsys):
  # The training flags, when present, define the same names: let them go first, as in a
  # process that imports both.
  if importlib.util.find_spec("dlu.config"):
    importlib.import_module("dlu.config")
  from experiments import prepare_data  # pylint: disable=g-import-not-at-top

  with flagsaver.flagsaver(dataset="digits"):
    prepare_data.main(["prepare_data"])
  assert "1500 train and 297 test images of 8x8x1" in capsys.readouterr().out
  with flagsaver.flagsaver(dataset=f"npz:{tmp_path}/missing.npz"), pytest.raises(SystemExit) as e:
    cli.guarded(prepare_data.main, ["prepare_data"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --dataset=npz:") and err.count("\n") == 1
  assert flags.FLAGS["data_dir"].default is None


# --- Subsets of the training split: the validation rows and class-imbalanced subsets.


def test_validation_rows_are_disjoint_fixed_by_seed_and_never_trained_on():
  ds = data.load("digits")
  held = data.hold_out_validation(ds, 0.1, seed=3)
  assert len(held.x_valid) == 150 and len(held.x_train) == 1350 and held.x_test is ds.x_test
  rows = {x.tobytes(): i for i, x in enumerate(ds.x_train)}  # digits has no duplicate rows
  assert len(rows) == len(ds.x_train)
  valid = {rows[x.tobytes()] for x in held.x_valid}
  train = [rows[x.tobytes()] for x in held.x_train]
  assert not valid & set(train) and len(valid) + len(train) == len(ds.x_train)
  assert train == sorted(train)  # training rows keep their stored order
  np.testing.assert_array_equal(held.y_valid, ds.y_train[sorted(valid)])
  # The same rows in every process and on resume: a function of (data, seed) alone.
  again = data.hold_out_validation(data.load("digits"), 0.1, seed=3)
  np.testing.assert_array_equal(again.x_valid, held.x_valid)
  other = data.hold_out_validation(ds, 0.1, seed=4)
  assert not np.array_equal(other.x_valid, held.x_valid)
  assert data.hold_out_validation(ds, 0.0, seed=3) is ds
  assert held.unsplit is ds and held.scored_on("valid").x_test is held.x_valid
  with pytest.raises(UsageError, match="no validation split"):
    ds.split("valid")


def test_class_balance_gives_the_requested_counts_reproducibly():
  ds = data.hold_out_validation(data.load("digits"), 0.1, seed=0)
  available = np.bincount(ds.y_train)
  tail = data.class_balance(ds, "longtail:10", seed=0)
  counts = np.bincount(tail.y_train, minlength=10)
  n_max = available.min()
  np.testing.assert_array_equal(counts, np.floor(n_max * 10.0 ** -(np.arange(10) / 9) + 1e-9))
  assert counts[0] == n_max and counts[-1] == n_max // 10 and np.all(np.diff(counts) <= 0)
  np.testing.assert_array_equal(data.class_balance(ds, "longtail:10", seed=0).x_train, tail.x_train)
  assert not np.array_equal(data.class_balance(ds, "longtail:10", seed=1).x_train, tail.x_train)
  assert tail.x_valid is ds.x_valid and tail.unsplit is ds.unsplit  # validation stays whole
  explicit = data.class_balance(ds, "counts:" + ",".join(["5"] * 9 + ["1"]), seed=0)
  np.testing.assert_array_equal(np.bincount(explicit.y_train), [5] * 9 + [1])
  assert data.class_balance(ds, None, seed=0) is ds
  for spec, match in (
    ("longtail:0.5", "expected longtail:R"),
    ("counts:1,2", "one positive count per class"),
    ("counts:" + ",".join(["500"] * 10), "class 0 has 1.. training examples, 500 asked for"),
  ):
    with pytest.raises(UsageError, match=match):
      data.class_balance(ds, spec, seed=0)


def test_a_tfds_validation_split_is_the_runs_validation_split(tmp_path, monkeypatch):
  # Mocked builders list no splits; the real ones of e.g. patch_camelyon list validation.
  monkeypatch.setattr(tfds_offline, "splits_to_read", lambda b: ["train", "test", "validation"])
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load("mnist", data_dir=str(tmp_path))
  assert ds.x_valid.shape == (12, 28, 28, 1) and ds.y_valid.shape == (12,)
  held = data.hold_out_validation(ds, 0.1, seed=0)  # its own split: no training rows taken
  assert held is ds and len(held.x_train) == 12


def test_validation_of_rows_on_disk_reads_nothing(tmp_path):
  """npy:PATH stays on disk: the validation rows and the training rows are views of it, and
  the test split's view puts every training row back."""
  from dlu.data.arrays import RowArray  # pylint: disable=g-import-not-at-top

  digits = data.load("digits")
  np.save(tmp_path / "x.npy", digits.x_train)
  ds = data.load(f"npy:{tmp_path / 'x.npy'}")
  held = data.hold_out_validation(ds, 0.2, seed=0)
  assert isinstance(held.x_train, RowArray) and isinstance(held.x_valid, RowArray)
  assert len(held.x_train) + len(held.x_valid) == len(ds.x_train)
  np.testing.assert_array_equal(np.asarray(held.x_valid), np.asarray(ds.x_train)[held.valid_rows])
  whole = held.scored_on("test")
  assert isinstance(whole.x_train, RowArray) and whole.x_test is held.x_test
  np.testing.assert_array_equal(np.asarray(whole.x_train), np.asarray(ds.x_train))
