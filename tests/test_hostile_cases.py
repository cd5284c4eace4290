"""Hostile input against a trained workdir: each case exits with the documented status and
one line `error: ...`, and leaves every byte of the workdir as it was."""

import gzip
import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from absl import logging

from dlu import config
from dlu.runtime import checkpointing, cli
from dlu.train import loop
from dlu.train.workspace import WorkdirLock

# The trained run every case starts from (seed 0, 4 steps, checkpoints at 2 and 4).
BASE = dict(
  dataset="digits",
  hidden_units=16,
  batch_size=64,
  num_steps=4,
  checkpoint_every=2,
  log_every=2,
  eval_every=4,
  eval_batch_size=512,
  num_images=8,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  loop.train_and_evaluate(config.make_config(**BASE), workdir)
  return workdir


def snapshot(root):
  """Every path under `root` (hidden ones too) with its bytes, or its link target."""
  if not os.path.lexists(root):
    return None
  if not os.path.isdir(root) or os.path.islink(root):
    return {".": open(root, "rb").read() if os.path.isfile(root) else os.readlink(root)}
  out = {}
  for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      if os.path.islink(path):
        out[rel] = "-> " + os.readlink(path)
      elif os.path.isfile(path):
        out[rel] = open(path, "rb").read()
      else:
        out[rel] = "dir"
  return out


def run(cfg, workdir, capsys):
  """The exit status and output of `experiments.train` for `cfg`, in this process."""
  verbosity = logging.get_verbosity()
  try:
    cli.guarded(lambda argv: loop.train_and_evaluate(cfg, workdir), ["train"])
    code = 0
  except SystemExit as e:
    code = e.code
  finally:
    logging.set_verbosity(verbosity)
  out = capsys.readouterr()
  return code, out.out, out.err


# --- Workdir mutations: (tmp_path, workdir) -> None.
def _flip(path, offset=16):
  with open(path, "r+b") as f:
    f.seek(min(offset, os.path.getsize(path) - 1))
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))


def _step_file(workdir, pattern, step=4):
  root = os.path.join(workdir, "checkpoints", str(step))
  for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      rel = os.path.relpath(os.path.join(dirpath, name), root)
      if pattern(rel):
        return os.path.join(root, rel)
  raise AssertionError(f"no {pattern} in {root}")


def _is_data(rel):
  return "/d/" in rel


def _replace_with_dir(name):
  def mutate(tmp, w):
    path = os.path.join(w, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(path)

  return mutate


def _replace_with_file(name):
  def mutate(tmp, w):
    path = os.path.join(w, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    open(path, "w").write("x")

  return mutate


def _self_symlink(name):
  def mutate(tmp, w):
    path = os.path.join(w, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.symlink(path, path)  # A loop: every open fails with ELOOP.

  return mutate


def _append(name, data):
  def mutate(tmp, w):
    with open(os.path.join(w, name), "ab") as f:
      f.write(data)

  return mutate


# --- Data files: tmp_path -> the --dataset value.
def _npz(**arrays):
  def make(tmp):
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"

  return make


def _digits_like(**extra):
  return _npz(x=np.zeros((100, 8, 8, 1), np.uint8), **extra)


def _npy_named_npz(tmp):
  np.save(tmp / "a.npy", np.zeros((10, 8, 8), np.uint8))
  os.replace(tmp / "a.npy", tmp / "a.npz")
  return f"npz:{tmp / 'a.npz'}"


def _corrupt_deflate(tmp):
  path = tmp / "c.npz"
  rng = np.random.default_rng(0)
  np.savez_compressed(path, x=rng.integers(0, 255, (50, 8, 8), dtype=np.uint8))
  data = bytearray(path.read_bytes())
  data[200:220] = b"\x00" * 20
  path.write_bytes(bytes(data))
  return f"npz:{path}"


def _huge_header(compression):
  def make(tmp):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
      header, {"descr": "|u1", "fortran_order": False, "shape": (10**10, 28, 28)}
    )
    path = tmp / "huge.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as z:
      z.writestr("x.npy", header.getvalue() + b"\x00" * 100)
    return f"npz:{path}"

  return make


def _truncated_npz(tmp):
  path = tmp / "t.npz"
  np.savez(path, x=np.zeros((50, 8, 8), np.uint8))
  path.write_bytes(path.read_bytes()[:300])
  return f"npz:{path}"


def _file(name, data):
  def make(tmp):
    (tmp / name).write_bytes(data)
    return f"{name.rsplit('.', 1)[-1]}:{tmp / name}"

  return make


def _truncated_idx(tmp):
  d = tmp / "idx"
  d.mkdir()
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
    with gzip.open(d / f"{name}.gz", "wb") as f:
      f.write(b"\x00\x00\x08\x03\x00\x00")
  for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
    (d / f"{name}.gz").write_bytes(b"not gzip")
  return str(d)


def _folder_of(files):
  def make(tmp):
    d = tmp / "images"
    d.mkdir()
    for name, data in files.items():
      (d / name).parent.mkdir(parents=True, exist_ok=True)
      (d / name).write_bytes(data)
    return f"folder:{d}"

  return make


def _hold_lock(tmp, w):
  lock = WorkdirLock(w)
  lock.acquire()
  _hold_lock.held = lock  # released by the test


# (id, cfg overrides (callables get tmp_path), workdir mutation or None, exit status, message)
CASES = [
  # Run-defining flags that differ from flags.txt.
  ("other seed", dict(seed=1), None, 2, "--seed (checkpoint 0, now 1)"),
  ("other lr", dict(learning_rate=0.1), None, 2, "--learning_rate (checkpoint 0.001, now 0.1)"),
  ("other optimizer", dict(optimizer="sgd"), None, 2, "--optimizer (checkpoint 'adam'"),
  ("other width", dict(hidden_units=24), None, 2, "--hidden_units (checkpoint 16, now 24)"),
  ("other noise", dict(noise="masking", noise_level=0.2), None, 2, "--noise (checkpoint"),
  ("other dataset", dict(dataset=_digits_like()), None, 2, "--dataset (checkpoint 'digits'"),
  ("other pixels", dict(pixel_range="symmetric"), None, 2, "--pixel_range (checkpoint 'unit'"),
  ("other schedule", dict(schedule="cosine"), None, 2, "--schedule (checkpoint 'constant'"),
  ("other grad_clip", dict(grad_clip=1.0), None, 2, "--grad_clip (checkpoint 0.0, now 1.0)"),
  ("other b1", dict(b1=0.5), None, 2, "--b1 (checkpoint 0.9, now 0.5)"),
  ("other decay", dict(weight_decay=0.1), None, 2, "--weight_decay (checkpoint 0.0, now 0.1)"),
  ("num_steps below", dict(num_steps=2), None, 2, "--num_steps=2 is below the step"),
  ("finished rerun", dict(), None, 0, "is already trained to step 4"),
  # What the workdir holds.
  ("lock held", dict(), _hold_lock, 2, "is in use by another run (host"),
  ("checkpoints a file", dict(), _replace_with_file("checkpoints"), 2, "checkpoints is not a"),
  ("images a file", dict(), _replace_with_file("images"), 2, "images is not a folder"),
  ("metrics a dir", dict(), _replace_with_dir("metrics.jsonl"), 2, "metrics.jsonl is not a file"),
  ("metrics not utf8", dict(), _append("metrics.jsonl", b"\xff\xfe\n"), 2, "is not UTF-8"),
  ("flags not utf8", dict(), _append("flags.txt", b"\xc3\x28"), 2, "flags.txt is not UTF-8"),
  ("flags a dir", dict(), _replace_with_dir("flags.txt"), 2, "flags.txt is not a file"),
  ("flags loop", dict(), _self_symlink("flags.txt"), 2, "flags.txt is not a file"),
  ("metrics loop", dict(), _self_symlink("metrics.jsonl"), 2, "metrics.jsonl is not a file"),
  ("checkpoints loop", dict(), _self_symlink("checkpoints"), 2, "checkpoints is not a folder"),
  ("flags unknown", dict(), _append("flags.txt", b"--lerning_rate=1\n"), 2, "unknown flag"),
  ("flags bad value", dict(), _append("flags.txt", b"--seed=x\n"), 2, "bad value for --seed"),
  ("flags bare", dict(), _append("flags.txt", b"--seed\n"), 2, "--seed needs a value"),
  (
    "data flipped",
    dict(),
    lambda t, w: _flip(_step_file(w, _is_data)),
    2,
    "checkpoint step 4 is corrupt",
  ),
  (
    "manifest flipped",
    dict(),
    lambda t, w: _flip(_step_file(w, lambda r: r == "default/manifest.ocdbt")),
    2,
    "manifest.ocdbt has changed since it was saved",
  ),
  (
    "metadata flipped",
    dict(),
    lambda t, w: _flip(_step_file(w, lambda r: r == "default/_METADATA")),
    2,
    "_METADATA has changed since it was saved",
  ),
  (
    "data deleted",
    dict(),
    lambda t, w: os.remove(_step_file(w, _is_data)),
    2,
    "is missing; the last intact step is 2",
  ),
  (
    "checksums garbage",
    dict(),
    lambda t, w: open(_step_file(w, lambda r: r == checkpointing.CHECKSUMS), "w").write("{"),
    2,
    "dlu_checksums.json is unreadable",
  ),
  (
    "both steps flipped",
    dict(),
    lambda t, w: [_flip(_step_file(w, _is_data, s)) for s in (2, 4)],
    2,
    "no intact step is left",
  ),
  ("workdir a file", dict(), lambda t, w: shutil.rmtree(w) or open(w, "w").close(), 2, "a file"),
  # Data files.
  ("npy as npz", dict(dataset=_npy_named_npz), None, 2, "is a single .npy array"),
  ("corrupt deflate", dict(dataset=_corrupt_deflate), None, 2, "cannot read"),
  ("huge header", dict(dataset=_huge_header(zipfile.ZIP_STORED)), None, 2, "the file is damaged"),
  (
    "huge deflated",
    dict(dataset=_huge_header(zipfile.ZIP_DEFLATED)),
    None,
    2,
    "(7,840,000,000,000 bytes)",
  ),
  ("truncated npz", dict(dataset=_truncated_npz), None, 2, "cannot read"),
  ("empty npz", dict(dataset=_file("e.npz", b"")), None, 2, "cannot read"),
  ("text npz", dict(dataset=_file("t.npz", b"hello\n")), None, 2, "cannot read"),
  (
    "pickled npz",
    dict(dataset=_npz(x=np.array([{"a": 1}] * 4, dtype=object))),
    None,
    2,
    "Python objects",
  ),
  ("nan pixels", dict(dataset=_npz(x=np.full((9, 8, 8), np.nan, np.float32))), None, 2, "NaN"),
  (
    "inf pixels",
    dict(dataset=_npz(x=np.full((9, 8, 8), np.inf, np.float32))),
    None,
    2,
    "infinite values",
  ),
  ("float labels", dict(dataset=_digits_like(y=np.zeros(100))), None, 2, "integer class"),
  ("huge label", dict(dataset=_digits_like(y=np.full(100, 10**9))), None, 2, "has a label"),
  ("short labels", dict(dataset=_digits_like(y=np.zeros(7, np.int32))), None, 2, "one label per"),
  ("no x", dict(dataset=_npz(images=np.zeros((4, 8, 8)))), None, 2, "has no array 'x'"),
  ("empty csv", dict(dataset=_file("e.csv", b"")), None, 2, "the file is empty"),
  ("header-only csv", dict(dataset=_file("h.csv", b"a,b\n")), None, 2, "has no rows"),
  ("binary csv", dict(dataset=_file("b.csv", b"\x00\xff\xfe" * 50)), None, 2, "b.csv"),
  (
    "bad parquet",
    dict(dataset=_file("p.parquet", b"PAR1xx")),
    None,
    2,
    "cannot read it as Parquet",
  ),
  ("broken png", dict(dataset=_folder_of({"a.png": b"\x89PNG..."})), None, 2, "cannot decode"),
  ("empty folder", dict(dataset=_folder_of({})), None, 2, "no images in"),
  (
    "idx cut short",
    dict(dataset="fashion_mnist", idx_dir=_truncated_idx, data_dir=lambda t: str(t)),
    None,
    2,
    "idx",
  ),
  ("no such npz", dict(dataset="npz:/nonexistent.npz"), None, 2, "no such file /nonexistent.npz"),
  # Flags.
  ("resume_from", dict(resume_from="first"), None, 2, "--resume_from must be one of"),
  ("model", dict(model="transformer"), None, 2, "--model='transformer' is not a model"),
  ("batch > data", dict(batch_size=4096), None, 2, "is larger than the training split"),
  ("eval batch", dict(eval_batch_size=0), None, 2, "--eval_batch_size must be a positive"),
  ("keep 0", dict(keep_checkpoints=0), None, 2, "--keep_checkpoints must be a positive"),
  ("test_fraction", dict(test_fraction=1.5), None, 2, "--test_fraction must be in (0, 1)"),
  ("warmup", dict(warmup_steps=10), None, 2, "--warmup_steps (10) must be smaller"),
]


@pytest.mark.parametrize(
  "overrides,mutate,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_case(trained, tmp_path, capsys, overrides, mutate, status, message):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir, symlinks=True)
  if mutate is not None:
    mutate(tmp_path, workdir)
  values = {k: v(tmp_path) if callable(v) else v for k, v in {**BASE, **overrides}.items()}
  before = snapshot(workdir)
  try:
    code, out, err = run(config.make_config(**values), workdir, capsys)
  finally:
    if getattr(_hold_lock, "held", None) is not None:
      _hold_lock.held.release()
      _hold_lock.held = None
      before.pop(".lock")
  assert code == status, err
  if status:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
  else:
    assert message in out and not err
  assert snapshot(workdir) == before


def test_flag_parse_errors_exit_2(capsys):
  for argv, message in (
    (["train", "--num_steps=1e12"], "--num_steps=1e12"),
    (["train", "--nums_steps=3"], "Did you mean: num_steps"),
    (["train", "stray"], "unexpected arguments: stray"),
    (["train", "--resume_from=first"], "resume_from"),
    (["train", "--kernel_init=orthogonal"], "--kernel_init"),
  ):
    with pytest.raises(SystemExit) as e:
      cli.parse_flags(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err, err


def test_every_file_of_a_checkpoint_is_checked(trained, tmp_path):
  step_dir = os.path.join(trained, "checkpoints", "4")
  files = sorted(
    os.path.relpath(os.path.join(d, f), step_dir)
    for d, _, fs in os.walk(step_dir)
    for f in fs
    if f != checkpointing.CHECKSUMS
  )
  assert any(_is_data(f) for f in files) and "default/manifest.ocdbt" in files
  for rel in files:
    workdir = str(tmp_path / rel.replace("/", "_"))
    shutil.copytree(trained, workdir)
    _flip(os.path.join(workdir, "checkpoints", "4", rel))
    with pytest.raises(checkpointing.CheckpointError) as e:
      checkpointing.read_checkpoint(workdir)
    assert f"checkpoint step 4 is corrupt: {os.path.join(workdir, 'checkpoints', '4', rel)}" in str(
      e.value
    )
    assert "has changed since it was saved" in str(e.value)
    assert "the last intact step is 2" in str(e.value)
  checkpointing.read_checkpoint(trained)  # The original is intact.


def test_resume_from_last_intact_moves_the_damaged_step_aside(trained, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  _flip(_step_file(workdir, _is_data))
  cfg = config.make_config(**{**BASE, "num_steps": 6, "resume_from": "last_intact"})
  code, out, err = run(cfg, workdir, capsys)
  assert code == 0, err
  assert "Resuming ae_seed on digits from step 2" in out
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints")) == ["4"]
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4, 6]
  checkpointing.read_checkpoint(workdir, 4)  # Retrained, with its own checksums.
  rows = [json.loads(r) for r in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(r["step"], r["split"]) for r in rows]
  assert len(keys) == len(set(keys)) and [k[0] for k in keys] == sorted(k[0] for k in keys)


def test_a_full_disk_names_the_path_and_step_and_keeps_the_last_checkpoint(
  trained, tmp_path, capsys, monkeypatch
):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)

  def full(self, step, state):
    raise OSError(28, "No space left on device", os.path.join(self.directory, str(step)))

  monkeypatch.setattr(checkpointing.Checkpointer, "save", full)
  code, _, err = run(config.make_config(**{**BASE, "num_steps": 6}), workdir, capsys)
  assert code == 1 and err.count("\n") == 1
  assert "checkpoints/6 (No space left on device) at step 6" in err
  assert "the last good checkpoint (step 4) is kept" in err
  assert not os.path.exists(os.path.join(workdir, ".lock"))


def test_loading_a_run_is_read_only(trained, tmp_path):
  from dlu.train import experiment

  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  # A save in flight of the trainer: loaders must neither see nor clean it up.
  tmp = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1700000000")
  os.makedirs(os.path.join(tmp, "default"))
  before = snapshot(workdir)
  _, state = experiment.restore_trained(workdir, kmeans_inits=2)  # Loaders may override flags.
  assert int(state.step) == 4
  assert int(checkpointing.read_checkpoint(workdir)["step"]) == 4
  assert snapshot(workdir) == before


def test_a_step_found_without_checksums_is_never_sealed(trained, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  # Killed between Orbax's rename and the checksums, then damaged: restored unchecked, and
  # the failing restore must not write checksums of the damaged files.
  os.remove(_step_file(workdir, lambda r: r == checkpointing.CHECKSUMS))
  shutil.rmtree(os.path.dirname(_step_file(workdir, lambda r: r.startswith("default/d/"))))
  before = snapshot(workdir)
  code, _, err = run(config.make_config(**{**BASE, "num_steps": 6}), workdir, capsys)
  assert code == 2 and "cannot restore the checkpoint" in err and "from step 2" in err
  assert snapshot(workdir) == before


def test_symlinked_folders_are_not_followed_into_loops_or_duplicates(tmp_path):
  from PIL import Image

  from dlu.data import local

  root = tmp_path / "images"
  (root / "a").mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "x.png")
  os.symlink(root, root / "a" / "loop")  # a/loop/a/loop/... forever if followed
  os.symlink(root / "a", root / "b")  # class b: the images of a again
  x, y, num_classes = local.read_folder("folder:images", str(root))
  assert len(x) == 1 and list(y) == [0] and num_classes == 1


def test_verbose_adds_the_traceback(trained, tmp_path, capsys):
  from absl.testing import flagsaver

  with flagsaver.flagsaver(verbose=True):
    code, _, err = run(config.make_config(**{**BASE, "seed": 1}), trained, capsys)
  assert code == 2 and "Traceback (most recent call last)" in err
  assert err.splitlines()[-1].startswith("error: ") and "--seed (checkpoint 0, now 1)" in err
