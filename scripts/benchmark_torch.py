"""The benchmark's models in PyTorch, trained the way a PyTorch user would write it.

Imported only by `scripts/benchmark.py --worker=pytorch`; dlu never imports it.
Same architectures, losses and optimiser settings as dlu's models of the same name (the image
models from PyTorch's default initialisers; ae_conv1d and text_ae initialised as dlu does).
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


class Conv1DAutoencoder(nn.Module):
  """dlu's ae_conv1d: the series and its mask on the channels, stride-2 1-D convs, a dense
  code, dense back to T/4 steps, stride-2 transposed convs and a stride-1 output conv."""

  def __init__(self, length, channels, latent_dim, widths=(32, 64), k=5):
    super().__init__()
    self.t0 = length // 2 ** len(widths)
    down, up = [2 * channels, *widths], [widths[-1], *reversed(widths)]
    convs = []
    for cin, cout in zip(down[:-1], down[1:]):
      convs += [nn.Conv1d(cin, cout, k, stride=2, padding=k // 2), nn.ReLU()]
    self.encoder = nn.Sequential(*convs, nn.Flatten(), nn.Linear(self.t0 * widths[-1], latent_dim))
    deconvs = []
    for cin, cout in zip(up[:-1], up[1:]):
      deconvs += [
        nn.ConvTranspose1d(cin, cout, k, stride=2, padding=k // 2, output_padding=1),
        nn.ReLU(),
      ]
    self.expand = nn.Linear(latent_dim, self.t0 * widths[-1])
    self.decoder = nn.Sequential(*deconvs, nn.Conv1d(widths[0], channels, k, padding=k // 2))
    for m in self.modules():  # dlu's initialisation: Glorot-uniform kernels, zero biases
      if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x, mask):  # [B, T, C] each -> [B, T, C]
    h = self.encoder(torch.cat([x, mask], -1).transpose(1, 2))
    h = F.relu(self.expand(h)).view(len(x), -1, self.t0)
    return self.decoder(h).transpose(1, 2)


class Block(nn.Module):
  """Pre-norm self-attention and a feed-forward layer (GELU, tanh form), both residual."""

  def __init__(self, dim, heads, ff):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
    self.ff1, self.ff2 = nn.Linear(dim, ff), nn.Linear(ff, dim)

  def forward(self, x, attn_mask=None, key_padding_mask=None):
    h = self.norm1(x)
    h = self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask)[0]
    x = x + h
    return x + self.ff2(F.gelu(self.ff1(self.norm2(x)), approximate="tanh"))


class TextAutoencoder(nn.Module):
  """dlu's text_ae: a Transformer encoder mean-pooled over the real tokens to a code, and a
  causal Transformer decoder that sees the code added to every input position."""

  def __init__(self, vocab, length, dim=64, heads=4, layers=2, ff=256, latent_dim=32):
    super().__init__()
    self.embed = nn.Embedding(vocab, dim)
    self.positions = nn.Parameter(torch.randn(length, dim) * 0.02)
    self.encoder = nn.ModuleList(Block(dim, heads, ff) for _ in range(layers))
    self.decoder = nn.ModuleList(Block(dim, heads, ff) for _ in range(layers))
    self.encoder_norm, self.decoder_norm = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.code, self.from_code = nn.Linear(dim, latent_dim), nn.Linear(latent_dim, dim)
    self.out = nn.Linear(dim, vocab)
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    self.register_buffer("causal", causal, persistent=False)
    # dlu's initialisation: Glorot-uniform kernels (q, k and v each), zero biases, embeddings
    # N(0, 1/dim), positions N(0, 0.02^2).
    nn.init.normal_(self.embed.weight, std=dim**-0.5)
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.MultiheadAttention):
        for w in m.in_proj_weight.chunk(3):
          nn.init.xavier_uniform_(w)

  def _embed(self, tokens):
    return self.embed(tokens) + self.positions[: tokens.shape[1]]

  def encode(self, tokens):
    pad = tokens == 0
    h = self._embed(tokens)
    for block in self.encoder:
      h = block(h, key_padding_mask=pad)
    h = self.encoder_norm(h)
    w = (~pad).unsqueeze(-1).float()
    return self.code((h * w).sum(1) / w.sum(1).clamp(min=1))

  def forward(self, tokens, inputs):
    h = self._embed(inputs) + self.from_code(self.encode(tokens)).unsqueeze(1)
    mask = self.causal[: inputs.shape[1], : inputs.shape[1]]
    for block in self.decoder:
      h = block(h, attn_mask=mask)
    return self.out(self.decoder_norm(h))


# Token ids of dlu's text data: 0 padding, 1 start, 2 end, 3 unknown; real tokens from 4.
PAD, BOS, UNK, NUM_SPECIAL = 0, 1, 3, 4


class SequenceTrainer:
  """ae_conv1d on series [N, T, C] (NaN: missing) or text_ae on token ids [N, L]; the same
  `step()` and `outputs()` as `Trainer`."""

  def __init__(self, model, x, batch_size, latent_dim, seed=0, compile=False):  # noqa: A002
    torch.manual_seed(seed)
    self.model, self.batch_size = model, batch_size
    self.x = torch.from_numpy(x)
    self.perm, self.pos = torch.randperm(len(self.x)), 0
    if model == "ae_conv1d":
      self.net = Conv1DAutoencoder(x.shape[1], x.shape[2], latent_dim)
    elif model == "text_ae":
      self.net = TextAutoencoder(NUM_SPECIAL + 256, x.shape[1], latent_dim=latent_dim)
    else:
      raise KeyError(model)
    self.opt = torch.optim.Adam(self.net.parameters(), 1e-3)
    if compile:
      self.net = torch.compile(self.net)

  def _next(self) -> torch.Tensor:
    if self.pos + self.batch_size > len(self.x):
      self.perm, self.pos = torch.randperm(len(self.x)), 0
    idx = self.perm[self.pos : self.pos + self.batch_size]
    self.pos += self.batch_size
    return self.x[idx]

  def step(self) -> float:
    batch = self._next()
    self.opt.zero_grad(set_to_none=True)
    if self.model == "ae_conv1d":  # MSE over each series' observed values, mean over series
      mask = torch.isfinite(batch).float()
      x = torch.nan_to_num(batch, nan=0.0)
      err = ((self.net(x, mask) - x) ** 2 * mask).sum((1, 2))
      loss = (err / mask.sum((1, 2)).clamp(min=1)).mean()
    else:  # cross-entropy on the real tokens; word dropout 0.25 on the decoder's inputs
      tokens = batch.long()
      inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], 1)
      drop = (torch.rand(inputs.shape) < 0.25) & (inputs >= NUM_SPECIAL)
      inputs = inputs.masked_fill(drop, UNK)
      logits = self.net(tokens, inputs)
      loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), ignore_index=PAD)
    loss.backward()
    self.opt.step()
    return loss.item()

  @torch.no_grad()
  def outputs(self, inputs: dict[str, np.ndarray], n_samples: int, batch: int = 1000) -> dict:
    """ae_conv1d: reconstructions of the test series; text_ae: teacher-forced logits."""
    del n_samples
    self.net.eval()
    x, parts = torch.from_numpy(inputs["x_test"]), []
    for i in range(0, len(x), batch):
      b = x[i : i + batch]
      if self.model == "ae_conv1d":
        parts.append(self.net(torch.nan_to_num(b, nan=0.0), torch.isfinite(b).float()))
      else:
        b = b.long()
        parts.append(self.net(b, torch.cat([torch.full_like(b[:, :1], BOS), b[:, :-1]], 1)))
    self.net.train()
    key = "output" if self.model == "ae_conv1d" else "logits"
    return {key: torch.cat(parts).numpy().astype(np.float32)}


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

  def _trainer(self, model, latent_dim, seed, x_train):
    if x_train is not None:  # the sequence models
      return SequenceTrainer(model, x_train, self.batch_size, latent_dim, seed, self.compile)
    return Trainer(model, self.x, self.batch_size, latent_dim, seed, compile=self.compile)

  def setup(self, model: str, latent_dim: int, x_train=None) -> tuple[float, float]:
    """(seconds of the first step, seconds per step after it)."""
    trainer = self._trainer(model, latent_dim, 0, x_train)
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
    trainer = self._trainer(model, latent_dim, seed, inputs.get("x_train"))
    seconds, step = 0.0, 0
    for target in eval_at:
      t = time.perf_counter()
      for _ in range(target - step):
        trainer.step()
      seconds += time.perf_counter() - t
      step = target
      report(step, seconds, trainer.outputs(inputs, n_samples))
