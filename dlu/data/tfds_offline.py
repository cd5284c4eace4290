"""tfds image datasets without TensorFlow: read, cache, and fashion_mnist built from IDX files.

Reading goes through `tfds.data_source` on array_record data. Decoding PNGs costs
~0.3 ms per example, so the decoded arrays are cached as `dlu_arrays.npz` in the
dataset's version folder (keyed by a hash of its `dataset_info.json`); a cached load
does not even import tfds.

The stock fashion_mnist builder downloads and encodes through TensorFlow. Here the same
dataset (name, version, features) is written from the original IDX files (Debian's
`dataset-fashion-mnist` puts them in DEFAULT_IDX_DIR), encoding PNGs with PIL, as
array_record; the stock `tfds.data_source("fashion_mnist", data_dir=...)` then reads it.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import uuid
import zipfile
import zlib
from typing import Any

import numpy as np
from absl import logging

from dlu.data.arrays import ACCEPTED_FORMS, Dataset, RowArray
from dlu.errors import UsageError
from dlu.files import atomic_save

CACHE_FILE = "dlu_arrays.npz"
# Decoded splits larger than this stay on disk, read by row (TfdsArray); None: a quarter of the
# host's memory.
IN_MEMORY_LIMIT: int | None = None
SPLITS = ("train", "test")
VALIDATION = "validation"  # read too when a dataset has it: the run's validation split
_NAME_RE = re.compile(
  r"^(?P<name>[a-z0-9_]+)(?:/(?P<config>[\w.-]+))?(?::(?P<version>\d+\.\d+\.\d+))?$"
)
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_CACHE_FORMAT = 1
_READ_CHUNK = 4096

FASHION_MNIST = "fashion_mnist"
IMAGE_SIZE = 28
NUM_CLASSES = 10
# split -> (images file, labels file), as published by Zalando.
IDX_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_UBYTE = 0x08  # IDX type code for unsigned bytes


def parse_name(dataset: str) -> re.Match[str]:
  match = _NAME_RE.match(dataset)
  if match is None:
    raise UsageError(
      f"--dataset={dataset!r} is not a dataset name; expected one of: {ACCEPTED_FORMS}"
    )
  return match


def is_fashion_mnist(dataset: str) -> bool:
  return parse_name(dataset)["name"] == FASHION_MNIST


def idx_file_names() -> list[str]:
  return [f for files in IDX_FILES.values() for f in files]


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _info_hash(version_dir: str) -> str:
  with open(os.path.join(version_dir, "dataset_info.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read_cache(dataset: str, version_dir: str) -> Dataset | None:
  path = os.path.join(version_dir, CACHE_FILE)
  try:
    with np.load(path, allow_pickle=False) as f:
      if int(f["format"]) != _CACHE_FORMAT or str(f["info_sha256"]) != _info_hash(version_dir):
        logging.info("Ignoring stale %s", path)
        return None
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # absent or damaged
    if os.path.exists(path):
      logging.warning("Ignoring unreadable %s: %s", path, e)
    return None
  if _has_validation(version_dir) and "x_valid" not in arrays:
    logging.info("Ignoring %s: it lacks the validation split", path)
    return None
  num_classes = int(arrays["num_classes"])
  return Dataset(
    name=dataset,
    x_train=arrays["x_train"],
    y_train=arrays.get("y_train"),
    x_test=arrays["x_test"],
    y_test=arrays.get("y_test"),
    num_classes=num_classes if num_classes >= 0 else None,
    x_valid=arrays.get("x_valid"),
    y_valid=arrays.get("y_valid"),
  )


def _has_validation(version_dir: str) -> bool:
  """Whether the prepared dataset in `version_dir` has a `validation` split."""
  try:
    with open(os.path.join(version_dir, "dataset_info.json")) as f:
      splits = json.load(f).get("splits", [])
  except (OSError, ValueError):
    return False
  return any(s.get("name") == VALIDATION for s in splits)


def _write_cache(data: Dataset, version_dir: str) -> None:
  """Atomic (temp file then rename), so concurrent readers never see half a file."""
  arrays: dict[str, Any] = {
    "x_train": data.x_train,
    "x_test": data.x_test,
    "num_classes": -1 if data.num_classes is None else data.num_classes,
    "format": _CACHE_FORMAT,
    "info_sha256": _info_hash(version_dir),
  }
  if data.y_train is not None:
    arrays.update(y_train=data.y_train, y_test=data.y_test)
  if data.x_valid is not None:
    arrays["x_valid"] = data.x_valid
    if data.y_valid is not None:
      arrays["y_valid"] = data.y_valid
  path = os.path.join(version_dir, CACHE_FILE)

  def save(tmp: str) -> None:
    with open(tmp, "xb") as f:  # created under the umask; a file object: no .npz appended
      np.savez(f, **arrays)

  try:
    # A shared data_dir may be written by several hosts, whose processes can have the same id:
    # a random suffix keeps their temporary files apart.
    atomic_save(path, save, suffix=f".{uuid.uuid4().hex}")
  except OSError as e:  # e.g. a read-only shared data_dir: still usable, just slower
    logging.warning("Could not cache decoded arrays in %s: %s", path, e)
    return
  logging.info("Cached decoded arrays in %s", path)


def find_cached(dataset: str, data_dir: str) -> tuple[Dataset, str] | None:
  """The cached arrays, found without importing tfds when the version folder is unambiguous."""
  match = parse_name(dataset)
  base = os.path.join(data_dir, match["name"], *([match["config"]] if match["config"] else []))
  if match["version"]:
    version_dirs = [os.path.join(base, match["version"])]
  else:
    version_dirs = [
      d
      for d in glob.glob(os.path.join(base, "*"))
      if _VERSION_RE.match(os.path.basename(d)) and os.path.isdir(d)
    ]
  if len(version_dirs) != 1 or not os.path.isfile(os.path.join(version_dirs[0], CACHE_FILE)):
    return None
  data = _read_cache(dataset, version_dirs[0])
  return None if data is None else (data, os.path.join(version_dirs[0], CACHE_FILE))


def _builder(dataset: str, data_dir: str) -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UsageError(
      f"--dataset={dataset} is not a known dataset; expected one of: {ACCEPTED_FORMS}"
    ) from e
  except (ValueError, AssertionError) as e:  # unknown version or config, or tfrecord on disk
    if "File format is already set" in str(e):
      raise UsageError(
        f"--dataset={dataset} is prepared in --data_dir={data_dir} in a format only TensorFlow "
        "reads (tfrecord); prepare it as array_record in another --data_dir (or delete it there)"
      ) from e
    reason = re.sub(
      r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ',
      "",
      str(e).strip().splitlines()[0],
    ).split(" Here are ")[0]
    configs = getattr(tfds.builder_cls(parse_name(dataset)["name"]), "BUILDER_CONFIGS", None)
    if configs and "BuilderConfig" in reason:
      reason += f"; its configs are: {', '.join(c.name for c in configs)}"
    raise UsageError(f"--dataset={dataset}: {reason}") from e
  features = builder.info.features
  if "image" not in features or not isinstance(features["image"], tfds.features.Image):
    raise UsageError(
      f"--dataset={dataset} has no 'image' feature (it has: {', '.join(features)}); "
      "expected an image dataset"
    )
  return builder


def _within(path: Any, directory: str) -> bool:
  path, directory = os.path.realpath(os.fspath(path)), os.path.realpath(directory)
  return os.path.commonpath([path, directory]) == directory


# --- fashion_mnist from the original IDX files. ---


def _idx_paths(idx_dir: str) -> list[str]:
  return [os.path.join(idx_dir, f) for f in idx_file_names()]


def has_idx_files(idx_dir: str) -> bool:
  return all(os.path.isfile(p) for p in _idx_paths(idx_dir))


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Reads one gzipped IDX file of unsigned bytes, checking magic, rank and length."""

  def fail(problem: str) -> UsageError:
    return UsageError(
      f"--idx_dir: {path} {problem}; expected an original gzipped Fashion-MNIST IDX file"
    )

  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # bad header, truncated stream, bad data
    raise fail(f"is not a readable gzip file ({e})") from e
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise fail(f"is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
  magic = bytes(raw[:4])
  if magic != bytes([0, 0, _UBYTE, ndim]):
    raise fail(
      f"has magic number {magic.hex()}, not {bytes([0, 0, _UBYTE, ndim]).hex()} "
      f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})"
    )
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise fail(
      f"holds {len(raw) - header} bytes of data but its header {dims} promises {expected} "
      "(truncated or corrupt)"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_idx_dir(idx_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> (images [N, 28, 28, 1] uint8, labels [N] int32), validated."""
  missing = [os.path.basename(p) for p in _idx_paths(idx_dir) if not os.path.isfile(p)]
  if missing:
    raise UsageError(
      f"--idx_dir={idx_dir} lacks {', '.join(missing)}; expected the four "
      f"Fashion-MNIST IDX files {', '.join(idx_file_names())}"
    )
  splits = {}
  for split, (images_file, labels_file) in IDX_FILES.items():
    images_path, labels_path = (
      os.path.join(idx_dir, images_file),
      os.path.join(idx_dir, labels_file),
    )
    x, y = read_idx(images_path, 3), read_idx(labels_path, 1)
    if x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
      raise UsageError(
        f"--idx_dir: {images_path} holds {x.shape[1]}x{x.shape[2]} images; "
        f"Fashion-MNIST images are {IMAGE_SIZE}x{IMAGE_SIZE}"
      )
    if len(y) != len(x):
      raise UsageError(
        f"--idx_dir: {labels_path} has {len(y)} labels but {images_path} has "
        f"{len(x)} images; expected one label per image"
      )
    if len(y) and y.max() >= NUM_CLASSES:
      raise UsageError(
        f"--idx_dir: {labels_path} has label {y.max()}; expected 0..{NUM_CLASSES - 1}"
      )
    splits[split] = (x[..., None], y.astype(np.int32))
  return splits


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  buf = io.BytesIO()
  Image.fromarray(image[..., 0], mode="L").save(buf, format="PNG")
  return buf.getvalue()


@functools.cache
def _builder_class() -> type[Any]:
  """The stock builder with its download and TF encoding replaced by the arrays given.

  Subclassing keeps the stock name, version and DatasetInfo (features, description),
  so what is written is exactly what the stock builder reads back. It must not be
  registered: the name `fashion_mnist` belongs to the stock class.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  stock = tfds.builder_cls(FASHION_MNIST)

  class FashionMnistFromIdx(stock, skip_registration=True):  # type: ignore[misc, valid-type]
    name = FASHION_MNIST

    def __init__(self, *, splits: dict[str, tuple[np.ndarray, np.ndarray]], **kwargs):
      self._splits = splits
      super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):  # pylint: disable=arguments-differ
      images, labels = self._splits[split]
      for i in range(len(images)):
        # Encoded bytes, not arrays: tfds would call TensorFlow to encode an array.
        yield i, {"image": _png(images[i]), "label": int(labels[i])}

  return FashionMnistFromIdx


def prepare_from_idx(idx_dir: str, data_dir: str) -> str:
  """Writes `fashion_mnist` as array_record into data_dir; returns the version folder."""
  splits = read_idx_dir(idx_dir)
  builder = _builder_class()(splits=splits, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


# --- Preparing and reading. ---


def _not_prepared_message(dataset: str, data_dir: str, idx_dir: str) -> str:
  hint = ""
  if parse_name(dataset)["name"] == FASHION_MNIST:
    hint = (
      f" (or put the Fashion-MNIST IDX files in --idx_dir={idx_dir}, e.g. "
      "`apt-get install dataset-fashion-mnist`)"
    )
  return (
    f"--dataset={dataset} is not prepared in --data_dir={data_dir} and TensorFlow, needed to "
    f"download and prepare it, is not installed; run `pip install 'dlu[prepare]'` then "
    f"`python -m experiments.prepare_data --dataset={dataset} --data_dir={data_dir}`{hint}"
  )


def ensure_prepared(
  dataset: str, data_dir: str, idx_dir: str, *, explicit_idx: bool = False
) -> tuple[Any, str]:
  """The builder with its data on disk, and how it got there.

  fashion_mnist is written from local IDX files when they are there; other datasets
  are downloaded through tfds, which needs TensorFlow. When tfds serves the builder
  from outside data_dir (as `tfds.testing.mock_data` does), nothing is prepared.
  """
  builder = _builder(dataset, data_dir)
  if builder.is_prepared():
    return builder, "already prepared"
  if not _within(builder.data_dir, data_dir):
    return builder, "served by tfds from elsewhere"
  if builder.name == FASHION_MNIST and (explicit_idx or has_idx_files(idx_dir)):
    logging.info("Preparing fashion_mnist in %s from the IDX files in %s", data_dir, idx_dir)
    prepare_from_idx(idx_dir, data_dir)
    return _builder(dataset, data_dir), f"prepared from the IDX files in {idx_dir}"
  if not tensorflow_available():
    raise UsageError(_not_prepared_message(dataset, data_dir, idx_dir))
  builder.download_and_prepare()
  return builder, "downloaded and prepared by tfds"


def _read_records(source: Any, keys: list[int]) -> list[Any]:
  try:
    return source.__getitems__(keys)  # batched: twice as fast as one by one
  except TypeError:  # the stand-in of tfds.testing.mock_data has only a working __getitem__
    return [source[k] for k in keys]


def _decode_split(source: Any, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray | None]:
  n = len(source)
  if n == 0:
    raise UsageError(f"--dataset={dataset}: split {split!r} is empty")
  images = labels = None
  for start in range(0, n, _READ_CHUNK):
    examples = _read_records(source, list(range(start, min(start + _READ_CHUNK, n))))
    if images is None:
      first = np.asarray(examples[0]["image"])
      images = np.empty((n, *first.shape), first.dtype)
      labels = np.empty(n, np.int32) if "label" in examples[0] else None
    for i, ex in enumerate(examples, start):
      image = np.asarray(ex["image"])
      if image.shape != images.shape[1:]:
        raise UsageError(
          f"--dataset={dataset}: images of split {split!r} vary in size ({image.shape} "
          f"vs {images.shape[1:]}); only fixed-size image datasets are supported"
        )
      images[i] = image
      if labels is not None:
        labels[i] = ex["label"]
    logging.log_every_n_seconds(
      logging.INFO,
      "Decoded %d/%d %s examples of %s",
      10,
      min(start + _READ_CHUNK, n),
      n,
      split,
      dataset,
    )
  if images.dtype != np.uint8:
    raise UsageError(
      f"--dataset={dataset}: images are {images.dtype}; only uint8 images are supported"
    )
  return images, labels


def splits_to_read(builder: Any) -> list[str]:
  """train and test, and validation when the prepared dataset has one."""
  return list(SPLITS) + ([VALIDATION] if VALIDATION in builder.info.splits else [])


def read(dataset: str, builder: Any, data_dir: str) -> Dataset:
  """Decodes both splits through `tfds.data_source`: TensorFlow is not needed to read."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  splits = splits_to_read(builder)
  try:
    sources = tfds.data_source(
      dataset,
      split=splits,
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": "array_record"},
    )
  except (KeyError, ValueError, NotImplementedError) as e:  # no such split; tfrecord-only data
    reason = str(e).strip().splitlines()[0]
    raise UsageError(
      f"--dataset={dataset}: cannot read {builder.data_dir} as array_record "
      f"splits {', '.join(SPLITS)} ({reason})"
    ) from e
  (x_train, y_train), (x_test, y_test), *valid = (
    _decode_split(s, dataset, split) for s, split in zip(sources, splits, strict=True)
  )
  x_valid, y_valid = valid[0] if valid else (None, None)
  label = builder.info.features["label"] if "label" in builder.info.features else None
  num_classes = getattr(label, "num_classes", None) if y_train is not None else None
  if y_train is not None and num_classes is None:
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  return Dataset(
    name=dataset,
    x_train=x_train,
    y_train=y_train,
    x_test=x_test,
    y_test=y_test,
    num_classes=num_classes,
    x_valid=x_valid,
    y_valid=y_valid,
  )


class TfdsArray(RowArray):
  """The decoded `image` of the rows of one split of a prepared tfds dataset, read through
  `tfds.data_source` when indexed; it pickles as (dataset, split, data_dir)."""

  def __init__(
    self, dataset: str, split: str, data_dir: str, example_shape: tuple[int, ...], n: int, **kw
  ):
    self.dataset, self.split, self.data_dir = dataset, split, data_dir
    self._source = None
    super().__init__(n, example_shape, np.uint8, **kw)

  def _read_stored(self, stored: np.ndarray) -> np.ndarray:
    out = np.empty((len(stored), *self.stored_shape), np.uint8)
    for i, ex in enumerate(_read_records(self._open(), stored.tolist())):
      image = np.asarray(ex["image"])
      if image.shape != out.shape[1:] or image.dtype != np.uint8:
        raise UsageError(
          f"--dataset={self.dataset}: example {int(stored[i])} of split {self.split!r} is "
          f"{image.dtype} {image.shape}; expected uint8 {out.shape[1:]} like the rest"
        )
      out[i] = image
    return out

  def _open(self) -> Any:
    if self._source is None:
      self._source = _data_source(self.dataset, self.split, self.data_dir)
    return self._source

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_source": None}

  def __repr__(self) -> str:
    return f"TfdsArray({self.dataset}:{self.split}, shape={self.shape}, dtype={self.dtype})"


def _data_source(dataset: str, split: str, data_dir: str, **kwargs: Any) -> Any:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds.data_source(
    dataset,
    split=split,
    data_dir=data_dir,
    download=False,
    builder_kwargs={"file_format": "array_record"},
    **kwargs,
  )


def _in_memory_limit() -> int:
  if IN_MEMORY_LIMIT is not None:
    return IN_MEMORY_LIMIT
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
  except (ValueError, OSError, AttributeError):
    return 4 << 30


def _on_disk(dataset: str, builder: Any, data_dir: str) -> Dataset | None:
  """The dataset read by row (TfdsArray splits) when its decoded images would not fit
  `_in_memory_limit()`; None when they fit (or vary in size: decoding them whole says so)."""
  shape = tuple(builder.info.features["image"].shape)
  if None in shape:
    return None
  names = splits_to_read(builder)
  try:
    sizes = {split: builder.info.splits[split].num_examples for split in names}
  except KeyError:  # sizes unknown (mock data): decode whole
    return None
  if sum(sizes.values()) * int(np.prod(shape)) <= _in_memory_limit():
    return None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  splits, labels = {}, {}
  for split in names:
    splits[split] = TfdsArray(dataset, split, data_dir, shape, sizes[split])
    if "label" in builder.info.features:  # labels without decoding a single image
      raw = _data_source(dataset, split, data_dir, decoders={"image": tfds.decode.SkipDecoding()})
      labels[split] = np.fromiter(
        (
          ex["label"]
          for start in range(0, sizes[split], _READ_CHUNK)
          for ex in _read_records(raw, list(range(start, min(start + _READ_CHUNK, sizes[split]))))
        ),
        np.int32,
        count=sizes[split],
      )
  label = builder.info.features["label"] if labels else None
  num_classes = getattr(label, "num_classes", None) if labels else None
  return Dataset(
    name=dataset,
    x_train=splits["train"],
    y_train=labels.get("train"),
    x_test=splits["test"],
    y_test=labels.get("test"),
    num_classes=num_classes,
    x_valid=splits.get(VALIDATION),
    y_valid=labels.get(VALIDATION),
  )


def load(
  dataset: str, data_dir: str, idx_dir: str, *, explicit_idx: bool = False
) -> tuple[Dataset, str]:
  """The dataset's arrays (or rows read from disk, when too large) and where they came from."""
  cached = find_cached(dataset, data_dir) if IN_MEMORY_LIMIT is None else None
  if cached is not None:
    return cached[0], f"prepared; decoded arrays cached in {cached[1]}"
  builder, how = ensure_prepared(dataset, data_dir, idx_dir, explicit_idx=explicit_idx)
  lazy = _on_disk(dataset, builder, data_dir)
  if lazy is not None:
    return lazy, f"{how}; read by row from {builder.data_dir} (too large to hold decoded)"
  version_dir = os.fspath(builder.data_dir)
  cacheable = builder.is_prepared() and _within(version_dir, data_dir)
  data = _read_cache(dataset, version_dir) if cacheable else None
  if data is not None:  # found only through tfds: a config, or several versions on disk
    return data, f"{how}; decoded arrays cached in {os.path.join(version_dir, CACHE_FILE)}"
  data = read(dataset, builder, data_dir)
  if cacheable:
    _write_cache(data, version_dir)
  return data, f"{how}; stored in {version_dir}"
