"""Configuration snapshots and validation messages."""

import glob
import os
import shutil

import pytest

from dlu import config, families
from dlu.config import model_flags
from dlu.errors import UsageError


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      dict(model="nope"),
      "--model='nope' is not a model; accepted: ae_conv, ae_conv1d, ae_mlp, ae_seed, ae_seq",
    ),
    (dict(batch_size=0), "--batch_size must be a positive integer"),
    (dict(num_steps=-5), "--num_steps must be a positive integer"),
    (dict(learning_rate=0.0), "--learning_rate must be > 0"),
    (dict(learning_rate=-1e-3), "--learning_rate must be > 0"),
    (dict(optimizer="rmsprop"), "--optimizer must be one of gd, sgd, momentum, adam, adamw"),
    (dict(schedule="step"), "--schedule must be one of"),
    (dict(latent_dim=0), "--latent_dim must be a positive integer"),
    (dict(model="ae_mlp", widths=["a"]), "--widths must be a comma-separated list"),
    (dict(noise="gaussian", noise_level=0.0), "--noise=gaussian needs --noise_level > 0"),
    (dict(recon_loss="bce", pixel_range="symmetric"), "--recon_loss=bce needs --pixel_range=unit"),
    (dict(warmup_steps=10, num_steps=5), "--warmup_steps"),
    (dict(kernel_init="bogus"), "--kernel_init must be one of auto, glorot_uniform, glorot_normal"),
  ],
)
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message.replace("(", r"\(")):
    families.validate(config.make_config(**overrides))


def test_shared_model_flags_are_checked_on_their_own():
  with pytest.raises(UsageError, match="--dropout must be in"):
    model_flags.validate(config.make_config(dropout=1.0))


def test_defaults_are_valid_and_flagfile_round_trips():
  cfg = config.make_config(model="ae_mlp", widths=["64", "32"])
  families.validate(cfg)
  text = cfg.to_flagfile()
  assert "--model=ae_mlp\n" in text and "--widths=64,32\n" in text
  assert "--logtostderr" not in text  # absl's own flags are not part of a run


def test_unknown_override_is_an_error():
  with pytest.raises(UsageError, match="--not_a_flag"):
    config.make_config(not_a_flag=1)


CONFIGS = sorted(
  glob.glob(
    os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      "experiments",
      "configs",
      "*.flags",
    )
  )
)


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_shipped_config_parses_and_validates(path, tmp_path):
  cfg = config.config_from_flagfile(path)
  if cfg.model in ("dec", "idec"):  # They start from an autoencoder run given on the command line.
    ae = "ae_digits" if cfg.dataset == "digits" else "ae_dec_fashion_mnist"
    (tmp_path / "ae").mkdir()
    shutil.copy(os.path.join(os.path.dirname(path), f"{ae}.flags"), tmp_path / "ae" / "flags.txt")
    cfg = cfg.replace(init_from=str(tmp_path / "ae"))
  families.validate(cfg)
  assert cfg.num_steps >= 1 and cfg.dataset in ("digits", "fashion_mnist")
  if os.path.basename(path).startswith("cdcgan"):
    assert cfg.conditional  # a bare --conditional line reads as absl reads it


def test_bare_boolean_lines_in_a_flagfile(tmp_path):
  from dlu import evaluators  # noqa: F401  (defines --baselines, True by default)

  path = tmp_path / "run.flags"
  path.write_text("--model=dcgan\n--conditional\n--nobaselines\n")
  cfg = config.config_from_flagfile(str(path))
  assert cfg.conditional is True and cfg.baselines is False
  path.write_text("--model\n")
  with pytest.raises(UsageError, match=r"--model needs a value"):
    config.config_from_flagfile(str(path))
