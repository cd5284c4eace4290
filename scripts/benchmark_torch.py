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
  import os  # noqa: PLC0415

  policy = os.environ.get("OMP_WAIT_POLICY", "default")
  return f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY {policy})"


def _conv(cin, cout, k, s):  # 'SAME' for even inputs: output = input / s
  return nn.Conv2d(cin, cout, k, stride=s, padding=(k - 1) // 2)


def _deconv(cin, cout, k, s):  # output = input * s
  if s == 1:
    return nn.ConvTranspose2d(cin, cout, k, stride=1, padding=(k - 1) // 2)
  return nn.ConvTranspose2d(
    cin, cout, k, stride=s, padding=(k - 1) // 2, output_padding=s - 1 if k % 2 else 0
  )


class ConvEncoder(nn.Module):
  def __init__(self, out_dim, hw=(28, 28)):
    super().__init__()
    self.convs = nn.Sequential(_conv(1, 32, 3, 2), nn.ReLU(), _conv(32, 64, 3, 2), nn.ReLU())
    self.dense = nn.Linear(hw[0] // 4 * (hw[1] // 4) * 64, out_dim)

  def forward(self, x):
    return self.dense(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
  def __init__(self, in_dim, hw=(28, 28)):
    super().__init__()
    self.hw = (hw[0] // 4, hw[1] // 4)
    self.dense = nn.Linear(in_dim, self.hw[0] * self.hw[1] * 64)
    self.deconvs = nn.Sequential(
      _deconv(64, 64, 3, 2), nn.ReLU(), _deconv(64, 32, 3, 2), nn.ReLU(), _deconv(32, 1, 3, 1)
    )

  def forward(self, z):
    return self.deconvs(F.relu(self.dense(z)).view(-1, 64, *self.hw))


def _mlp(widths):
  layers = []
  for i in range(len(widths) - 1):
    layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
  return nn.Sequential(*layers[:-1])


class Trainer:
  """One model, its optimiser and the data; `step()` is one training step on the next batch."""

  def __init__(
    self,
    model: str,
    x: np.ndarray,
    batch_size: int,
    latent_dim: int,
    seed: int = 0,
    compile: bool = False,  # noqa: A002  (torch's word)
  ):
    torch.manual_seed(seed)
    self.model, self.batch_size, self.latent_dim = model, batch_size, latent_dim
    self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # [N, 1, H, W] uint8
    hw, d = tuple(self.x.shape[2:]), self.x[0].numel()
    self.perm, self.pos = torch.randperm(len(self.x)), 0
    if model == "ae_seed":
      self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, d))
    elif model == "ae_mlp":
      self.net = nn.Sequential(nn.Flatten(), _mlp([d, 512, 256, 32, 256, 512, d]))
    elif model == "ae_conv":
      self.net = nn.Sequential(ConvEncoder(latent_dim, hw), ConvDecoder(latent_dim, hw))
    elif model == "conv_vae":
      self.net = nn.ModuleDict(
        {"enc": ConvEncoder(2 * latent_dim, hw), "dec": ConvDecoder(latent_dim, hw)}
      )
    elif model == "dcgan":
      h4, w4 = hw[0] // 4, hw[1] // 4
      self.g = nn.Sequential(
        nn.Linear(latent_dim, h4 * w4 * 128, bias=False),
        nn.Unflatten(1, (128, h4, w4)),
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
        nn.Linear(h4 * w4 * 128, 1),
      )
      self.g_opt = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
      self.d_opt = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))
    else:
      raise KeyError(model)
    if model != "dcgan":
      self.opt = torch.optim.Adam(self.net.parameters(), 1e-3)
    if compile:  # The fast setting: each network wrapped in torch.compile (same parameters).
      if model == "dcgan":
        self.g, self.d = torch.compile(self.g), torch.compile(self.d)
      elif model == "conv_vae":
        self.net = nn.ModuleDict({k: torch.compile(v) for k, v in self.net.items()})
      else:
        self.net = torch.compile(self.net)

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

  @torch.no_grad()
  def outputs(self, inputs: dict[str, np.ndarray], n_samples: int, batch: int = 1000) -> dict:
    """What the benchmark scores (see `benchmark.py`), with the networks in eval mode."""
    nets = [self.g] if self.model == "dcgan" else [self.net]
    for net in nets:
      net.eval()
    out = {}
    if self.model == "dcgan":
      z = torch.randn(n_samples, self.latent_dim)
      parts = [self.g(z[i : i + batch]) for i in range(0, n_samples, batch)]
      out["samples"] = (torch.cat(parts) + 1) / 2  # [n, 1, H, W] in [0, 1]
    elif self.model == "conv_vae":
      x = torch.from_numpy(inputs["binary"]).permute(0, 3, 1, 2)
      eps = torch.from_numpy(inputs["eps"])
      h = torch.cat([self.net["enc"](x[i : i + batch]) for i in range(0, len(x), batch)])
      mean, log_var = h[:, : self.latent_dim], h[:, self.latent_dim :]
      z = mean + torch.exp(0.5 * log_var) * eps
      out = {"mean": mean, "log_var": log_var}
      out["logits"] = torch.cat(
        [self.net["dec"](z[i : i + batch]) for i in range(0, len(z), batch)]
      )
    else:
      x = torch.from_numpy(inputs["images"]).permute(0, 3, 1, 2).float() / 255.0
      out["output"] = torch.cat([self.net(x[i : i + batch]) for i in range(0, len(x), batch)])
    for net in nets:
      net.train()
    c, h, w = self.x.shape[1:]
    as_nhwc = lambda t: t.reshape(len(t), c, h, w).permute(0, 2, 3, 1)
    images = ("output", "samples", "logits")
    return {
      k: (as_nhwc(v) if k in images else v).numpy().astype(np.float32) for k, v in out.items()
    }


class Runner:
  """The worker protocol: set up a model (timing its first step), then run timed steps."""

  def __init__(self, x: np.ndarray, batch_size: int, compile: bool = False):  # noqa: A002
    self.x, self.batch_size, self.trainers, self.compile = x, batch_size, {}, compile

  def setup(self, model: str, latent_dim: int) -> tuple[float, float]:
    """(seconds of the first step, seconds per step after it)."""
    trainer = Trainer(model, self.x, self.batch_size, latent_dim, compile=self.compile)
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

  def train(self, model, latent_dim, seed, steps, eval_at, inputs, n_samples, report):
    """Train a fresh model for `steps` steps; at each step in `eval_at`, `report(step,
    training seconds so far, outputs)` (the time it takes is not counted)."""
    trainer = Trainer(model, self.x, self.batch_size, latent_dim, seed, compile=self.compile)
    seconds, step = 0.0, 0
    for target in eval_at:
      t = time.perf_counter()
      for _ in range(target - step):
        trainer.step()
      seconds += time.perf_counter() - t
      step = target
      report(step, seconds, trainer.outputs(inputs, n_samples))
