"""Errors that carry a message meant for the person who launched the run."""


class UsageError(ValueError):
  """Bad input (a flag, a file, a dataset): the message names it and what was expected.

  Entry points print the message on one line and exit with status 2; nothing
  in the workdir has been touched when it is raised.
  """
