"""The benchmark's models in PyTorch, trained the way a PyTorch user would write it.

Imported only by `scripts/benchmark.py --worker=pytorch`; dlu never imports it.
Same architectures, losses and optimiser settings as dlu's models of the same name.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def version() -> str:
  return f"torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _conv(cin, cout, k, s):  # 'SAME' for even inputs: output = input / s
  return nn.Conv2d(cin, cout, k, stride=s, padding=(k - 1) // 2)


def _deconv(cin, cout, k, s):  # output = input * s
  if s == 1:
    return nn.ConvTranspose2d(cin, cout, k, stride=1, padding=(k - 1) // 2)
  return nn.ConvTranspose2d(
    cin, cout, k, stride=s, padding=(k - 1) // 2, output_padding=s - 1 if k % 2 else 0
  )


class ConvEncoder(nn.Module):
  def __init__(self, out_dim):
    super().__init__()
    self.convs = nn.Sequential(_conv(1, 32, 3, 2), nn.ReLU(), _conv(32, 64, 3, 2), nn.ReLU())
    self.dense = nn.Linear(7 * 7 * 64, out_dim)

  def forward(self, x):
    return self.dense(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
  def __init__(self, in_dim):
    super().__init__()
    self.dense = nn.Linear(in_dim, 7 * 7 * 64)
    self.deconvs = nn.Sequential(
      _deconv(64, 64, 3, 2), nn.ReLU(), _deconv(64, 32, 3, 2), nn.ReLU(), _deconv(32, 1, 3, 1)
    )

  def forward(self, z):
    return self.deconvs(F.relu(self.dense(z)).view(-1, 64, 7, 7))


def _mlp(widths):
  layers = []
  for i in range(len(widths) - 1):
    layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
  return nn.Sequential(*layers[:-1])


class Trainer:
  """One model, its optimiser and the data; `step()` is one training step on the next batch."""

  def __init__(self, model: str, x: np.ndarray, batch_size: int, latent_dim: int):
    torch.manual_seed(0)
    self.model, self.batch_size, self.latent_dim = model, batch_size, latent_dim
    self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # [N, 1, 28, 28] uint8
    self.perm, self.pos = torch.randperm(len(self.x)), 0
    if model == "ae_seed":
      self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 784))
    elif model == "ae_mlp":
      self.net = nn.Sequential(nn.Flatten(), _mlp([784, 512, 256, 32, 256, 512, 784]))
    elif model == "ae_conv":
      self.net = nn.Sequential(ConvEncoder(latent_dim), ConvDecoder(latent_dim))
    elif model == "conv_vae":
      self.net = nn.ModuleDict({"enc": ConvEncoder(2 * latent_dim), "dec": ConvDecoder(latent_dim)})
    elif model == "dcgan":
      self.g = nn.Sequential(
        nn.Linear(latent_dim, 7 * 7 * 128, bias=False),
        nn.Unflatten(1, (128, 7, 7)),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1),
        nn.Tanh(),
      )
      self.d = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(7 * 7 * 128, 1),
      )
      self.g_opt = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
      self.d_opt = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))
    else:
      raise KeyError(model)
    if model != "dcgan":
      self.opt = torch.optim.Adam(self.net.parameters(), 1e-3)

  def _batch(self) -> torch.Tensor:
    if self.pos + self.batch_size > len(self.x):
      self.perm, self.pos = torch.randperm(len(self.x)), 0
    idx = self.perm[self.pos : self.pos + self.batch_size]
    self.pos += self.batch_size
    return self.x[idx].float() / 255.0

  def step(self) -> float:
    x = self._batch()
    if self.model == "dcgan":
      return self._gan_step(x * 2 - 1)
    self.opt.zero_grad(set_to_none=True)
    if self.model == "ae_seed":
      loss = F.mse_loss(self.net(x), x.flatten(1))
    elif self.model == "ae_mlp":
      loss = F.binary_cross_entropy_with_logits(self.net(x), x.flatten(1))
    elif self.model == "ae_conv":
      loss = F.binary_cross_entropy_with_logits(self.net(x), x)
    else:  # conv_vae: dynamically binarised, Bernoulli likelihood, one posterior sample
      x = torch.bernoulli(x)
      h = self.net["enc"](x)
      mean, log_var = h[:, : self.latent_dim], h[:, self.latent_dim :]
      z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
      logits = self.net["dec"](z)
      nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
      kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1)
      loss = (nll + kl).mean()
    loss.backward()
    self.opt.step()
    return loss.item()

  def _gan_step(self, real: torch.Tensor) -> float:
    z = torch.randn(len(real), self.latent_dim)
    fake = self.g(z)
    self.d_opt.zero_grad(set_to_none=True)
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
    d_loss = F.binary_cross_entropy_with_logits(
      self.d(real), ones
    ) + F.binary_cross_entropy_with_logits(self.d(fake.detach()), zeros)
    d_loss.backward()
    self.d_opt.step()
    self.g_opt.zero_grad(set_to_none=True)
    g_loss = F.binary_cross_entropy_with_logits(self.d(fake), ones)
    g_loss.backward()
    self.g_opt.step()
    return d_loss.item()


class Runner:
  """The worker protocol: set up a model (timing its first step), then run timed steps."""

  def __init__(self, x: np.ndarray, batch_size: int):
    self.x, self.batch_size, self.trainers = x, batch_size, {}

  def setup(self, model: str, latent_dim: int) -> tuple[float, float]:
    """(seconds of the first step, seconds per step after it)."""
    trainer = Trainer(model, self.x, self.batch_size, latent_dim)
    t = time.perf_counter()
    trainer.step()
    first = time.perf_counter() - t
    self.trainers[model] = trainer
    return first, self.run(model, 2) / 2

  def run(self, model: str, steps: int) -> float:
    trainer = self.trainers[model]
    t = time.perf_counter()
    for _ in range(steps):
      trainer.step()
    return time.perf_counter() - t
