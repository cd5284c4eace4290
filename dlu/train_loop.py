"""train_and_evaluate: validate, build, resume, train, evaluate, log, checkpoint."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from dlu import checkpointing, data, evaluation, families, parallel, steps
from dlu import flags as dlu_flags
from dlu.errors import UsageError
from dlu.families import DataSpec
from dlu.logging_utils import MetricWriter, ProgressLine


class NonFiniteError(RuntimeError):
  """A train metric became NaN or infinite; the last good checkpoint is kept."""


def _global_batch_size(cfg, num_train: int) -> int:
  if cfg.optimizer != "gd":
    return cfg.batch_size
  # Full-batch gradient descent: the whole split, less what does not split over devices.
  n = jax.device_count()
  return num_train // n * n


def _check_finite(step: int, metrics: dict) -> None:
  for name, value in metrics.items():
    if not np.all(np.isfinite(value)):
      raise NonFiniteError(f"non-finite {name} ({value}) at step {step}; "
                           "the last good checkpoint is kept")


def setup(cfg: dlu_flags.Config):
  """Everything that can fail on bad input, before the workdir is touched."""
  dlu_flags.validate(cfg)
  dataset = data.load(cfg.dataset, data_dir=cfg.data_dir, idx_dir=cfg.idx_dir)
  spec = DataSpec(dataset.image_shape, dataset.num_classes, len(dataset.x_train), cfg.pixel_range)
  batch_size = _global_batch_size(cfg, spec.num_train)
  parallel.check_batch_size(batch_size)
  if batch_size > spec.num_train:
    raise UsageError(f"--batch_size={batch_size} is larger than the training split "
                     f"({spec.num_train} examples of {cfg.dataset})")
  sampler = data.BatchSampler(spec.num_train, batch_size, seed=cfg.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  family = families.get(cfg.model)(cfg, spec)
  return dataset, spec, family, sampler


def train_and_evaluate(cfg: dlu_flags.Config, workdir: str) -> dict[str, float]:
  """Trains to `cfg.num_steps`, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics.
  """
  if not workdir:
    raise UsageError("--workdir is required: the folder for checkpoints, metrics and images")
  dataset, spec, family, sampler = setup(cfg)
  mesh = parallel.make_mesh()
  init, abstract_state = steps.make_init(family, mesh)
  lead = parallel.is_lead_process()

  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=lead)
  progress = ProgressLine(cfg.num_steps, batch_size=sampler.global_batch_size, enabled=lead)
  try:
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(cfg.seed), 3)
    state = ckpt.restore(abstract_state)
    if state is None:
      state = init(init_rng)
      print(f"Training {cfg.model} on {dataset.name} from scratch in {workdir}", flush=True)
    else:
      print(f"Resuming {cfg.model} from step {int(state.step)} in {workdir}", flush=True)
    if lead:
      with open(os.path.join(workdir, "flags.txt"), "w") as f:
        f.write(cfg.to_flagfile())
      writer.write_hparams(vars(cfg))

    train_step = steps.make_train_step(family, mesh, parallelism=cfg.parallelism)
    eval_sums = steps.make_eval_sums(family, mesh)
    make_images = steps.make_images(family, mesh)
    eval_batch_size = evaluation.round_batch_size(cfg.eval_batch_size)
    repl = parallel.replicated(mesh)
    image_batch = {"image": jax.make_array_from_process_local_data(
        repl, dataset.x_test[:cfg.num_images])}
    pmap = cfg.parallelism == "pmap"
    host_state = lambda s: parallel.unreplicate(s) if pmap else s

    def evaluate(step: int, state) -> dict[str, float]:
      metrics = evaluation.mean_metrics(eval_sums, state, dataset.x_test, eval_rng, mesh=mesh,
                                        batch_size=eval_batch_size)
      writer.write_scalars(step, "eval", metrics)
      progress.report_eval(step, metrics)
      writer.write_images(step, jax.device_get(make_images(state, image_batch, eval_rng)))
      writer.flush()
      return metrics

    step = int(state.step)
    if pmap:
      state = parallel.replicate_for_pmap(jax.device_get(state))
    progress.start(step)
    last_metrics, eval_metrics = None, {}
    t0, first_step_s = time.perf_counter(), None
    while step < cfg.num_steps:
      local = {"image": dataset.x_train[sampler.indices(step)]}
      batch = parallel.pmap_batch(local) if pmap else parallel.global_batch(mesh, local)
      state, last_metrics = train_step(state, batch, train_rng)
      step += 1
      if first_step_s is None:
        jax.block_until_ready(last_metrics)
        first_step_s = time.perf_counter() - t0
        print(f"First step (compilation included) took {first_step_s:.1f} s", flush=True)
      final = step == cfg.num_steps
      if step % cfg.log_every == 0 or final:
        metrics = jax.device_get(host_state(last_metrics) if pmap else last_metrics)
        _check_finite(step, metrics)
        rate = progress.report(step, metrics)
        writer.write_scalars(step, "train", {**metrics, "steps_per_s": rate})
      if step % cfg.checkpoint_every == 0 or final:
        _check_finite(step, jax.device_get(host_state(last_metrics) if pmap else last_metrics))
        ckpt.save(step, host_state(state))
      if step % cfg.eval_every == 0 or final:
        eval_metrics = evaluate(step, host_state(state))

    state = host_state(state)
    if last_metrics is None:  # Already at --num_steps: evaluate what the checkpoint holds.
      eval_metrics = evaluate(step, state)
    _write_embeddings(workdir, family, state, dataset, mesh, eval_batch_size, lead)
    ckpt.wait()
    _print_summary(workdir, lead)
    return eval_metrics
  finally:
    ckpt.close()
    writer.close()


def _write_embeddings(workdir, family, state, dataset, mesh, batch_size, lead) -> None:
  try:
    embed = steps.make_embed(family, mesh)
    emb = evaluation.embed_split(embed, state, dataset.x_test, mesh=mesh, batch_size=batch_size)
  except NotImplementedError:
    return
  if lead:
    labels = dataset.y_test if dataset.y_test is not None else np.full(len(emb), -1, np.int32)
    path = os.path.join(workdir, "embeddings_test.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, embeddings=emb, labels=labels)
    os.replace(tmp, path)


def _print_summary(workdir: str, lead: bool) -> None:
  if not lead:
    return
  w = os.path.abspath(workdir)
  print(f"\nResults in {w}:\n"
        f"  checkpoints:  {w}/checkpoints\n"
        f"  metrics:      {w}/metrics.jsonl\n"
        f"  images:       {w}/images\n"
        f"  embeddings:   {w}/embeddings_test.npz\n"
        f"  TensorBoard:  tensorboard --logdir {w}", flush=True)


