"""A run from its Config: its set-up (`run`), the loop (`loop`), model selection, the workdir's chores, evaluation of a trained run and its application to new data."""
