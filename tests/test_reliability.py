"""Pre-emption, kills, half-written checkpoints, NaNs and bad input never cost finished work."""

import gzip
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlu import config
from dlu.errors import UsageError
from dlu.runtime.checkpointing import read_checkpoint
from dlu.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "experiments", "configs", "ae_digits.flags")


def _cmd(workdir, *args):
  return [
    sys.executable,
    "-m",
    "experiments.train",
    f"--flagfile={DIGITS}",
    f"--workdir={workdir}",
    *args,
  ]


def _run(workdir, *args, env=None):
  return subprocess.run(
    _cmd(workdir, *args),
    cwd=ROOT,
    env=env or {**os.environ},
    capture_output=True,
    text=True,
    timeout=300,
  )


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _params(workdir, step):
  return read_checkpoint(workdir, step)["params"]


def _leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _wait_for(predicate, proc, timeout=240):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.communicate()}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_then_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  args = [
    "--num_steps=1000",
    "--checkpoint_every=50",
    "--log_every=100",
    "--eval_every=1000",
    "--noise=masking",
    "--noise_level=0.2",
  ]
  straight = str(tmp_path / "straight")
  assert _run(straight, *args).returncode == 0

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(
    _cmd(killed, *args),
    cwd=ROOT,
    env={**os.environ},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  _wait_for(lambda: any(s >= 100 for s in _steps(killed)), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(_steps(killed)) < 1000
  out = _run(killed, *args)
  assert out.returncode == 0 and "Resuming" in out.stdout
  for a, b in zip(_leaves(_params(straight, 1000)), _leaves(_params(killed, 1000))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_the_rerun_continues(tmp_path):
  workdir = str(tmp_path / "run")
  args = [
    "--num_steps=1000000",
    "--checkpoint_every=1000000",
    "--log_every=50",
    "--eval_every=1000000",
  ]
  proc = subprocess.Popen(
    _cmd(workdir, *args),
    cwd=ROOT,
    env={**os.environ},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(
    lambda: (
      os.path.exists(os.path.join(workdir, "metrics.jsonl"))
      and os.path.getsize(os.path.join(workdir, "metrics.jsonl")) > 0
    ),
    proc,
  )
  # A second run on the same workdir is refused, naming the first; nothing is touched.
  flags_before = open(os.path.join(workdir, "flags.txt")).read()
  cfg = config.config_from_flagfile(DIGITS, seed=1, num_steps=1000000)
  with pytest.raises(UsageError, match=f"is in use by another run .*pid {proc.pid}, started "):
    loop.train_and_evaluate(cfg, workdir)
  assert open(os.path.join(workdir, "flags.txt")).read() == flags_before
  assert len([f for f in os.listdir(workdir) if f.startswith("events.")]) == 1
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  saved = _steps(workdir)
  assert len(saved) == 1 and saved[0] >= 50
  assert f"SIGTERM received: saved a checkpoint at step {saved[0]}" in out
  again = _run(workdir, f"--num_steps={saved[0] + 20}", "--log_every=10", "--eval_every=1000000")
  assert again.returncode == 0
  assert f"Resuming ae_seed on digits from step {saved[0]}" in again.stdout


@pytest.mark.slow
def test_half_written_and_corrupt_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  assert _run(workdir, "--num_steps=40", "--checkpoint_every=20").returncode == 0
  # A save killed half-way leaves only a temporary directory: ignored on resume.
  tmp_dir = os.path.join(workdir, "checkpoints", "60.orbax-checkpoint-tmp-1700000000")
  os.makedirs(os.path.join(tmp_dir, "default"))
  with open(os.path.join(tmp_dir, "default", "manifest.ocdbt"), "wb") as f:
    f.write(b"\x00" * 10)
  out = _run(workdir, "--num_steps=60", "--checkpoint_every=20")
  assert out.returncode == 0 and "from step 40" in out.stdout, out.stderr
  assert _steps(workdir) == [20, 40, 60]
  # A finalised checkpoint that was truncated afterwards: a clear error, nothing overwritten.
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "60")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(3)
  out = _run(workdir, "--num_steps=80")
  assert out.returncode == 2
  assert "checkpoint step 60 is corrupt" in out.stderr and "last intact step is 40" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and _steps(workdir) == [20, 40, 60]
  # Without checksums (killed before they were written) Orbax itself fails: one line too.
  os.remove(os.path.join(workdir, "checkpoints", "60", "dlu_checksums.json"))
  out = _run(workdir, "--num_steps=80")
  assert out.returncode == 2 and "cannot restore the checkpoint" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr
  out = _run(workdir, "--num_steps=80", "--resume_from=last_intact")
  assert out.returncode == 0 and "from step 40" in out.stdout, out.stderr
  assert _steps(workdir)[-1] == 80
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints")) == ["60"]


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_no_checkpoint_holds_nan(tmp_path):
  workdir = str(tmp_path / "run")
  out = _run(
    workdir,
    "--optimizer=sgd",
    "--learning_rate=1e12",
    "--num_steps=200",
    "--checkpoint_every=1",
    "--log_every=50",
  )
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite") and " at step " in last
  for step in _steps(workdir):
    assert all(np.isfinite(x).all() for x in _leaves(_params(workdir, step)))


@pytest.mark.slow
def test_one_and_eight_devices_agree_after_hundreds_of_steps(tmp_path):
  args = ["--num_steps=300", "--checkpoint_every=300", "--eval_every=300", "--log_every=100"]
  results = []
  for n in (1, 8):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    workdir = str(tmp_path / f"d{n}")
    out = _run(workdir, *args, env=env)
    assert out.returncode == 0 and f"({n} cpu device(s)" in out.stdout, out.stderr
    results.append(_leaves(_params(workdir, 300)))
  for a, b in zip(*results):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _truncated_idx_dir(tmp_path):
  d = tmp_path / "idx"
  d.mkdir()
  for name in (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
  ):
    with gzip.open(d / f"{name}.gz", "wb") as f:
      f.write(b"\x00\x00\x08\x03\x00\x00")  # a header cut short
  return str(d)


def _bad_npz(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, x=np.zeros((4, 5, 5, 1, 1), np.uint8))
  return f"npz:{path}"


def _constant_vectors(tmp_path):
  path = tmp_path / "constant.npz"
  np.savez(path, x=np.zeros((4, 5), np.uint8))
  return f"npz:{path}"


BAD_INPUTS = [
  (dict(model="transformer"), "--model='transformer' is not a model"),
  (dict(dataset="imagenet_nope"), "--dataset"),
  (dict(dataset="npz:/nonexistent.npz"), "no such file /nonexistent.npz"),
  (dict(dataset=_bad_npz), "expected images"),
  (dict(dataset=_constant_vectors), "column 'f0' is constant on the training split"),
  (dict(dataset="folder:/nonexistent_dir"), "no such directory"),
  (dict(optimizer="lbfgs"), "--optimizer must be one of"),
  (dict(schedule="exponential"), "--schedule must be one of"),
  (dict(recon_loss="l1"), "--recon_loss"),
  (dict(num_steps=-5), "--num_steps must be a positive integer"),
  (dict(batch_size=0), "--batch_size must be a positive integer"),
  (dict(batch_size=12), "--batch_size=12 must be divisible by the number of devices (8)"),
  (
    dict(batch_size=4096),
    "--batch_size=4096 is larger than the training split (1350 examples of digits); "
    "--batch_size=1344 or smaller fits it",
  ),
  (dict(learning_rate=0.0), "--learning_rate must be > 0"),
  (dict(learning_rate=-1e-3), "--learning_rate must be > 0"),
  (dict(latent_dim=0), "--latent_dim must be a positive integer"),
  (dict(hidden_units=0), "--hidden_units must be a positive integer"),
  (dict(model="ae_mlp", widths=["64", "x"]), "--widths must be a comma-separated list"),
  (dict(momentum=1.5), "--momentum must be in"),
  (dict(grad_clip=-1.0), "--grad_clip must be >= 0"),
  (dict(noise="masking", noise_level=1.0), "--noise_level is a drop probability"),
  (dict(dataset="fashion_mnist", data_dir="/nonexistent/tfds"), "--data_dir=/nonexistent/tfds"),
  (dict(dataset="fashion_mnist", idx_dir="/nonexistent/idx"), "--idx_dir=/nonexistent/idx"),
  (dict(dataset="fashion_mnist", idx_dir=_truncated_idx_dir), "idx"),
  (dict(model="ae_conv", conv_channels=["8", "8", "8", "8"]), "needs image height and width"),
  (dict(warmup_steps=10, num_steps=5), "--warmup_steps (10) must be smaller than --num_steps"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[m[:40] for _, m in BAD_INPUTS])
def test_bad_input_stops_before_the_workdir_is_touched(tmp_path, overrides, message):
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  overrides = {k: v(tmp_path) if callable(v) else v for k, v in overrides.items()}
  overrides.setdefault("data_dir", str(tmp_path / "tfds") if "data_dir" not in overrides else None)
  os.makedirs(tmp_path / "tfds", exist_ok=True)
  cfg = config.make_config(dataset="digits", num_steps=5).replace(**overrides)
  with pytest.raises(UsageError) as e:
    loop.train_and_evaluate(cfg, str(workdir))
  assert message.lower() in str(e.value).lower()
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(workdir)) == ["metrics.jsonl"]
  assert (workdir / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  cfg = config.make_config(dataset="digits", num_steps=5)
  with pytest.raises(UsageError, match="--workdir=.* is not writable"):
    loop.train_and_evaluate(cfg, str(blocker / "run"))


@pytest.mark.parametrize(
  "args,message",
  [
    (["--flagfile=/nonexistent.flags"], "/nonexistent.flags"),
    (["--learning_rate=-1"], "error: --learning_rate must be > 0"),
  ],
)
@pytest.mark.slow
def test_command_line_errors_are_short_and_leave_no_workdir(tmp_path, args, message):
  proc = _run(tmp_path / "w", *args)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_unknown_flag_in_a_flagfile(tmp_path):
  flagfile = tmp_path / "bad.flags"
  flagfile.write_text(open(DIGITS).read() + "--lerning_rate=0.1\n")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train",
      f"--flagfile={flagfile}",
      f"--workdir={tmp_path / 'w'}",
    ],
    cwd=ROOT,
    env={**os.environ},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2 and "lerning_rate" in proc.stderr
  assert not (tmp_path / "w").exists()
