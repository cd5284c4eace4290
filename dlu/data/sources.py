"""The entry points: a --dataset string parsed, handed to its source, and described.

"digits", "npz:PATH" and "folder:DIR" are read by dlu.data.local; any other name is a
tfds dataset, read (and prepared when it must be) by dlu.data.tfds_offline.
"""

from __future__ import annotations

import os

from dlu.data import local, tfds_offline
from dlu.data.arrays import ACCEPTED_FORMS, ImageData
from dlu.errors import UsageError

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


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
      if not dataset[len(kind) + 1 :]:
        raise UsageError(
          f"--dataset={dataset} names no {'file' if kind == 'npz' else 'directory'}; "
          f"expected {kind}:{arg}"
        )
      return kind, os.path.expanduser(dataset[len(kind) + 1 :])
  return "tfds", dataset


def _data_dir(data_dir: str | None) -> str:
  """An explicit --data_dir must exist (a typo should not scatter data); the default is created."""
  if data_dir:
    if not os.path.isdir(os.path.expanduser(data_dir)):
      raise UsageError(
        f"--data_dir={data_dir} does not exist; create it, or leave --data_dir unset "
        f"to use {default_data_dir()}"
      )
    return os.path.expanduser(data_dir)
  path = default_data_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UsageError(
      f"--data_dir: cannot create the default data directory {path} ({e}); "
      "set --data_dir or $TFDS_DATA_DIR to a writable directory"
    ) from e
  return path


def _load(dataset: str, data_dir: str | None, idx_dir: str | None) -> tuple[ImageData, str]:
  kind, arg = _parse(dataset)
  dataset = dataset.strip()
  if kind == "digits":
    return local.load_digits(), "ships with scikit-learn; nothing to prepare"
  if kind == "npz":
    return local.load_npz(dataset, arg), f"read from {arg}"
  if kind == "folder":
    return local.load_folder(dataset, arg), f"decoded from the images in {arg}"
  if (
    idx_dir
    and tfds_offline.is_fashion_mnist(dataset)
    and not os.path.isdir(os.path.expanduser(idx_dir))
  ):
    raise UsageError(
      f"--idx_dir={idx_dir} does not exist; expected a directory with the four "
      f"Fashion-MNIST IDX files ({', '.join(tfds_offline.idx_file_names())})"
    )
  return tfds_offline.load(
    dataset,
    _data_dir(data_dir),
    os.path.expanduser(idx_dir) if idx_dir else DEFAULT_IDX_DIR,
    explicit_idx=bool(idx_dir),
  )


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
  return (
    f"{len(data.x_train)} train and {len(data.x_test)} test images of {h}x{w}x{c} "
    f"{data.x_train.dtype}, {labels}"
  )


def prepare(dataset: str, *, data_dir: str | None = None, idx_dir: str | None = None) -> str:
  """Makes `dataset` readable offline (prepared, decoded and cached once); says where it is.

  Raises UsageError when it cannot, e.g. fashion_mnist with neither IDX files nor TensorFlow.
  """
  data, where = _load(dataset, data_dir, idx_dir)
  return f"{dataset.strip()}: {where}; {describe(data)}"
