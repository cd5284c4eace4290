"""A run from its Config: its set-up (`experiment`), the loop (`loop`), model selection
(`selection`), the workdir's lock, flags.txt and files (`workspace`), evaluation of a trained run
(`evaluate`) and its application to new data (`apply`)."""
