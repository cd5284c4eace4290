"""What every absl entry point does first: reject stray arguments, quiet library logs."""

from absl import app, flags, logging


def start(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter off the console
