"""scripts/benchmark.py: the quality path end to end on digits, and how curves become rows."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import benchmark  # noqa: E402


def _args(*argv):
  benchmark.FLAGS.__dict__.update(vars(benchmark.parse_args(list(argv))))
  return benchmark.FLAGS


def test_time_to_interpolates_and_says_not_reached():
  curve = [(1.0, 0.5), (3.0, 0.3), (5.0, 0.2)]
  assert benchmark.time_to(curve, 0.6) == 1.0  # the first point already reaches it
  assert math.isclose(benchmark.time_to(curve, 0.4), 2.0)  # halfway from 0.5 to 0.3
  assert benchmark.time_to(curve, 0.2) == 5.0
  assert benchmark.time_to(curve, 0.1) is None


def test_quality_rows_target_and_best_peer():
  """The target is the best mean at the budget; dlu's row says when it reached the best peer's
  quality, beside that peer's time."""
  _args("--mlp_epochs=1", "--steps_per_dispatch=10", "--batch_size=100")
  # 1,000 training rows, batch 100: one epoch is 10 steps. Two seeds per framework.
  curves = {
    "dlu": {10: [(1.0, {"mse": 0.30}), (1.2, {"mse": 0.32})]},
    "keras": {10: [(4.0, {"mse": 0.40}), (4.0, {"mse": 0.42})]},
  }
  rows = {r["framework"]: r for r in benchmark._quality_rows("ae_seed", curves, 1000)}
  d, k = rows["dlu"], rows["keras"]
  assert d["steps"] == k["steps"] == 10 and d["epochs"] == 1.0 and d["seeds"] == 2
  assert math.isclose(d["quality"], 0.31) and math.isclose(d["quality_std"], 0.01)
  assert d["target"] == k["target"] == d["quality"]
  assert d["time_to_target_s"] == 1.1 and k["time_to_target_s"] is None
  assert d["best_peer"] == "keras" and d["best_peer_s"] == 4.0
  assert d["time_to_best_peer_s"] == 1.1  # its first point is already better than Keras's last


def test_bad_arguments_exit_2(capsys):
  for bad in ("--seeds=0", "--mlp_epochs=0", "--dlu_flags=kernel_init", "--models=resnet"):
    assert benchmark.main([bad]) == 2
    assert bad.split("=")[0] in capsys.readouterr().err
  assert benchmark.main(["--quick", "--quality"]) == 2
  assert "--quick is the examples/s part" in capsys.readouterr().err


def test_pytorch_workers_wait_passively(monkeypatch):
  monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
  assert benchmark.worker_env("pytorch")["OMP_WAIT_POLICY"] == "PASSIVE"
  assert benchmark.worker_env("pytorch_compile")["OMP_WAIT_POLICY"] == "PASSIVE"
  assert "OMP_WAIT_POLICY" not in benchmark.worker_env("dlu")
  monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's choice stands
  assert benchmark.worker_env("pytorch")["OMP_WAIT_POLICY"] == "ACTIVE"


def test_throughput_table_has_every_variant_and_warns_under_load():
  _args("--batch_size=256")

  def row(fw, eps, load):
    return dict(
      model="ae_mlp",
      framework=fw,
      examples_per_s=eps,
      min=eps,
      max=eps,
      first_step_s=1.0,
      load_avg=load,
    )

  fws = {"dlu": 300.0, "dlu_k1": 200.0, "pytorch": 150.0, "pytorch_compile": 100.0}
  rows = [row(fw, eps, 0.5) for fw, eps in fws.items()]
  md = benchmark.markdown(rows, [], "python scripts/benchmark.py --quick")
  header = next(line for line in md.splitlines() if line.startswith("| model |"))
  for fw in fws:
    assert benchmark.NAMES[fw] in header
  assert "dlu/PyTorch (torch.compile)" in header and "dlu/dlu" not in header
  body = next(line for line in md.splitlines() if line.startswith("| deep MLP"))
  assert "| 2.00x | 3.00x |" in body  # dlu over each peer, in the header's order
  assert "Warning" not in md
  loaded = benchmark.markdown(
    rows + [row("keras", 50.0, 2.0 * (os.cpu_count() or 1))], [], "python scripts/benchmark.py"
  )
  assert "Warning: the load average" in loaded and "Keras" in loaded


@pytest.mark.slow
def test_quality_on_digits(tmp_path, digits_feature_dir):
  """Both parts on digits with a few steps: every scoring path (MSE, ELBO, FID) and the rows
  and table they make. Peers that are not installed are skipped, saying so."""
  out = tmp_path / "bench"
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "benchmark.py"),
    "--dataset=digits",
    "--frameworks=dlu,pytorch,keras",
    "--repeats=1",
    "--seconds=0.2",
    "--models=ae_seed,conv_vae,dcgan",
    "--seeds=1",
    "--mlp_epochs=1,2",
    "--conv_steps=2",
    "--eval_points=2",
    "--gan_samples=100",
    "--batch_size=64",
    f"--out={out}",
  ]
  # One CPU device (not the suite's eight): these small programs compile and run faster.
  xla_flags = " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  env = {
    **os.environ,
    "TFDS_DATA_DIR": digits_feature_dir,
    "PYTHONPATH": ROOT,
    "XLA_FLAGS": xla_flags,
  }
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rows = json.loads((out / "benchmark.json").read_text())
  dlu = {(row["model"], row.get("steps")): row for row in rows if row["framework"] == "dlu"}
  # digits: 1,500 training images, batch 64: 23.4 steps an epoch; 1 and 2 epochs in whole
  # dispatches of 10.
  assert {k for k in dlu if k[0] == "ae_seed"} == {("ae_seed", 20), ("ae_seed", 50)}
  for (model, steps), row in dlu.items():
    if steps is None:
      continue  # the matmul peak row carries no model
    assert row["quality_metric"] == benchmark.QUALITY[model]
    assert math.isfinite(row["quality"]) and row["quality_std"] == 0.0 and row["seeds"] == 1
    assert row["curve"][-1]["step"] == steps or model == "ae_seed"
    if len([fw for (m, fw) in {(x["model"], x["framework"]) for x in rows} if m == model]) == 1:
      assert row["time_to_target_s"] == pytest.approx(row["train_s"], rel=1e-3, abs=0.02)
  assert dlu["ae_seed", 50]["quality"] < dlu["ae_seed", 20]["quality"] < 0.2  # it learns
  assert 0 < dlu["conv_vae", 2]["quality"] < 64 * math.log(2) * 2  # nats per 8x8 image
  assert dlu["dcgan", 2]["quality"] > 0 and 0 <= dlu["dcgan", 2]["precision"] <= 1
  assert "examples_per_s" in dlu["ae_seed", 50] and "examples_per_s" not in dlu["ae_seed", 20]
  md = (out / "benchmark.md").read_text()
  assert "| ae_seed | mse @ 20 (0.85) |" in md and "dcgan real-data floor" in md
  for fw, module in (("pytorch", "torch"), ("keras", "keras")):
    if importlib.util.find_spec(module) is None:
      assert f"{fw}: skipped: {fw} is not installed" in md
  assert not (out / "data").exists() and not (out / "points").exists()


def test_text_scores_count_real_tokens_and_bytes():
  """Bits per byte: every real token's bits (the end token's too) over the document's bytes;
  accuracy over the real tokens; padding counts for neither."""
  tokens = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])  # 2 bytes + end, 1 byte + end
  uniform = np.zeros((2, 4, 260))
  s = benchmark.text_scores(uniform, tokens)
  per_doc = [3 * math.log2(260) / 2, 2 * math.log2(260) / 1]
  assert s["bits_per_byte"] == pytest.approx(np.mean(per_doc))
  assert s["token_acc"] == 0.0  # argmax of equal logits is id 0, never a real token
  right = 50.0 * np.eye(260)[tokens]
  right[0, 1] = 50.0 * np.eye(260)[9]  # one wrong token of the first document's three
  s = benchmark.text_scores(right, tokens)
  assert s["token_acc"] == pytest.approx((2 / 3 + 1) / 2)
  assert s["bits_per_byte"] == pytest.approx(50 / math.log(2) / 2 / 2, rel=1e-6)


def test_series_scored_on_observed_steps_only(tmp_path):
  _args("--models=ae_conv1d")
  x = benchmark.synthetic_series(6, seed=3)
  assert x.shape == (6, 128, 3) and x.dtype == np.float32
  missing = np.isnan(x)
  assert (missing.all(-1) == missing.any(-1)).all()  # whole steps are missing
  assert 0.01 < missing.mean() < 0.1
  np.testing.assert_array_equal(x, benchmark.synthetic_series(6, seed=3))
  out = np.where(missing, 100.0, x)  # whatever the model puts at missing steps
  out[0, np.flatnonzero(~missing[0, :, 0])[0], 1] += 2.0  # one observed value off by 2
  path = str(tmp_path / "out.npz")
  np.savez(path, output=out)
  mse = benchmark.Scorer(None, str(tmp_path))("ae_conv1d", path, x)["mse"]
  assert mse == pytest.approx(4.0 / np.sum(~missing[0]) / 6)
  assert not os.path.exists(path)


def test_sequence_models_are_opt_in_and_budgets():
  args = _args("--seq_steps=40", "--eval_points=4")
  assert args.models == list(benchmark.IMAGE_MODELS)  # the default run has no sequence model
  for model in benchmark.SEQ_MODELS:
    assert benchmark.budgets(model, 1000) == [40]
    assert benchmark.eval_steps(model, 1000) == [10, 20, 30, 40]
    assert benchmark.DLU_FLAGS[model]["steps_per_dispatch"] == 1


def test_bad_sequence_arguments_exit_2(capsys):
  for bad in ("--seq_steps=0", "--series_train=0"):
    assert benchmark.main(["--models=ae_conv1d", bad]) == 2
    assert bad.split("=")[0] in capsys.readouterr().err
  assert benchmark.main(["--models=text_ae", "--text_corpus=/no/such/corpus.txt"]) == 2
  assert "--text_corpus=/no/such/corpus.txt does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_sequence_models_end_to_end(tmp_path):
  """ae_conv1d on synthetic series and text_ae on a small corpus, both parts: dlu's rows are
  scored by the benchmark's code on the test split the peers get (the dlu worker checks that
  its own split is the same); peers that are not installed are skipped, saying so."""
  words = ["apple", "river", "stone", "cloud", "green", "quiet", "north", "table"]
  rng = np.random.default_rng(0)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(60)) + "\n")
  out = tmp_path / "bench"
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "benchmark.py"),
    "--models=ae_conv1d,text_ae",
    "--frameworks=dlu,pytorch,keras",
    "--repeats=1",
    "--seconds=0.2",
    "--seeds=1",
    "--seq_steps=3",
    "--eval_points=1",
    "--series_train=64",
    f"--text_corpus={corpus}",
    "--batch_size=16",
    f"--out={out}",
  ]
  xla_flags = " ".join(
    f
    for f in os.environ.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags}
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  rows = json.loads((out / "benchmark.json").read_text())
  dlu = {row["model"]: row for row in rows if row["framework"] == "dlu"}
  conv, text = dlu["ae_conv1d"], dlu["text_ae"]
  assert conv["steps"] == text["steps"] == 3 and conv["seeds"] == 1
  assert conv["quality_metric"] == "mse" and 0 < conv["quality"] < 3  # z-normalised series
  assert text["quality_metric"] == "bits_per_byte" and 0 < text["quality"] < 12
  assert 0 <= text["token_acc"] <= 1
  assert conv["epochs"] == round(3 * 16 / 64, 2)
  assert text["tokens_per_s"] == pytest.approx(
    text["examples_per_s"] * text["tokens_per_example"], rel=1e-3
  )
  assert 30 < text["tokens_per_example"] < 50  # six words and their spaces, the end token
  md = (out / "benchmark.md").read_text()
  assert "| ae_conv1d | mse @ 3 (0.75) |" in md and "text_ae tokens/s" in md
  assert "ae_conv1d data: synthetic series" in md and "64 training / 16 test" in md
  # Skipped: a peer that is not installed, and text_ae in Keras (it has no Keras peer).
  skipped = [line for line in md.splitlines() if "skipped" in line]
  assert all(
    line.startswith(("- pytorch: skipped", "- keras: skipped"))
    or "text_ae / keras: skipped: NotImplementedError" in line
    for line in skipped
  ), skipped
  if importlib.util.find_spec("keras") is None:
    assert "keras: skipped: keras is not installed" in (out / "benchmark.md").read_text()
  else:
    keras = {row["model"]: row for row in rows if row["framework"] == "keras"}
    assert 0 < keras["ae_conv1d"]["quality"] < 3 and "text_ae" not in keras
  if importlib.util.find_spec("torch") is None:
    assert "pytorch: skipped: pytorch is not installed" in md
  else:  # the peer's rows, scored the same way
    peer = {row["model"]: row for row in rows if row["framework"] == "pytorch"}
    assert 0 < peer["ae_conv1d"]["quality"] < 3 and 0 < peer["text_ae"]["quality"] < 12
    assert peer["text_ae"]["tokens_per_s"] > 0
  assert not (out / "data").exists() and not (out / "points").exists()
