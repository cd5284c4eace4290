"""Training speed and quality of dlu's models beside the same models in PyTorch and Keras.

  python scripts/benchmark.py --out=benchmarks/            # everything, ~50 minutes on 2 cores
  python scripts/benchmark.py --quality --out=/tmp/q       # quality only, ~45 minutes
  python scripts/benchmark.py --quick                      # examples/s only, a few minutes
  python scripts/benchmark.py --models=ae_conv --frameworks=dlu,pytorch --repeats=9
  python scripts/benchmark.py --models=ae_conv1d,text_ae --frameworks=dlu,pytorch  # sequences

Quality: every framework trains every model for the same steps on the same training split,
batch 256, from its own defaults, over --seeds seeds, and is scored on the test split by this
script's code: the peers hand back their reconstructions (logits for BCE models), their VAE
posteriors and decoder logits at given noise on one binarisation of the test images, or their
GAN samples (scored by dlu's feature network: FID, KID, precision and recall). The MLPs are
scored at 5 and 20 epochs (--mlp_epochs), the conv models at --conv_steps. Time to target: the
training seconds each framework needs, on its curve averaged over seeds, to reach the best
quality any framework reached at that budget (compilation included, evaluations excluded).

Sequence models (opt-in with --models; PyTorch peers, and Keras for ae_conv1d): `ae_conv1d` on
synthetic series (--series_train training series [128, 3] and a quarter as many test series,
each channel two sines of random frequency, phase and amplitude plus noise, 5% of the steps
missing; written as NAME_TRAIN/NAME_TEST .npz, so the split is fixed) and `text_ae` on documents
of bytes, at most 128 tokens (--text_corpus, or the food, law, sports and startrek categories of
Debian's fortunes, entries of at most 400 bytes, as scripts/text_protocol.py reads them; dlu
splits them by the seed, and each seed's split goes to every framework). Every framework trains
on the data as dlu reads it (series z-normalised, missing steps NaN; token ids), for --seq_steps
steps, with the loss on the observed steps (masked MSE, missing steps read as 0 beside a mask on
the channels) or the real tokens (cross-entropy, word dropout 0.25 on the decoder's inputs); the
peers hand back their reconstructions of the test series or their teacher-forced logits on the
test documents, scored here: MSE over each series' observed values (mean over series), and bits
per byte and next-token accuracy per document (the end token's bits counted). text_ae's rows add
tokens/s (real tokens, the end token included). The PyTorch peers match dlu's initialisation
(Glorot-uniform kernels, zero biases; embeddings N(0, 1/dim)), as Keras's defaults do.

dlu trains through its real step (`dlu.runtime.parallel` and `dlu.data.feeds`, as `experiments.train`
runs it); the peers are written as their users write them (`benchmark_torch.py`,
`benchmark_keras.py`; install them with `scripts/benchmark_requirements.txt`, or their
rows are skipped). Beside each peer's defaults, its fast settings, as a user after speed
would run it: `pytorch_compile` (the networks wrapped in `torch.compile`) and `keras_jit`
(`jit_compile=True` and `steps_per_execution` equal to dlu's steps per dispatch for the MLPs);
and dlu at one step per dispatch (`dlu_k1`). PyTorch's workers run with
`OMP_WAIT_POLICY=PASSIVE`, so that OpenMP threads do not spin (and collapse) when other
processes share the cores; the report warns when the load average exceeded the core count.
Each framework runs in its own worker process, so thread pools and
memory do not mix, and every repetition visits the frameworks in turn, so load from
other processes falls on all of them alike. Reported per model and framework: examples/s
(median over repetitions, min, max), the time to the first step (compilation included),
dlu's ratio to each peer, and the fraction of the float32 matmul peak that the same run
measures (FLOPs of the model as written, without multiplications by inserted zeros).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

IMAGE_MODELS = ("ae_seed", "ae_mlp", "ae_conv", "conv_vae", "dcgan")
# Opt-in (--models): a 1-D conv AE on synthetic series and a Transformer AE on text.
SEQ_MODELS = ("ae_conv1d", "text_ae")
MODELS = IMAGE_MODELS + SEQ_MODELS
FRAMEWORKS = ("dlu", "dlu_k1", "pytorch", "pytorch_compile", "keras", "keras_jit")
NAMES = {
  "dlu": "dlu",
  "dlu_k1": "dlu (1 step per dispatch)",
  "pytorch": "PyTorch",
  "pytorch_compile": "PyTorch (torch.compile)",
  "keras": "Keras",
  "keras_jit": "Keras (XLA, steps_per_execution)",
}
LATENT = {
  "ae_seed": 128,
  "ae_mlp": 32,
  "ae_conv": 32,
  "conv_vae": 16,
  "dcgan": 64,
  "ae_conv1d": 32,
  "text_ae": 32,
}
# What each model is judged by (lower is better for all): test MSE or BCE per pixel of the
# reconstructions, -ELBO in nats per image (one posterior sample at given noise), FID; MSE
# over the observed steps of each test series (mean over series); bits per byte of the
# teacher-forced reconstruction of each test document (mean over documents).
QUALITY = {
  "ae_seed": "mse",
  "ae_mlp": "bce",
  "ae_conv": "bce",
  "conv_vae": "neg_elbo",
  "dcgan": "fid",
  "ae_conv1d": "mse",
  "text_ae": "bits_per_byte",
}
MLP_MODELS = ("ae_seed", "ae_mlp")

DESCRIPTIONS = {
  "ae_seed": "seed MLP AE 784-128-784, MSE",
  "ae_mlp": "deep MLP AE 784-512-256-32-256-512-784, BCE",
  "ae_conv": "conv AE (Conv 32/64 s2, code 32, ConvT 64/32 s2 + 1 s1), BCE",
  "conv_vae": "conv VAE (same convs, latent 16), ELBO",
  "dcgan": "DCGAN 28x28 (G: dense, ConvT 64 s2, ConvT 1 s2, BN; D: Conv 64/128 s2), D+G step",
  "ae_conv1d": "1-D conv AE on series 128x3 (Conv1D 32/64 k5 s2, code 32, ConvT 64/32 s2 + 1 s1), "
  "masked MSE",
  "text_ae": "Transformer text AE on bytes, 128 tokens (dim 64, 4 heads, 2+2 layers, ff 256, "
  "code 32), CE",
}
# dlu flags of each benchmarked model (flags a branch does not define are left out).
DLU_FLAGS = {
  "ae_seed": dict(hidden_units=128, recon_loss="mse"),
  "ae_mlp": dict(widths=["512", "256"], latent_dim=32, recon_loss="bce"),
  "ae_conv": dict(conv_channels=["32", "64"], latent_dim=32, recon_loss="bce"),
  "conv_vae": dict(
    conv_channels=["32", "64"],
    latent_dim=16,
    likelihood="bernoulli",
    binarize="dynamic",
    train_samples=1,
    objective="elbo",
  ),
  "dcgan": dict(
    gan_channels=64,
    latent_dim=64,
    pixel_range="symmetric",
    gan_loss="ns",
    d_steps=1,
    learning_rate=2e-4,
    eval_samples=0,
  ),
}
DLU_FLAGS.update(
  ae_conv1d=dict(
    conv_channels=["32", "64"],
    series_kernel_size=5,
    latent_dim=32,
    recon_loss="mse",
    noise="none",
    dropout=0.0,
  ),
  text_ae=dict(
    tokenizer="bytes",
    max_length=128,
    text_dim=64,
    text_heads=4,
    text_layers=2,
    text_ff=256,
    latent_dim=32,
    word_dropout=0.25,
    token_mask_rate=0.0,
    dropout=0.0,
  ),
)
# Conv steps take 0.1-1 s, so one step per dispatch costs nothing; MLP steps take a few ms.
# So do ae_conv1d's and text_ae's (and ae_conv1d's steps run slower inside a multi-step
# dispatch on XLA's CPU backend).
for _model in ("ae_conv", "conv_vae", "dcgan", "ae_conv1d", "text_ae"):
  DLU_FLAGS[_model]["steps_per_dispatch"] = 1


def parse_args(argv: list[str]) -> argparse.Namespace:
  """argparse, not absl: the dlu worker defines dlu's absl flags (--batch_size, ...) itself."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  csv = lambda s: [v for v in s.split(",") if v]
  p.add_argument(
    "--models",
    type=csv,
    default=list(IMAGE_MODELS),
    help=f"models to benchmark (also {', '.join(SEQ_MODELS)})",
  )
  p.add_argument("--frameworks", type=csv, default=list(FRAMEWORKS), help=", ".join(FRAMEWORKS))
  p.add_argument("--repeats", type=int, default=5, help="timed repetitions (interleaved)")
  p.add_argument("--seconds", type=float, default=3.0, help="target duration of one repetition")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--dataset", default="fashion_mnist", help="dlu dataset name (28x28x1 images)")
  p.add_argument(
    "--steps_per_dispatch",
    type=int,
    default=10,
    help="dlu's --steps_per_dispatch for the MLP models (conv models use 1)",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help="the examples/s part only, 3 repetitions of ~0.5 s: a few minutes",
  )
  p.add_argument("--quality", action="store_true", help="only the quality part")
  p.add_argument("--throughput", action="store_true", help="only the examples/s part")
  p.add_argument("--seeds", type=int, default=3, help="quality: seeds per model and framework")
  p.add_argument(
    "--mlp_epochs", type=csv, default=["5", "20"], help="quality: MLP budgets, in epochs"
  )
  p.add_argument("--conv_steps", type=int, default=300, help="quality: conv models' budget")
  p.add_argument(
    "--seq_steps",
    type=int,
    default=300,
    help="quality: ae_conv1d's and text_ae's budget",
  )
  p.add_argument(
    "--series_train",
    type=int,
    default=4000,
    help="ae_conv1d: synthetic training series (and a quarter as many test series)",
  )
  p.add_argument(
    "--text_corpus",
    default=None,
    help="text_ae: a .txt file (one document a line) or a directory of .txt files; default: "
    f"the {', '.join(FORTUNE_CATEGORIES)} categories of Debian's fortunes",
  )
  p.add_argument("--eval_points", type=int, default=6, help="quality: points on each curve")
  p.add_argument("--gan_samples", type=int, default=10000, help="quality: samples scored")
  p.add_argument(
    "--dlu_flags",
    type=csv,
    default=[],
    help="dlu flags set for every model, NAME=VALUE,... (e.g. kernel_init=lecun_normal)",
  )
  p.add_argument("--out", default=None, help="write DIR/benchmark.json and DIR/benchmark.md")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--data_dir", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


FLAGS = argparse.Namespace()
FORTUNES = "/usr/share/games/fortunes"
FORTUNE_CATEGORIES = ("food", "law", "sports", "startrek")


# --- Workers: one process per framework, JSON lines on stdin/stdout. ---


def _peak_rss_mb() -> float:
  import resource

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_main(framework: str) -> None:
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # Whatever the libraries print goes to stderr, not into the protocol.
  send = lambda obj: print(json.dumps(obj), file=proto, flush=True)
  x, inputs = None, {}
  if os.path.exists(os.path.join(FLAGS.data_dir, "train_images.npy")):  # image models asked
    x = np.load(os.path.join(FLAGS.data_dir, "train_images.npy"))
    inputs["images"] = np.load(os.path.join(FLAGS.data_dir, "test_images.npy"))
    with np.load(os.path.join(FLAGS.data_dir, "vae_inputs.npz")) as f:
      inputs.update(binary=f["binary"], eps=f["eps"])
  model_flags = {m: dict(DLU_FLAGS[m]) for m in MODELS}
  for m, name in _seq_datasets(FLAGS.data_dir).items():
    model_flags[m]["dataset"] = name
  try:
    if framework in ("dlu", "dlu_k1"):
      import benchmark_dlu as module

      runner = module.Runner(
        FLAGS.dataset,
        FLAGS.batch_size,
        FLAGS.steps_per_dispatch if framework == "dlu" else 1,
        model_flags,
        dict(kv.split("=", 1) for kv in FLAGS.dlu_flags),
      )
    elif framework.startswith("pytorch"):
      import benchmark_torch as module

      runner = module.Runner(x, FLAGS.batch_size, compile=framework == "pytorch_compile")
    else:
      import benchmark_keras as module

      fast = framework == "keras_jit"
      runner = module.Runner(
        x,
        FLAGS.batch_size,
        jit_compile=fast,
        mlp_steps_per_execution=FLAGS.steps_per_dispatch if fast else 1,
      )
  except ImportError as e:
    base = framework.split("_")[0]
    send(
      {"error": f"{base} is not installed ({e}); pip install -r scripts/benchmark_requirements.txt"}
    )
    return
  send({"version": module.version()})
  for line in sys.stdin:
    cmd = json.loads(line)
    try:
      # The sequence models' splits (series or token ids) come with each command.
      split = {}
      if cmd.get("data"):
        if framework.startswith("keras") and cmd["model"] == "text_ae":
          raise NotImplementedError("text_ae has no Keras peer in this benchmark")
        with np.load(cmd["data"]) as f:
          split = {k: f[k] for k in f.files}
      if cmd["cmd"] == "setup":
        extra = {"x_train": split["x_train"]} if split else {}
        first, step_s = runner.setup(cmd["model"], LATENT[cmd["model"]], **extra)
        out = {
          "first_step_s": first,
          "step_s": step_s,
          "steps_per_dispatch": getattr(runner, "steps_per_dispatch", lambda m: 1)(cmd["model"]),
        }
      elif cmd["cmd"] == "run":
        out = {"seconds": runner.run(cmd["model"], cmd["steps"])}
      elif cmd["cmd"] == "train":
        points = []

        def report(step, seconds, arrays, cmd=cmd, points=points):
          path = os.path.join(cmd["out"], f"{framework}_{cmd['model']}_{cmd['seed']}_{step}.npz")
          np.savez(path, **arrays)
          points.append({"step": step, "seconds": seconds, "path": path})

        runner.train(
          cmd["model"],
          LATENT[cmd["model"]],
          cmd["seed"],
          cmd["steps"],
          cmd["eval_at"],
          split or inputs,
          cmd["samples"],
          report,
        )
        out = {"points": points}
      elif cmd["cmd"] == "peak":
        out = {"gflops": runner.matmul_peak()}
      elif cmd["cmd"] == "flops":
        out = {"flops": runner.flops_per_example(cmd["model"])}
      else:
        out = {"peak_rss_mb": _peak_rss_mb()}
    except Exception as e:  # pylint: disable=broad-except  # reported as a skipped row
      out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    send(out)


def _seq_datasets(data_dir: str) -> dict[str, str]:
  """The dlu --dataset of each sequence model asked for, as `_prepare_data` wrote them."""
  path = os.path.join(data_dir, "seq_datasets.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def worker_env(framework: str) -> dict[str, str]:
  """The environment of a framework's worker: PyTorch's OpenMP threads wait passively (unless
  the caller chose a policy), so that a busy machine does not collapse them."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
  if framework.startswith("pytorch"):
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  return env


class Worker:
  def __init__(self, framework: str, data_dir: str, log_path: str):
    args = [
      sys.executable,
      os.path.abspath(__file__),
      f"--worker={framework}",
      f"--data_dir={data_dir}",
      f"--batch_size={FLAGS.batch_size}",
      f"--dataset={FLAGS.dataset}",
      f"--steps_per_dispatch={FLAGS.steps_per_dispatch}",
      f"--dlu_flags={','.join(FLAGS.dlu_flags)}",
    ]
    env = worker_env(framework)
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(
      args,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
      env=env,
      cwd=ROOT,
    )
    self.hello = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    return json.loads(line) if line else {"error": f"worker exited; see {self.log.name}"}

  def __call__(self, **cmd) -> dict:
    if self.proc.poll() is not None:
      return {"error": f"worker exited; see {self.log.name}"}
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)
    self.log.close()


# --- The run. ---


def _load() -> float:
  return os.getloadavg()[0]


def _median(v: list[float]) -> float:
  v = sorted(v)
  return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def synthetic_series(n: int, seed: int, length: int = 128, channels: int = 3) -> np.ndarray:
  """ae_conv1d's data: n series [length, channels], each channel two sines of random
  frequency, phase and amplitude plus Gaussian noise, 5% of the steps missing (NaN). [n, T, C]"""
  rng = np.random.default_rng(seed)
  t = np.arange(length)[None, :, None] / length
  x = np.zeros((n, length, channels))
  for _ in range(2):
    freq = rng.uniform(1.0, 8.0, (n, 1, channels))
    x += rng.uniform(0.5, 2.0, (n, 1, channels)) * np.sin(
      2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (n, 1, channels))
    )
  x += 0.1 * rng.standard_normal(x.shape)
  x[rng.random((n, length)) < 0.05] = np.nan
  return x.astype(np.float32)


def read_fortunes(path: str) -> list[str]:
  """The entries of a fortune file (separated by lines holding `%`), whitespace collapsed."""
  with open(path, encoding="utf-8", errors="replace") as f:
    entries = re.split(r"^%$", f.read(), flags=re.M)
  return [" ".join(e.split()) for e in entries if e.strip()]


def _text_dataset(data_dir: str) -> str:
  """text_ae's dlu --dataset: --text_corpus, or the fortune categories written one document a
  line to data_dir/corpus.txt (entries of at most 400 bytes)."""
  if FLAGS.text_corpus:
    return f"text:{os.path.abspath(FLAGS.text_corpus)}"
  docs = []
  for category in FORTUNE_CATEGORIES:
    docs += [d for d in read_fortunes(os.path.join(FORTUNES, category)) if len(d.encode()) <= 400]
  path = os.path.join(data_dir, "corpus.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(docs) + "\n")
  return f"text:{path}"


class SequenceData:
  """The sequence models' splits for each seed, as dlu reads its --dataset with that --seed
  (text:PATH splits by the seed), written once to data_dir/MODEL_SEED.npz (x_train, x_test)
  for the workers and the scorer."""

  def __init__(self, data_dir: str, datasets: dict[str, str]):
    import benchmark_dlu

    flags = {m: {**DLU_FLAGS[m], "dataset": datasets[m]} for m in datasets}
    extra = dict(kv.split("=", 1) for kv in FLAGS.dlu_flags)
    self.runner = benchmark_dlu.Runner(FLAGS.dataset, FLAGS.batch_size, 1, flags, extra)
    self.data_dir, self.paths = data_dir, {}

  def path(self, model: str, seed: int) -> str:
    if (model, seed) not in self.paths:
      x_train, x_test = self.runner.split(model, seed)
      path = os.path.join(self.data_dir, f"{model}_{seed}.npz")
      np.savez(path, x_train=x_train, x_test=x_test)
      self.paths[model, seed] = path
    return self.paths[model, seed]

  def arrays(self, model: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(self.path(model, seed)) as f:
      return f["x_train"], f["x_test"]


SEQ: SequenceData | None = None


def _prepare_data(out_dir: str):
  """The dataset, and in `out_dir/data`: what the workers read (training and test images, the
  VAE's binarised test images and posterior noise; the sequence models' dlu datasets)."""
  global SEQ
  from dlu import data

  data_dir = os.path.join(out_dir, "data")
  os.makedirs(data_dir, exist_ok=True)
  datasets = {}
  if "ae_conv1d" in FLAGS.models:
    series_dir = os.path.join(data_dir, "series")
    os.makedirs(series_dir, exist_ok=True)
    for split, n, seed in (
      ("TRAIN", FLAGS.series_train, 0),
      ("TEST", -(-FLAGS.series_train // 4), 1),
    ):
      np.savez(os.path.join(series_dir, f"SYNTH_{split}.npz"), x=synthetic_series(n, seed))
    datasets["ae_conv1d"] = f"series:{series_dir}"
  if "text_ae" in FLAGS.models:
    datasets["text_ae"] = _text_dataset(data_dir)
  with open(os.path.join(data_dir, "seq_datasets.json"), "w") as f:
    json.dump(datasets, f)
  SEQ = SequenceData(data_dir, datasets) if datasets else None
  if not set(FLAGS.models) & set(IMAGE_MODELS):
    return None, data_dir
  ds = data.load(FLAGS.dataset)
  np.save(os.path.join(data_dir, "train_images.npy"), ds.x_train)
  np.save(os.path.join(data_dir, "test_images.npy"), ds.x_test)
  rng = np.random.default_rng(0)
  binary = (rng.random(ds.x_test.shape) < ds.x_test / 255.0).astype(np.float32)
  eps = rng.standard_normal((len(ds.x_test), LATENT["conv_vae"])).astype(np.float32)
  np.savez(os.path.join(data_dir, "vae_inputs.npz"), binary=binary, eps=eps)
  return ds, data_dir


def start_workers(data_dir: str, out_dir: str, notes: list[str]) -> dict:
  workers = {}
  for fw in FLAGS.frameworks:
    w = Worker(fw, data_dir, os.path.join(out_dir, f"worker_{fw}.log"))
    if "error" in w.hello:
      notes.append(f"{fw}: skipped: {w.hello['error']}")
      w.close()
      continue
    workers[fw] = w
    notes.append(f"{fw}: {w.hello['version']}")
  print("\n".join(notes), flush=True)
  return workers


def run_benchmark(out_dir: str) -> tuple[list[dict], list[str]]:
  notes = []
  ds, data_dir = _prepare_data(out_dir)
  for model in FLAGS.models:
    if model in SEQ_MODELS:
      x_train, x_test = SEQ.arrays(model, 0)
      what = (
        "synthetic series (two sines a channel, noise, 5% of the steps missing)"
        if model == "ae_conv1d"
        else f"documents of {FLAGS.text_corpus or 'the fortunes ' + '/'.join(FORTUNE_CATEGORIES)}"
      )
      notes.append(
        f"{model} data: {what}, {len(x_train)} training / {len(x_test)} test, each "
        f"{'x'.join(map(str, x_train.shape[1:]))} as dlu reads them"
      )
  workers = start_workers(data_dir, out_dir, notes)
  rows = throughput(workers, notes) if not FLAGS.quality else []
  if not FLAGS.throughput and not FLAGS.quick:
    rows = merge(rows, quality(workers, ds, out_dir, notes))
  for fw, w in workers.items():
    rss = w(cmd="rss").get("peak_rss_mb")
    notes.append(f"{fw} worker peak RSS: {rss:.0f} MB (all its models)")
    w.close()
  import shutil

  shutil.rmtree(data_dir)
  return rows, notes


def throughput(workers: dict, notes: list[str]) -> list[dict]:
  """Examples/s rows: interleaved timed repetitions of each model in each framework."""
  rows = []
  repeats, seconds = (3, 0.5) if FLAGS.quick else (FLAGS.repeats, FLAGS.seconds)
  min_steps = 2 if FLAGS.quick else 3

  steps, results, first, flops, dispatch, tokens = {}, {}, {}, {}, {}, {}
  for model in FLAGS.models:
    data = SEQ.path(model, 0) if model in SEQ_MODELS else None
    if model == "text_ae":  # real tokens (the end token included) per training document
      tokens[model] = float(np.mean(np.sum(SEQ.arrays(model, 0)[0] != 0, axis=1)))
    for fw, w in workers.items():
      r = w(cmd="setup", model=model, data=data)
      if "error" in r:
        notes.append(f"{model} / {fw}: skipped: {r['error']}")
        continue
      first[model, fw] = r["first_step_s"]
      # Steps per repetition: about `seconds` long, whole dispatches.
      k = r["steps_per_dispatch"]
      steps[model, fw] = (
        -(-int(min(1000, max(min_steps, seconds / max(r["step_s"], 1e-6)))) // k) * k
      )
      if fw in ("dlu", "keras_jit"):
        dispatch[model, fw] = k
      results[model, fw] = []
      print(
        f"{model:9s} {fw:8s} first step {first[model, fw]:6.2f} s, {steps[model, fw]} steps "
        "per repetition",
        flush=True,
      )
    if "dlu" in workers:
      r = workers["dlu"](cmd="flops", model=model)
      flops[model] = r.get("flops")
  peaks, loads = [], {}
  for rep in range(repeats):
    if "dlu" in workers:
      peaks.append(workers["dlu"](cmd="peak")["gflops"])
    for model in FLAGS.models:
      for fw, w in workers.items():
        if (model, fw) not in results:
          continue
        load = _load()
        r = w(cmd="run", model=model, steps=steps[model, fw])
        eps = steps[model, fw] * FLAGS.batch_size / r["seconds"]
        results[model, fw].append(eps)
        loads.setdefault((model, fw), []).append(load)
        print(
          f"rep {rep + 1}/{repeats} {model:9s} {fw:8s} {eps:9.0f} ex/s  (load {load:.1f})",
          flush=True,
        )
  peak = _median(peaks) if peaks else None
  for (model, fw), eps in results.items():
    row = {
      "model": model,
      "framework": fw,
      "examples_per_s": round(_median(eps), 1),
      "min": round(min(eps), 1),
      "max": round(max(eps), 1),
      "first_step_s": round(first[model, fw], 2),
      "repeats": len(eps),
      "steps_per_repeat": steps[model, fw],
      "load_avg": round(_median(loads[model, fw]), 2),
    }
    if model in tokens:
      row["tokens_per_example"] = round(tokens[model], 1)
      row["tokens_per_s"] = round(row["examples_per_s"] * tokens[model], 1)
    if flops.get(model) and peak:
      row["gflops"] = round(row["examples_per_s"] * flops[model] / 1e9, 1)
      row["peak_fraction"] = round(row["gflops"] / peak, 3)
    rows.append(row)
  if peak:
    rows.append(
      {
        "model": "matmul 2048x2048 float32 (jax)",
        "framework": "matmul_peak",
        "gflops": round(peak, 1),
        "min": round(min(peaks), 1),
        "max": round(max(peaks), 1),
      }
    )
  if dispatch:
    for fw in ("dlu", "keras_jit"):
      ks = {m: k for (m, f), k in dispatch.items() if f == fw}
      if ks:
        what = "dlu steps per dispatch" if fw == "dlu" else "Keras steps_per_execution"
        notes.append(f"{what}: " + ", ".join(f"{m} {k}" for m, k in ks.items()))
  return rows


# --- Quality. ---


def dispatch_k(model: str) -> int:
  """dlu's steps per dispatch for a model."""
  return FLAGS.steps_per_dispatch if model in MLP_MODELS else 1


def budgets(model: str, num_train: int) -> list[int]:
  """The step budgets a model is scored at: --mlp_epochs for the MLPs (whole dispatches of
  --steps_per_dispatch), --conv_steps for the conv models, --seq_steps for ae_conv1d and
  text_ae."""
  k = dispatch_k(model)
  if model in SEQ_MODELS:
    return [FLAGS.seq_steps]
  if model not in MLP_MODELS:
    return [FLAGS.conv_steps]
  return sorted(
    {max(k, round(float(e) * num_train / FLAGS.batch_size / k) * k) for e in FLAGS.mlp_epochs}
  )


def eval_steps(model: str, num_train: int) -> list[int]:
  """Where each curve is scored: --eval_points evenly spaced steps and every budget."""
  k = dispatch_k(model)
  last = budgets(model, num_train)[-1]
  even = {
    max(k, round(last * i / FLAGS.eval_points / k) * k) for i in range(1, FLAGS.eval_points + 1)
  }
  return sorted(even | set(budgets(model, num_train)))


class Scorer:
  """One code scores every framework's outputs on the test split (lower is better)."""

  def __init__(self, ds, data_dir: str):
    self.ds, self._features = ds, None
    if ds is not None:  # image models asked
      self.x = ds.x_test.astype(np.float32) / 255.0
      with np.load(os.path.join(data_dir, "vae_inputs.npz")) as f:
        self.binary = f["binary"]

  def features(self, images):
    if self._features is None:
      import jax

      from dlu import data
      from dlu.metrics import feature_net

      net = feature_net.load_or_train(self.ds, data.default_data_dir())
      fn = jax.jit(lambda x: net.features(net.params, x))
      self._features = lambda x: np.asarray(fn(x))
    from dlu.metrics import sample_quality

    return sample_quality.features_of(self._features, images)

  def real_features(self):
    if not hasattr(self, "_real"):
      self._real = self.features(self.x)
    return self._real

  def __call__(self, model: str, path: str, x_test: np.ndarray | None = None) -> dict[str, float]:
    """`x_test`: the sequence models' test split (series or token ids)."""
    with np.load(path) as f:
      out = {k: f[k].astype(np.float64) for k in f.files}
    os.remove(path)
    softplus = lambda v: np.logaddexp(0.0, v)
    if model == "ae_conv1d":  # over each series' observed values, then over series
      mask = np.isfinite(x_test)
      err = np.where(mask, out["output"] - np.nan_to_num(x_test), 0.0) ** 2
      return {"mse": float(np.mean(err.sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)))}
    if model == "text_ae":
      return text_scores(out["logits"], x_test)
    if model == "ae_seed":
      return {"mse": float(np.mean((out["output"] - self.x) ** 2))}
    if model in ("ae_mlp", "ae_conv"):
      logits = out["output"]
      return {"bce": float(np.mean(softplus(logits) - self.x * logits))}
    if model == "conv_vae":
      logits, mean, log_var = out["logits"], out["mean"], out["log_var"]
      nll = np.sum(softplus(logits) - self.binary * logits, axis=(1, 2, 3))
      kl = 0.5 * np.sum(mean**2 + np.exp(log_var) - 1.0 - log_var, axis=1)
      return {"neg_elbo": float(np.mean(nll + kl))}
    from dlu.metrics import sample_quality

    fake = self.features(np.clip(out["samples"], 0.0, 1.0).astype(np.float32))
    return sample_quality.all_metrics(self.real_features(), fake)

  def floor(self) -> dict[str, float]:
    """The GAN metrics of as many real training images as samples (the real-data floor)."""
    from dlu.metrics import sample_quality

    idx = np.random.default_rng(0).choice(len(self.ds.x_train), FLAGS.gan_samples, replace=False)
    real = self.features(self.ds.x_train[idx].astype(np.float32) / 255.0)
    return sample_quality.all_metrics(self.real_features(), real)


def text_scores(logits: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
  """Teacher-forced next-token accuracy and bits per byte of token ids [N, L] (0 padding,
  1-3 special, bytes from 4) from logits [N, L, V], per document then averaged, as dlu's
  text_ae evaluates them (the end token's bits counted, over the document's bytes)."""
  from scipy.special import log_softmax

  real = tokens != 0
  nll = -np.take_along_axis(log_softmax(logits, axis=-1), tokens[..., None], -1)[..., 0]
  hits = (np.argmax(logits, -1) == tokens) & real
  n_bytes = np.maximum(np.sum(tokens >= 4, axis=1), 1)
  return {
    "bits_per_byte": float(np.mean(np.sum(nll * real, 1) / n_bytes / math.log(2))),
    "token_acc": float(np.mean(hits.sum(1) / np.maximum(real.sum(1), 1))),
  }


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
  """Seconds at which a (seconds, quality) curve first reaches `target` (linear between
  points, from the start for the first), None if it never does."""
  prev_t, prev_q = 0.0, math.inf
  for t, q in curve:
    if q <= target * (1 + 1e-9):
      if math.isinf(prev_q):
        return t
      return prev_t + (t - prev_t) * (prev_q - target) / (prev_q - q) if prev_q != q else t
    prev_t, prev_q = t, q
  return None


def quality(workers: dict, ds, out_dir: str, notes: list[str]) -> list[dict]:
  """Quality rows: (model, framework, steps) with the mean and std over seeds, the curve and
  the time to target."""
  scorer, rows = Scorer(ds, os.path.join(out_dir, "data")), []
  points_dir = os.path.join(out_dir, "points")
  os.makedirs(points_dir, exist_ok=True)
  curves = {}  # (model, fw) -> {step: [(seconds, metrics) per seed]}
  for model in FLAGS.models:
    seq = model in SEQ_MODELS
    num_train = len(SEQ.arrays(model, 0)[0] if seq else ds.x_train)
    at = eval_steps(model, num_train)
    for seed in range(FLAGS.seeds):
      data = SEQ.path(model, seed) if seq else None
      x_test = SEQ.arrays(model, seed)[1] if seq else None
      for fw, w in workers.items():
        if (model, fw) in curves and curves[model, fw] is None:
          continue
        t = time.time()
        r = w(
          cmd="train",
          model=model,
          seed=seed,
          steps=at[-1],
          eval_at=at,
          out=points_dir,
          samples=FLAGS.gan_samples,
          data=data,
        )
        if "error" in r:
          notes.append(f"quality {model} / {fw}: skipped: {r['error']}")
          curves[model, fw] = None
          continue
        curve = curves.setdefault((model, fw), {})
        for p in r["points"]:
          curve.setdefault(p["step"], []).append((p["seconds"], scorer(model, p["path"], x_test)))
        final = curve[at[-1]][-1]
        print(
          f"quality {model:9s} {fw:8s} seed {seed}: {QUALITY[model]} {final[1][QUALITY[model]]:.5g} "
          f"after {at[-1]} steps, {final[0]:.1f} s training ({time.time() - t:.0f} s with scoring)",
          flush=True,
        )
    if model == "dcgan" and any(curves.get((model, fw)) for fw in workers):
      floor = scorer.floor()
      notes.append(
        f"dcgan real-data floor ({FLAGS.gan_samples} training images against the test split): "
        + ", ".join(f"{k} {v:.4g}" for k, v in floor.items())
      )
    rows += _quality_rows(
      model, {fw: c for (m, fw), c in curves.items() if m == model and c}, num_train
    )
  os.rmdir(points_dir)
  return rows


def _quality_rows(model: str, curves: dict, num_train: int) -> list[dict]:
  metric, rows = QUALITY[model], []
  if not curves:
    return rows
  # Curves averaged over the seeds every framework completed.
  mean_curve = {
    fw: [
      (float(np.mean([t for t, _ in v])), float(np.mean([m[metric] for _, m in v])))
      for _, v in sorted(c.items())
    ]
    for fw, c in curves.items()
  }
  for steps in budgets(model, num_train):
    finals = {fw: [m for _, m in c[steps]] for fw, c in curves.items()}
    means = {
      fw: (float(np.mean([m[metric] for m in v])), float(np.std([m[metric] for m in v])))
      for fw, v in finals.items()
    }
    target = min(m for m, _ in means.values())
    peers = {fw: means[fw][0] for fw in means if not fw.startswith("dlu")}
    best_peer = min(peers, key=peers.get) if peers else None
    for fw, (mean, std) in means.items():
      seconds = float(np.mean([t for t, _ in curves[fw][steps]]))
      tt = time_to(mean_curve[fw], target)
      row = {
        "model": model,
        "framework": fw,
        "steps": steps,
        "epochs": round(steps * FLAGS.batch_size / num_train, 2),
        "seeds": len(finals[fw]),
        "quality_metric": metric,
        "quality": round(mean, 6),
        "quality_std": round(std, 6),
        "train_s": round(seconds, 2),
        "target": round(target, 6),
        "time_to_target_s": None if tt is None else round(tt, 2),
        "curve": [
          {"step": s, "seconds": round(t, 2), metric: round(q, 6)}
          for s, (t, q) in zip(sorted(curves[fw]), mean_curve[fw])
        ],
      }
      for extra in ("kid", "precision", "recall", "token_acc"):
        if extra in finals[fw][0]:
          row[extra] = round(float(np.mean([m[extra] for m in finals[fw]])), 5)
      if fw == "dlu" and best_peer:
        t_peer = time_to(mean_curve["dlu"], peers[best_peer])
        row.update(
          best_peer=best_peer,
          best_peer_quality=round(peers[best_peer], 6),
          best_peer_s=round(float(np.mean([t for t, _ in curves[best_peer][steps]])), 2),
          time_to_best_peer_s=None if t_peer is None else round(t_peer, 2),
        )
      rows.append(row)
  return rows


def merge(throughput_rows: list[dict], quality_rows: list[dict]) -> list[dict]:
  """Quality rows gain the examples/s of their model and framework (the largest budget's row
  takes the throughput row's place)."""
  by = {(r["model"], r["framework"]): r for r in throughput_rows if "examples_per_s" in r}
  last = {}
  for r in quality_rows:
    if (r["model"], r["framework"]) in by:
      last[r["model"], r["framework"]] = r
  out = [r for r in throughput_rows if (r["model"], r["framework"]) not in last]
  for r in quality_rows:
    key = (r["model"], r["framework"])
    out.append({**by[key], **r} if last.get(key) is r else r)
  return out


def quality_markdown(rows: list[dict]) -> list[str]:
  """The quality table: mean ± std over seeds at each budget, time to target, examples/s."""
  q = [r for r in rows if "quality" in r]
  if not q:
    return []
  by = {(r["model"], r["steps"], r["framework"]): r for r in q}
  fws = [fw for fw in FRAMEWORKS if any(r["framework"] == fw for r in q)]
  names = NAMES
  seeds = max(r["seeds"] for r in q)
  lines = [
    f"Quality on the test split after the same steps (mean ± std over {seeds} seeds; lower is "
    "better), training seconds to the best quality any framework reached at that budget "
    "(- : not reached), examples/s of the throughput run:",
    "",
    "| model | metric @ steps (epochs) | "
    + " | ".join(names[fw] for fw in fws)
    + " | time to target s ("
    + " / ".join(names[fw] for fw in fws)
    + ") | examples/s ("
    + " / ".join(names[fw] for fw in fws)
    + ") | dlu to best peer's quality |",
    "|---|---|" + "---|" * len(fws) + "---|---|---|",
  ]
  fmt_q = lambda r: f"{r['quality']:.4g} ± {r['quality_std']:.2g}" if r else "-"
  fmt_t = lambda r: (
    f"{r['time_to_target_s']:.1f}" if r and r["time_to_target_s"] is not None else "-"
  )
  fmt_e = lambda r: f"{r['examples_per_s']:,.0f}" if r and "examples_per_s" in r else "-"
  for model, steps in sorted(
    {(r["model"], r["steps"]) for r in q}, key=lambda k: (MODELS.index(k[0]), k[1])
  ):
    rs = [by.get((model, steps, fw)) for fw in fws]
    any_r = next(r for r in rs if r)
    d = by.get((model, steps, "dlu"))
    if d and "best_peer" in d:
      t = d["time_to_best_peer_s"]
      vs = (
        f"{t:.1f} s ({names[d['best_peer']]}: {d['best_peer_s']:.1f} s"
        + (f", {d['best_peer_s'] / t:.2f}x)" if t else ")")
        if t is not None
        else f"not reached ({names[d['best_peer']]}: {d['best_peer_quality']:.4g})"
      )
    else:
      vs = "-"
    lines.append(
      f"| {model} | {QUALITY[model]} @ {steps} ({any_r['epochs']:g}) | "
      + " | ".join(fmt_q(r) for r in rs)
      + f" | {' / '.join(fmt_t(r) for r in rs)} | {' / '.join(fmt_e(r) for r in rs)} | {vs} |"
    )
  gan = [r for r in q if "precision" in r]
  if gan:
    lines += [
      "",
      "DCGAN samples (means over seeds): "
      + "; ".join(
        f"{names[r['framework']]} @ {r['steps']}: KID {r['kid']:.4f}, precision {r['precision']:.3f}, "
        f"recall {r['recall']:.3f}"
        for r in gan
      ),
    ]
  text = [r for r in q if "token_acc" in r]
  if text:
    lines += [
      "",
      "text_ae teacher-forced next-token accuracy on the test split (means over seeds; higher is "
      "better): "
      + "; ".join(f"{names[r['framework']]} @ {r['steps']}: {r['token_acc']:.3f}" for r in text),
    ]
  return lines + [""]


def markdown(rows: list[dict], notes: list[str], command: str) -> str:
  by = {(r["model"], r["framework"]): r for r in rows if "examples_per_s" in r}
  peak = next((r for r in rows if r["framework"] == "matmul_peak"), None)
  models = [m for m in MODELS if any((m, fw) in by for fw in FRAMEWORKS)]
  fws = [fw for fw in FRAMEWORKS if any((m, fw) in by for m in models)]
  peers = [fw for fw in fws if not fw.startswith("dlu")]
  fmt = lambda r: f"{r['examples_per_s']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f})" if r else "-"
  ratio = lambda m, fw: (
    f"{by[m, 'dlu']['examples_per_s'] / by[m, fw]['examples_per_s']:.2f}x"
    if (m, "dlu") in by and (m, fw) in by
    else "-"
  )
  load = [r["load_avg"] for r in rows if "load_avg" in r]
  lines = [
    f"`{command}`",
    "",
  ] + quality_markdown(rows)
  if not by:
    return "\n".join(lines + [f"- {n}" for n in notes]) + "\n"
  cores = os.cpu_count() or 1
  images = set(FLAGS.models) & set(IMAGE_MODELS)
  data_name = FLAGS.dataset if images else "the sequence data in the notes"
  lines += [
    f"{cores} CPUs ({platform.processor() or platform.machine()}), "
    f"batch {FLAGS.batch_size}, {data_name}, examples/s median (min-max) over repetitions; "
    f"load average during the runs {min(load):.1f}-{max(load):.1f}.",
    "",
  ]
  if max(load) > cores:
    lines += [
      f"**Warning: the load average ({max(load):.1f}) exceeded the {cores} cores during the "
      "runs: other processes shared the machine, and the figures (PyTorch's most) are low.**",
      "",
    ]
  lines += [
    "| model | "
    + " | ".join(NAMES[fw] for fw in fws)
    + "".join(f" | dlu/{NAMES[fw]}" for fw in peers)
    + " | first step s ("
    + " / ".join(NAMES[fw] for fw in fws)
    + ") | dlu GFLOP/s (% of peak) |",
    "|---|" + "---|" * (len(fws) + len(peers) + 2),
  ]
  for m in models:
    rs = [by.get((m, fw)) for fw in fws]
    d = by.get((m, "dlu"))
    firsts = " / ".join(f"{r['first_step_s']:.1f}" if r else "-" for r in rs)
    frac = f"{d['gflops']:.0f} ({100 * d['peak_fraction']:.0f}%)" if d and "gflops" in d else "-"
    lines.append(
      f"| {DESCRIPTIONS[m]} | "
      + " | ".join(fmt(r) for r in rs)
      + "".join(f" | {ratio(m, fw)}" for fw in peers)
      + f" | {firsts} | {frac} |"
    )
  text = [r for r in by.values() if "tokens_per_s" in r]
  if text:
    lines += [
      "",
      f"text_ae tokens/s (real tokens, the end token included: {text[0]['tokens_per_example']:.1f} "
      "per training document on average): "
      + ", ".join(f"{NAMES[r['framework']]} {r['tokens_per_s']:,.0f}" for r in text)
      + ".",
    ]
  if peak:
    lines += [
      "",
      f"Matmul peak measured in the same run: {peak['gflops']:.0f} GFLOP/s "
      f"({peak['min']:.0f}-{peak['max']:.0f}).",
    ]
  lines += [""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def check(args: argparse.Namespace) -> None:
  from dlu.errors import UsageError

  for name, accepted in (("models", MODELS), ("frameworks", FRAMEWORKS)):
    unknown = sorted(set(getattr(args, name)) - set(accepted))
    if unknown or not getattr(args, name):
      raise UsageError(
        f"--{name}: unknown or empty {', '.join(unknown)}; accepted: {', '.join(accepted)}"
      )
  for name in (
    "repeats",
    "steps_per_dispatch",
    "batch_size",
    "seeds",
    "conv_steps",
    "seq_steps",
    "series_train",
    "eval_points",
    "gan_samples",
  ):
    if getattr(args, name) < 1:
      raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
  try:
    epochs = [float(e) for e in args.mlp_epochs]
  except ValueError:
    epochs = []
  if not epochs or min(epochs) <= 0:
    raise UsageError(f"--mlp_epochs must be positive numbers, got {','.join(args.mlp_epochs)}")
  if any("=" not in kv for kv in args.dlu_flags):
    raise UsageError(f"--dlu_flags must be NAME=VALUE pairs, got {','.join(args.dlu_flags)}")
  if "text_ae" in args.models:
    corpus = args.text_corpus or FORTUNES
    if not os.path.exists(corpus):
      raise UsageError(
        f"--text_corpus={corpus} does not exist"
        if args.text_corpus
        else f"text_ae reads Debian's fortunes from {FORTUNES} (apt-get install fortunes) or "
        "--text_corpus=PATH (a .txt file, one document a line, or a directory of .txt files)"
      )
  if args.quality and args.throughput:
    raise UsageError("--quality and --throughput each ask for one part only: give one (or neither)")
  if args.quick and args.quality:
    raise UsageError("--quick is the examples/s part in a few minutes: drop it for --quality")


def main(argv: list[str]) -> int:
  FLAGS.__dict__.update(vars(parse_args(argv)))
  if FLAGS.worker:
    _worker_main(FLAGS.worker)
    return 0
  from dlu.errors import UsageError

  try:
    check(FLAGS)
  except UsageError as e:
    print(f"benchmark.py: error: {e}", file=sys.stderr)
    return 2
  out_dir = FLAGS.out or os.path.join("/tmp", f"dlu_benchmark_{os.getpid()}")
  os.makedirs(out_dir, exist_ok=True)
  t0 = time.time()
  rows, notes = run_benchmark(out_dir)
  command = "python scripts/benchmark.py " + " ".join(argv)
  notes.append(f"total time {time.time() - t0:.0f} s")
  md = markdown(rows, notes, command)
  with open(os.path.join(out_dir, "benchmark.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out_dir, "benchmark.md"), "w") as f:
    f.write(md)
  print("\n" + md + f"\nWritten: {out_dir}/benchmark.json, {out_dir}/benchmark.md", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
