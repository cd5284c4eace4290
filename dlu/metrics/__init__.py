"""Scores computed on host arrays: clustering (ACC/NMI/ARI, probes), sample quality (FID, KID, precision/recall) and the feature network they use; which way each metric improves."""
