"""Contrastive representations of time series (series:PATH): `simclr_conv1d`.

The SimCLR family (dlu/families/contrastive.py: NT-Xent over the global batch, `--temperature`,
`--projection_dims`, and `--cluster_head` for contrastive clustering's head) with views of
series as TS2Vec, TS-TCC and T-Loss draw them (`views.series_views`): a random crop of at least
`--crop_min_scale` of each series' observed span (the steps outside it become missing), each
channel scaled by 1 + `--view_scaling` * N(0, 1), `--view_jitter` Gaussian noise, and each step
hidden with probability `--view_time_mask`. The encoder (`Conv1DContrastiveNet`) is a stack of
dilated residual 1-D convolutions, `--conv_channels` wide with kernels of
`--series_kernel_size`, max-pooled over the observed steps into a `--latent_dim`
representation, which `embed` returns L2-normalised for the clustering evaluator, the probes,
`Run.encode` and `Run.score(method=knn|cosine)`.
"""

from __future__ import annotations

import jax
from absl import flags

from dlu.config import require_fraction, require_non_negative, require_positive
from dlu.config.model_flags import int_list
from dlu.errors import UsageError
from dlu.families.base import register
from dlu.families.contrastive import SimCLR
from dlu.models import sequence as seq_models
from dlu.ops import views

flags.DEFINE_float(
  "view_jitter", 0.1, "simclr_conv1d: std of the Gaussian noise added to every value of a view."
)
flags.DEFINE_float(
  "view_scaling",
  0.1,
  "simclr_conv1d: each channel of a view is multiplied by 1 + view_scaling * N(0, 1).",
)
flags.DEFINE_float(
  "view_time_mask", 0.1, "simclr_conv1d: probability that a step of a view is hidden (missing)."
)


@register
class SeriesSimCLR(SimCLR):
  models = ("simclr_conv1d",)
  takes_series = True

  @classmethod
  def validate(cls, cfg):
    super().validate(cfg)
    require_positive(cfg, "series_kernel_size")
    require_non_negative(cfg, "view_jitter", "view_scaling")
    require_fraction(cfg, "view_time_mask")

  def __init__(self, cfg, spec):
    if not spec.is_series:
      what = "images" if spec.is_image else "vectors"
      raise UsageError(
        f"--model={cfg.model} needs time series [T, C] (--dataset=series:PATH); the data are {what}"
      )
    super().__init__(cfg, spec)

  def make_model(self):
    cfg = self.cfg
    return seq_models.Conv1DContrastiveNet(
      channels=int_list(cfg.conv_channels, "conv_channels"),
      kernel_size=cfg.series_kernel_size,
      feature_dim=cfg.latent_dim,
      projection=int_list(cfg.projection_dims, "projection_dims"),
      num_clusters=self.num_clusters,
      kernel_init=self.kernel_init,
      dtype=self.compute_dtype,
    )

  def two_views(self, series, rng):
    """Two independent random views of each series (NaN missing). [B, T, C] each"""
    cfg = self.cfg
    draw = lambda key: views.series_views(
      key,
      series,
      min_crop=cfg.crop_min_scale,
      jitter=cfg.view_jitter,
      scaling=cfg.view_scaling,
      time_mask=cfg.view_time_mask,
    )
    k1, k2 = jax.random.split(rng)
    return draw(k1), draw(k2)

  def images(self, state, batch, rng):
    return {}
