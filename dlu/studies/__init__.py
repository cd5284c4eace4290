"""Studies built on trained runs: class-conditional GAN samples as training data (few_shot) and rebalancing imbalanced data (imbalance)."""
