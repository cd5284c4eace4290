"""Configuration snapshots and validation messages."""

import pytest

from dlu import flags as dlu_flags
from dlu.errors import UsageError


@pytest.mark.parametrize("overrides,message", [
    (dict(model="nope"), "--model='nope' is not a model; accepted: ae_conv, ae_mlp, ae_seed"),
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
])
def test_validation_names_the_flag(overrides, message):
  with pytest.raises(UsageError, match=message.replace("(", r"\(")):
    dlu_flags.validate(dlu_flags.make_config(**overrides))


def test_defaults_are_valid_and_flagfile_round_trips():
  cfg = dlu_flags.make_config(model="ae_mlp", widths=["64", "32"])
  dlu_flags.validate(cfg)
  text = cfg.to_flagfile()
  assert "--model=ae_mlp\n" in text and "--widths=64,32\n" in text
  assert "--logtostderr" not in text  # absl's own flags are not part of a run


def test_unknown_override_is_an_error():
  with pytest.raises(UsageError, match="--not_a_flag"):
    dlu_flags.make_config(not_a_flag=1)
