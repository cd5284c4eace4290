"""Scores computed on host arrays: clustering (ACC/NMI/ARI, probes), sample quality (FID, KID, precision/recall) and the feature network they use; which way each metric improves."""

#: Metrics where higher is better (early stopping, the best checkpoint, sweeps); the leaf
#: name of a nested metric counts (`probes/linear_probe_acc` ends in `acc`).
HIGHER_IS_BETTER = ("psnr", "acc", "nmi", "ari", "accuracy", "recall", "precision", "elbo")


def higher_is_better(metric: str) -> bool:
  leaf = metric.rsplit("/", 1)[-1]
  return any(leaf == m or leaf.endswith("_" + m) for m in HIGHER_IS_BETTER)
