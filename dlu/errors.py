"""Errors that carry a message meant for the person who launched the run."""


class UsageError(ValueError):
  """Bad input (a flag, a file, a dataset): the message names it and what was expected.

  Entry points print the message on one line and exit with status 2; nothing
  in the workdir has been touched when it is raised.
  """


class RunFailure(RuntimeError):
  """Training failed part-way (a non-finite metric, a full disk): the message says where and
  what was kept. Entry points print it on one line and exit with status 1."""
