"""Sources that need no download: scikit-learn's digits, NumPy .npz archives, folders of images."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from dlu.data.arrays import Dataset, assemble
from dlu.errors import UsageError

DIGITS_NUM_TEST = 297
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_CHANNEL_NAMES = {1: "grey", 3: "RGB", 4: "RGBA"}


def load_digits() -> Dataset:
  """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255, fixed 1500/297 split: for smoke runs."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  # slow; only this needs it

  digits = datasets.load_digits()
  x = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  y = digits.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  train, test = perm[:-DIGITS_NUM_TEST], perm[-DIGITS_NUM_TEST:]
  return Dataset(
    name="digits",
    x_train=x[train],
    y_train=y[train],
    x_test=x[test],
    y_test=y[test],
    num_classes=10,
  )


# Deflate expands at most ~1032:1: a member claiming more than this is lying about its size.
_MAX_DEFLATE_RATIO = 1100


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, size: int) -> None:
  """UsageError unless the .npy header of `info` declares a plain array of as many bytes as
  the archive holds for it (checked before anything is allocated)."""
  if info.compress_size > size:
    raise UsageError(
      f"{where} claims {info.compress_size:,} bytes in a file of {size:,}: the file is damaged"
    )
  with zf.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    header = f.tell() if f.seekable() else None
  if dtype.hasobject:
    raise UsageError(f"{where} holds Python objects (pickled data), which are not read")
  declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
  limit = info.compress_size * (_MAX_DEFLATE_RATIO if info.compress_type else 1)
  held = info.file_size - (header or 0)
  if declared > limit + 4096 or (header is not None and declared != held):
    raise UsageError(
      f"{where} declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but the archive "
      f"holds {held:,} bytes for it: the file is damaged"
    )


def read_npz(dataset: str, path: str) -> dict[str, np.ndarray]:
  """The arrays of a NumPy .npz archive holding x (and optionally y, x_test, y_test).

  Every failure mode of a damaged or foreign file is one UsageError naming it: an .npy
  under an .npz name, a damaged zip or deflate stream, headers declaring sizes the file
  does not hold (checked before allocating), pickled objects.
  """
  what = f"--dataset={dataset}"
  if not os.path.isfile(path):
    raise UsageError(
      f"{what}: no such file {path}; expected a NumPy .npz archive with an array 'x'"
    )
  arrays = {}
  try:
    with open(path, "rb") as raw:
      magic = raw.read(6)
    if magic == b"\x93NUMPY":
      raise UsageError(
        f"{what}: {path} is a single .npy array; expected an .npz archive with 'x' "
        "(np.savez(path, x=...))"
      )
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        if not info.filename.endswith(".npy"):
          continue
        name = info.filename[: -len(".npy")]
        where = f"{what}: array '{name}' of {path}"
        _member_header(zf, info, where, os.path.getsize(path))
        with zf.open(info) as f:
          arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
  except UsageError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise UsageError(f"{what}: cannot read {path} as a NumPy .npz archive ({e})") from e
  if "x" not in arrays:
    raise UsageError(
      f"{what}: {path} has no array 'x' (it has: {', '.join(sorted(arrays)) or 'none'}); "
      "expected images x [N, H, W(, C)] or vectors x [N, D], and optional y, x_test, y_test"
    )
  return arrays


def load_npz(dataset: str, path: str, arrays: dict[str, np.ndarray] | None = None) -> Dataset:
  """Images x [N, H, W(, C)] (and optionally y, x_test, y_test) of a NumPy .npz archive."""
  what = f"--dataset={dataset}"
  if arrays is None:
    arrays = read_npz(dataset, path)
  return assemble(
    dataset,
    f"{what}: {path}",
    arrays["x"],
    arrays.get("y"),
    arrays.get("x_test"),
    arrays.get("y_test"),
  )


def _image_files(directory: str) -> list[str]:
  """Image files under `directory`, recursively, in a fixed (sorted) order."""
  found = []
  for root, dirs, files in os.walk(directory):  # Directory symlinks are not followed.
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found.extend(
      os.path.join(root, f)
      for f in sorted(files)
      if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )
  return found


def decode_image(path: str, what: str) -> np.ndarray:
  """[H, W, C] uint8; palette and 1-bit images are widened, other modes refused."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as im:
      mode = {"1": "L", "P": "RGBA" if "transparency" in im.info else "RGB"}.get(im.mode, im.mode)
      if mode not in ("L", "RGB", "RGBA"):
        raise UsageError(
          f"{what}: {path} has colour mode {im.mode}; expected grey (L), RGB or RGBA"
        )
      x = np.asarray(im.convert(mode), dtype=np.uint8)
  # PIL.UnidentifiedImageError is an OSError; a damaged PNG chunk can be a SyntaxError.
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"{what}: cannot decode image {path} ({e})") from e
  return x if x.ndim == 3 else x[..., None]


def load_folder(dataset: str, directory: str) -> Dataset:
  """PNG/JPEG images; sub-folder names (sorted) are the labels, a flat folder is unlabelled."""
  images, labels, num_classes = read_folder(dataset, directory)
  return assemble(dataset, f"--dataset={dataset}", images, labels, num_classes=num_classes)


def read_folder(dataset: str, directory: str) -> tuple[np.ndarray, np.ndarray | None, int | None]:
  """Every image of a folder in sorted file order [N, H, W, C] uint8, their labels (sub-folder
  indices) or None, and the class count."""
  what = f"--dataset={dataset}"
  files, labels, class_names = list_folder(dataset, directory)
  images = []
  for path in files:
    x = decode_image(path, what)
    if images and x.shape != images[0].shape:
      raise UsageError(shape_mismatch(what, files[0], images[0].shape, path, x.shape))
    images.append(x)
  return np.stack(images), labels, len(class_names) if class_names else None


def list_folder(
  dataset: str, directory: str
) -> tuple[list[str], np.ndarray | None, list[str] | None]:
  """A folder's image files in sorted order, their labels (sub-folder indices, int32 [N]) or
  None, and the class names (the sub-folders, sorted) or None; nothing is decoded. A file
  reached twice (symlinks, hard links) is listed once, at its first path; under two classes it
  is refused."""
  what = f"--dataset={dataset}"
  if not os.path.isdir(directory):
    raise UsageError(f"{what}: no such directory {directory}; expected a folder of PNG/JPEG images")
  entries = sorted(e for e in os.listdir(directory) if not e.startswith("."))
  top = [
    os.path.join(directory, e)
    for e in entries
    if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, e))
  ]
  # Symlinked class folders are skipped: they would loop or count images twice.
  classes = {
    e: _image_files(os.path.join(directory, e))
    for e in entries
    if os.path.isdir(os.path.join(directory, e)) and not os.path.islink(os.path.join(directory, e))
  }
  classes = {name: files for name, files in classes.items() if files}
  if top and classes:
    raise UsageError(
      f"{what}: {directory} mixes images at its top level ({os.path.basename(top[0])}) "
      f"with class sub-folders ({next(iter(classes))}/); use one or the other"
    )
  if not top and not classes:
    raise UsageError(
      f"{what}: no images in {directory}; expected {', '.join(IMAGE_EXTENSIONS)} "
      "files, optionally in one sub-folder per class"
    )
  if not classes:
    return _once(what, top, None)[0], None, None
  files = [f for fs in classes.values() for f in fs]
  labels = np.concatenate([np.full(len(fs), k, np.int32) for k, fs in enumerate(classes.values())])
  files, labels = _once(what, files, labels, list(classes))
  return files, labels, list(classes)


def _once(
  what: str, files: list[str], labels: np.ndarray | None, classes: list[str] | None = None
) -> tuple[list[str], np.ndarray | None]:
  """`files` with each file counted once: a file reached again (through a symlink or a hard
  link) is dropped when it has the same label, and refused when its label differs (it would be
  two examples of two classes, and could fall in both the train and the test split)."""
  seen: dict[tuple[int, int], int] = {}
  keep = []
  for i, path in enumerate(files):
    try:
      st = os.stat(path)
    except OSError:  # a broken symlink: reported (or skipped) when it is decoded
      keep.append(i)
      continue
    first = seen.setdefault((st.st_dev, st.st_ino), i)
    if first == i:
      keep.append(i)
    elif labels is not None and labels[first] != labels[i]:
      raise UsageError(
        f"{what}: {files[first]} and {path} are the same file under two classes "
        f"({classes[labels[first]]!r} and {classes[labels[i]]!r}); keep it in one class folder"
      )
  if len(keep) == len(files):
    return files, labels
  return [files[i] for i in keep], None if labels is None else labels[keep]


def shape_mismatch(what: str, first: str, first_shape: tuple, path: str, shape: tuple) -> str:
  """The message for an image whose [H, W, C] differs from the first image's."""
  (h, w, c), (h0, w0, c0) = shape, first_shape
  if (h, w) != (h0, w0):
    return (
      f"{what}: images differ in size: {first} is {h0}x{w0} but {path} is {h}x{w} (HxW); all "
      "images must have the same size"
    )
  return (
    f"{what}: images differ in colour mode: {first} is {_CHANNEL_NAMES.get(c0, c0)} but {path} "
    f"is {_CHANNEL_NAMES.get(c, c)}; convert them all to one mode"
  )
