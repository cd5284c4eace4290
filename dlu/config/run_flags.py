"""Flags of how a run is driven: seed, evaluation, logging and checkpoint schedules, devices and
input pipeline, early stopping and the best checkpoint, resuming. Read by `dlu.train`."""

from absl import flags

flags.DEFINE_integer("seed", 0, "Root seed: parameters, data order and noise all derive from it.")
flags.DEFINE_integer(
  "eval_every",
  1000,
  "Evaluate on the validation split every N steps (and at the end, the test split too).",
)
flags.DEFINE_integer("log_every", 100, "Log train metrics every N steps.")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "How many checkpoints to keep.")
flags.DEFINE_integer("eval_batch_size", 1000, "Batch size for evaluation.")
flags.DEFINE_integer("num_images", 64, "Images in each saved grid.")
flags.DEFINE_enum(
  "parallelism",
  "jit",
  ["jit", "pmap"],
  "jit: one program over a ('data',) mesh; pmap: jax.pmap with pmean of gradients.",
)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, event files and images go.")
flags.DEFINE_integer(
  "steps_per_dispatch",
  1,
  "Training steps per jitted dispatch (a lax.scan over K steps on batches gathered "
  "in device memory); logging, eval and checkpoints happen between dispatches.",
)
flags.DEFINE_enum(
  "input_pipeline",
  "auto",
  ["auto", "device", "host", "stream"],
  "How training batches reach the devices. device: the training split in device memory, batches "
  "gathered there; host: batches gathered in host memory; stream: Grain reads each batch from "
  "rows on disk (records:, npy:) or in memory, in --data_workers processes, prefetched onto the "
  "devices. auto: device when the split fits 2 GiB (rows on disk: also a quarter of host memory), "
  "stream for larger rows on disk, host for larger splits in memory. All give the same batches.",
)
flags.DEFINE_integer(
  "data_workers",
  0,
  "--input_pipeline=stream: processes that read and decode batches (0: threads of the "
  "training process).",
)
flags.DEFINE_string(
  "profile_steps",
  "0",
  "Trace training steps with the JAX profiler into WORKDIR/plugins/profile (TensorBoard's "
  "profile tab, Perfetto): N traces N steps after the first --log_every (compilation done); "
  "START:N traces N steps from step START. 0: off.",
)
flags.DEFINE_string(
  "early_stopping_metric",
  None,
  "Stop training when this metric of the validation rows (e.g. mse, loss; a name of the "
  "eval rows, `a/b` for nested ones) has not improved for --early_stopping_patience evals. "
  "Lower is better except for scores (accuracies, NMI, ARI, PSNR, ELBO, precision, recall: "
  "dlu.metrics.HIGHER_IS_BETTER). Default: off.",
)
flags.DEFINE_integer(
  "early_stopping_patience", 5, "Evals without improvement before early stopping stops."
)
flags.DEFINE_float(
  "early_stopping_min_delta",
  0.0,
  "Smallest change of --early_stopping_metric that counts as an improvement.",
)
flags.DEFINE_string(
  "keep_best_checkpoint",
  None,
  "Also keep the checkpoint with the best value of this validation metric (direction as for "
  "--early_stopping_metric), in WORKDIR/checkpoints_best; experiments.evaluate and "
  "experiments.apply load it by default. Default: off.",
)
flags.DEFINE_string(
  "checkpoint",
  "best",
  "The checkpoint a trained run is loaded from (experiments.evaluate, experiments.apply, "
  "dlu.load_run): best (the --keep_best_checkpoint one, else the latest), latest, or a step.",
)
flags.DEFINE_bool(
  "debug_nans", False, "Turn on JAX NaN checking to find the operation that makes one."
)

flags.DEFINE_bool(
  "allow_flag_changes",
  False,
  "Resume a workdir whose flags.txt records other run-defining flags (seed, data, model, "
  "optimizer, ...): without it such a rerun is refused. flags.txt keeps the changes as comments.",
)
flags.DEFINE_enum(
  "resume_from",
  "latest",
  ["latest", "last_intact"],
  "latest: resume from the newest checkpoint (a damaged one stops the run); last_intact: from "
  "the newest one that passes its checksums, moving the damaged ones to "
  "WORKDIR/corrupt_checkpoints.",
)
