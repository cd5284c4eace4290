"""Image datasets as arrays in memory, and the order in which training batches visit them.

    ds = data.load("fashion_mnist")   # or "digits", "mnist", "cifar10", "npz:PATH", "folder:DIR"
    sampler = data.BatchSampler(len(ds.x_train), 128, seed=0)
    x = data.normalize(ds.x_train[sampler.indices(step)])

The datasets are small, so they are decoded once, cached, and batched from memory.
Reading needs no TensorFlow; only downloading new tfds datasets does (see tfds_offline).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any

import numpy as np

from dlu.errors import UsageError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
PIXEL_RANGES = ("unit", "symmetric")
ACCEPTED_FORMS = ("digits, fashion_mnist, mnist, cifar10, ... (any tfds image dataset, as "
                  "NAME[/CONFIG][:VERSION]), npz:PATH, folder:DIR")
VALID_CHANNELS = (1, 3, 4)
HELD_OUT_FRACTION = 0.1
DIGITS_NUM_TEST = 297
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_CHANNEL_NAMES = {1: "grey", 3: "RGB", 4: "RGBA"}


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare by identity
class ImageData:
  """A whole dataset held in host memory; small enough to batch from RAM or device memory."""

  name: str
  x_train: np.ndarray  # [N, H, W, C] uint8 in 0..255, or float32 in [0, 1]
  y_train: np.ndarray | None  # [N] int32; None when unlabelled
  x_test: np.ndarray  # [M, H, W, C], same dtype and image shape as x_train
  y_test: np.ndarray | None  # [M] int32
  num_classes: int | None

  def __post_init__(self):
    # Catches mismatched splits at construction, not deep inside a jitted step.
    if self.x_train.ndim != 4 or self.x_test.shape[1:] != self.x_train.shape[1:]:
      raise UsageError(f"ImageData({self.name}): x_train {self.x_train.shape} and x_test "
                       f"{self.x_test.shape} must both be [N, H, W, C] with the same image shape")
    for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
      if y is not None and y.shape != (len(x),):
        raise UsageError(f"ImageData({self.name}): y_{split} has shape {y.shape}, expected ({len(x)},)")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]


def normalize(x: Any, pixel_range: str = "unit") -> Any:
  """Maps stored pixels to the model's input range.

  Only array methods are used, so numpy stays numpy, jax stays jax, and it traces under
  `jax.jit` (the dtype is static). Data stays uint8 until here: 4x less memory.
  """
  if pixel_range not in PIXEL_RANGES:
    raise UsageError(f"--pixel_range={pixel_range!r} is not supported; expected one of "
                     f"{', '.join(repr(r) for r in PIXEL_RANGES)}")
  if not hasattr(x, "dtype"):
    x = np.asarray(x)
  if x.dtype == np.uint8:
    x = x.astype(np.float32)
    # Written so that 0 and 255 land exactly on the ends of the range, also under XLA.
    return x / np.float32(255) if pixel_range == "unit" else (x * 2 - 255) / np.float32(255)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:  # (bfloat16 is no np.floating)
    raise UsageError(f"normalize: expected uint8 or float pixels, got {x.dtype}")
  return x if pixel_range == "unit" else x * 2 - 1


class BatchSampler:
  """Deterministic per-epoch shuffles: the batch of global step s depends only on (seed, s).

  So a resumed run sees exactly the batches it would have seen, and the global batch is
  the same whatever the number of processes: process p takes the p-th contiguous slice.
  Each epoch's remainder is dropped: every batch is full, no example repeats in an epoch.
  """

  def __init__(self, num_examples: int, global_batch_size: int, *, seed: int,
               process_index: int = 0, process_count: int = 1):
    if num_examples < 1:
      raise UsageError(f"--dataset has no training examples (num_examples={num_examples})")
    if global_batch_size < 1:
      raise UsageError(f"--batch_size={global_batch_size} must be positive")
    if global_batch_size > num_examples:
      raise UsageError(f"--batch_size={global_batch_size} is larger than the {num_examples} "
                       f"training examples; use at most {num_examples}")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise UsageError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if global_batch_size % process_count:
      raise UsageError(f"--batch_size={global_batch_size} must be divisible by the number of "
                       f"processes ({process_count})")
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
    return self.permutation(epoch)[i * b:(i + 1) * b]

  def indices(self, step: int) -> np.ndarray:
    """This process's contiguous slice of `global_indices(step)`; [global_batch_size // process_count]."""
    start = self.process_index * self.local_batch_size
    return self.global_indices(step)[start:start + self.local_batch_size]


# --- Checks shared by the local sources (npz, folder). ---

def _check_images(x: Any, what: str) -> np.ndarray:
  """`x` as [N, H, W, C] uint8, or float32 in [0, 1]; `what` names its origin in errors."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in VALID_CHANNELS:
    raise UsageError(f"{what} has shape {x.shape}; expected images [N, H, W] or [N, H, W, C] "
                     f"with C in {', '.join(map(str, VALID_CHANNELS))}")
  if x.shape[0] == 0 or 0 in x.shape[1:3]:
    raise UsageError(f"{what} is empty (shape {x.shape})")
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise UsageError(f"{what} has dtype {x.dtype}; expected uint8 in 0..255 or float in [0, 1]")
  x = x.astype(np.float32)
  if not np.all((x >= 0) & (x <= 1)):  # also false for NaN
    raise UsageError(f"{what} is float with values outside [0, 1] (min {np.nanmin(x):g}, max "
                     f"{np.nanmax(x):g}); expected uint8 in 0..255 or float in [0, 1]")
  return x


def _check_labels(y: Any, num_examples: int, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) != num_examples:
    raise UsageError(f"{what} has shape {y.shape}; expected ({num_examples},), one label per image")
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
    raise UsageError(f"{what} has dtype {y.dtype}; expected integer class indices")
  if y.min() < 0:
    raise UsageError(f"{what} has negative labels (min {y.min()}); expected class indices 0..K-1")
  return y.astype(np.int32)


def _held_out_split(x: np.ndarray, y: np.ndarray | None, what: str) -> tuple[Any, Any, Any, Any]:
  """A fixed shuffle (seed 0) whose last 10% (at least one) is the test split: same in every run."""
  if len(x) < 2:
    raise UsageError(f"{what} has {len(x)} image; at least 2 are needed to hold out a test split")
  perm = np.random.default_rng(0).permutation(len(x))
  num_test = max(1, int(len(x) * HELD_OUT_FRACTION))
  train, test = perm[:-num_test], perm[-num_test:]
  return x[train], None if y is None else y[train], x[test], None if y is None else y[test]


def _assemble(name: str, what: str, x: Any, y: Any = None, x_test: Any = None, y_test: Any = None,
              num_classes: int | None = None) -> ImageData:
  """Validates a local source's arrays; holds out a test split when none is given."""
  x = _check_images(x, f"{what}: x")
  y = None if y is None else _check_labels(y, len(x), f"{what}: y")
  if x_test is None:
    if y_test is not None:
      raise UsageError(f"{what}: has y_test but no x_test")
    x, y, x_test, y_test = _held_out_split(x, y, what)
  else:
    x_test = _check_images(x_test, f"{what}: x_test")
    if x_test.shape[1:] != x.shape[1:]:
      raise UsageError(f"{what}: x_test images are {'x'.join(map(str, x_test.shape[1:]))} but x images "
                       f"are {'x'.join(map(str, x.shape[1:]))} (HxWxC); both need the same shape")
    if x_test.dtype != x.dtype:
      raise UsageError(f"{what}: x_test is {x_test.dtype} but x is {x.dtype}; both need the same dtype")
    if (y is None) != (y_test is None):
      raise UsageError(f"{what}: labels for only one split; give both y and y_test, or neither")
    y_test = None if y_test is None else _check_labels(y_test, len(x_test), f"{what}: y_test")
  if y is not None and num_classes is None:
    num_classes = int(max(y.max(initial=0), y_test.max(initial=0))) + 1
  return ImageData(name=name, x_train=x, y_train=y, x_test=x_test, y_test=y_test,
                   num_classes=num_classes if y is not None else None)


# --- Sources that need no download. ---

def _load_digits() -> ImageData:
  """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255, fixed 1500/297 split: for smoke runs."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  # slow; only this needs it

  digits = datasets.load_digits()
  x = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  train, test = perm[:-DIGITS_NUM_TEST], perm[-DIGITS_NUM_TEST:]
  return ImageData(name="digits", x_train=x[train], y_train=y[train], x_test=x[test],
                   y_test=y[test], num_classes=10)


def _load_npz(dataset: str, path: str) -> ImageData:
  """Arrays x (and optionally y, x_test, y_test) of a NumPy .npz archive."""
  what = f"--dataset={dataset}"
  if not os.path.isfile(path):
    raise UsageError(f"{what}: no such file {path}; expected a NumPy .npz archive with an array 'x'")
  try:
    with np.load(path, allow_pickle=False) as archive:
      if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{what}: {path} is a single .npy array; expected an .npz archive with 'x'")
      arrays = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"{what}: cannot read {path} as a NumPy .npz archive ({e})") from e
  if "x" not in arrays:
    raise UsageError(f"{what}: {path} has no array 'x' (it has: {', '.join(sorted(arrays)) or 'none'}); "
                     "expected images x [N, H, W(, C)] and optional y, x_test, y_test")
  return _assemble(dataset, f"{what}: {path}", arrays["x"], arrays.get("y"),
                   arrays.get("x_test"), arrays.get("y_test"))


def _image_files(directory: str) -> list[str]:
  """Image files under `directory`, recursively, in a fixed (sorted) order."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found.extend(os.path.join(root, f) for f in sorted(files)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
  return found


def _decode_image(path: str, what: str) -> np.ndarray:
  """[H, W, C] uint8; palette and 1-bit images are widened, other modes refused."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as im:
      mode = {"1": "L", "P": "RGBA" if "transparency" in im.info else "RGB"}.get(im.mode, im.mode)
      if mode not in ("L", "RGB", "RGBA"):
        raise UsageError(f"{what}: {path} has colour mode {im.mode}; expected grey (L), RGB or RGBA")
      x = np.asarray(im.convert(mode), dtype=np.uint8)
  except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"{what}: cannot decode image {path} ({e})") from e
  return x if x.ndim == 3 else x[..., None]


def _load_folder(dataset: str, directory: str) -> ImageData:
  """PNG/JPEG images; sub-folder names (sorted) are the labels, a flat folder is unlabelled."""
  what = f"--dataset={dataset}"
  if not os.path.isdir(directory):
    raise UsageError(f"{what}: no such directory {directory}; expected a folder of PNG/JPEG images")
  entries = sorted(e for e in os.listdir(directory) if not e.startswith("."))
  top = [os.path.join(directory, e) for e in entries
         if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, e))]
  classes = {e: _image_files(os.path.join(directory, e)) for e in entries
             if os.path.isdir(os.path.join(directory, e))}
  classes = {name: files for name, files in classes.items() if files}
  if top and classes:
    raise UsageError(f"{what}: {directory} mixes images at its top level ({os.path.basename(top[0])}) "
                     f"with class sub-folders ({next(iter(classes))}/); use one or the other")
  if not top and not classes:
    raise UsageError(f"{what}: no images in {directory}; expected {', '.join(IMAGE_EXTENSIONS)} "
                     "files, optionally in one sub-folder per class")
  files = [f for fs in classes.values() for f in fs] if classes else top
  labels = (np.concatenate([np.full(len(fs), k, np.int32) for k, fs in enumerate(classes.values())])
            if classes else None)
  images = []
  for path in files:
    x = _decode_image(path, what)
    if images and x.shape != images[0].shape:
      (h, w, c), (h0, w0, c0) = x.shape, images[0].shape
      if (h, w) != (h0, w0):
        raise UsageError(f"{what}: images differ in size: {files[0]} is {h0}x{w0} but {path} is "
                         f"{h}x{w} (HxW); all images must have the same size")
      raise UsageError(f"{what}: images differ in colour mode: {files[0]} is {_CHANNEL_NAMES[c0]} "
                       f"but {path} is {_CHANNEL_NAMES[c]}; convert them all to one mode")
    images.append(x)
  return _assemble(dataset, what, np.stack(images), labels,
                   num_classes=len(classes) if classes else None)


# --- The entry points. ---

def default_data_dir() -> str:
  """Where tfds keeps prepared datasets unless told otherwise: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _parse(dataset: str) -> tuple[str, str]:
  """(kind, argument): ("digits", ""), ("npz", path), ("folder", dir) or ("tfds", name)."""
  if not isinstance(dataset, str) or not dataset.strip():
    raise UsageError(f"--dataset is empty; expected one of: {ACCEPTED_FORMS}")
  dataset = dataset.strip()
  if dataset == "digits":
    return "digits", ""
  for kind, arg in (("npz", "PATH"), ("folder", "DIR")):
    if dataset.startswith(kind + ":"):
      if not dataset[len(kind) + 1:]:
        raise UsageError(f"--dataset={dataset} names no {'file' if kind == 'npz' else 'directory'}; "
                         f"expected {kind}:{arg}")
      return kind, os.path.expanduser(dataset[len(kind) + 1:])
  return "tfds", dataset


def _data_dir(data_dir: str | None) -> str:
  """An explicit --data_dir must exist (a typo should not scatter data); the default is created."""
  if data_dir:
    if not os.path.isdir(os.path.expanduser(data_dir)):
      raise UsageError(f"--data_dir={data_dir} does not exist; create it, or leave --data_dir unset "
                       f"to use {default_data_dir()}")
    return os.path.expanduser(data_dir)
  path = default_data_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UsageError(f"--data_dir: cannot create the default data directory {path} ({e}); "
                     "set --data_dir or $TFDS_DATA_DIR to a writable directory") from e
  return path


def _load(dataset: str, data_dir: str | None, idx_dir: str | None) -> tuple[ImageData, str]:
  kind, arg = _parse(dataset)
  dataset = dataset.strip()
  if kind == "digits":
    return _load_digits(), "ships with scikit-learn; nothing to prepare"
  if kind == "npz":
    return _load_npz(dataset, arg), f"read from {arg}"
  if kind == "folder":
    return _load_folder(dataset, arg), f"decoded from the images in {arg}"
  from dlu import tfds_offline  # pylint: disable=g-import-not-at-top  # imports tfds: only when needed

  if idx_dir and tfds_offline.is_fashion_mnist(dataset) and not os.path.isdir(os.path.expanduser(idx_dir)):
    raise UsageError(f"--idx_dir={idx_dir} does not exist; expected a directory with the four "
                     f"Fashion-MNIST IDX files ({', '.join(tfds_offline.idx_file_names())})")
  return tfds_offline.load(dataset, _data_dir(data_dir),
                           os.path.expanduser(idx_dir) if idx_dir else DEFAULT_IDX_DIR,
                           explicit_idx=bool(idx_dir))


def load(dataset: str, *, data_dir: str | None = None, idx_dir: str | None = None) -> ImageData:
  """The whole dataset as arrays in host memory, preparing it first when it must and can.

  dataset: "digits", a tfds name ("fashion_mnist", "mnist", "NAME/CONFIG:VERSION"),
    "npz:PATH" or "folder:DIR".
  data_dir: where tfds datasets are prepared (default: `default_data_dir()`).
  idx_dir: the Fashion-MNIST IDX files (default DEFAULT_IDX_DIR), used to prepare
    fashion_mnist without TensorFlow.
  """
  return _load(dataset, data_dir, idx_dir)[0]


def describe(data: ImageData) -> str:
  h, w, c = data.image_shape
  labels = f"{data.num_classes} classes" if data.num_classes is not None else "unlabelled"
  return (f"{len(data.x_train)} train and {len(data.x_test)} test images of {h}x{w}x{c} "
          f"{data.x_train.dtype}, {labels}")


def prepare(dataset: str, *, data_dir: str | None = None, idx_dir: str | None = None) -> str:
  """Makes `dataset` readable offline (prepared, decoded and cached once); says where it is.

  Raises UsageError when it cannot, e.g. fashion_mnist with neither IDX files nor TensorFlow.
  """
  data, where = _load(dataset, data_dir, idx_dir)
  return f"{dataset.strip()}: {where}; {describe(data)}"
