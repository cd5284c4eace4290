"""What a run measures, by name: evaluators run during training (`--evaluators`) and by
experiments.evaluate. Importing this package registers the built-in ones (and their flags).

  metrics         the family's eval metrics on the test split, and its split metrics
  sample_quality  FID, KID, precision and recall of a generative family's samples
  likelihood      the family's end-of-run metrics (VAEs: nll_iwae, bits_per_dim)
  images          the family's image grids (images)
  features        per-feature reconstruction error and a PCA map of the embeddings (vectors)
  clustering      clustering scores, probes and baselines of the embeddings (labelled data)
  series_plots    test series drawn over their reconstructions (series)
  text_samples    documents, their reconstructions and a VAE's samples as text (text)
"""

from dlu.evaluators import (  # noqa: F401
  clustering,
  family_metrics,
  features,
  sample_quality,
  series_plots,
  text_samples,
)
from dlu.evaluators.registry import (  # noqa: F401
  Evaluation,
  Evaluator,
  Inputs,
  flat_scalars,
  full_schedule,
  get,
  names,
  parse_schedule,
  register,
  training_schedule,
)
