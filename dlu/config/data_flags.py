"""Flags of what a run learns from: the model's name and the data (dataset, splits, table
preprocessing). Read when the run is built (`dlu.train.experiment.build`)."""

from absl import flags

flags.DEFINE_string("model", "ae_seed", "Model name; see dlu.families.names().")
flags.DEFINE_string(
  "dataset",
  "fashion_mnist",
  "digits | fashion_mnist | mnist | cifar10 | any tfds image dataset | npz:PATH (images "
  "[N, H, W(, C)] or vectors [N, D]) | folder:DIR | csv:PATH | parquet:PATH | json:PATH | series:PATH "
  "(time series: .ts, .tsv, .csv, .npz, or a directory of NAME_TRAIN/NAME_TEST files) | text:PATH "
  "(documents: a .txt file of one a line, a directory of .txt files, a .csv/.parquet table).",
)
flags.DEFINE_string(
  "data_dir", None, "tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
flags.DEFINE_string(
  "idx_dir", None, "Folder of Fashion-MNIST IDX files used to prepare the dataset offline."
)
flags.DEFINE_enum(
  "pixel_range", "unit", ["unit", "symmetric"], "Pixels scaled to [0, 1] (unit) or [-1, 1]."
)
# Tables (csv:, parquet:) and vectors (npz: with x [N, D]).
flags.DEFINE_string(
  "label_column",
  None,
  "csv/parquet: the column holding labels; series: a 0-based column index, a header name, last or "
  "none (default: the first cell of a row) (they only score clusterings, fit probes and "
  "condition GANs; never a feature). Default: unlabelled.",
)
flags.DEFINE_list(
  "categorical_columns",
  [],
  "Tables: columns read as categories (one-hot encoded) whatever their cells; by default text "
  "columns are categories, numbers numeric, true/false and yes/no booleans.",
)
flags.DEFINE_list(
  "numeric_columns", [], "Tables: columns read as numbers (each cell a number or missing)."
)
flags.DEFINE_list(
  "drop_columns",
  [],
  "Tables: columns never read as features (dates and free text are dropped without it, and said).",
)
flags.DEFINE_string(
  "id_column",
  None,
  "Tables: a column naming each row: never a feature, the rows split by it, and carried into "
  "experiments.apply's output.",
)
flags.DEFINE_string(
  "encoding",
  None,
  "CSV and JSON tables: the file's text encoding (e.g. latin-1, cp1252, utf-16). Default: UTF-8, "
  "with or without a byte-order mark; any other text is refused.",
)
flags.DEFINE_float(
  "test_fraction",
  0.1,
  "Tables and vectors without a test split: the fraction of rows held out for it (the same "
  "rows for a given --seed).",
)
flags.DEFINE_enum(
  "impute",
  "auto",
  ["auto", "none", "mean", "median", "model"],
  "Tables: missing cells. mean/median: filled with the training split's column mean or "
  "median; model: left missing, the model (ae_mlp, ae_seed, vae) sees which are and learns "
  "on the observed cells, and run.impute / experiments.apply --impute=model fill them; none: "
  "a missing cell is an error; auto: model where the table has missing cells and the model "
  "takes them, else none.",
)
flags.DEFINE_enum(
  "feature_scaling",
  "standard",
  ["standard", "minmax", "none"],
  "Tables and vectors: standard (zero mean, unit variance) or minmax ([0, 1]) per column, "
  "from the training split only; kept in WORKDIR/preprocessing.json.",
)
flags.DEFINE_integer(
  "embed_levels",
  16,
  "Tables: a categorical column of more levels than this (on the training split) is embedded "
  "by the model (ae_seed, ae_mlp, vae: its level id looked up in a learned embedding of "
  "min(16, ceil(1.6 * levels**0.56)) numbers) instead of read one-hot; other models read every "
  "category one-hot. 0: every category one-hot. Kept in WORKDIR/preprocessing.json.",
)
flags.DEFINE_float(
  "validation_fraction",
  0.1,
  "Fraction of the training split held out for validation (the same rows for a given --seed, "
  "never trained on) when the dataset has no validation split of its own; evals during "
  "training score it, the test split is scored once, at the end. 0: no validation split "
  "(evals during training then score the test split).",
)
flags.DEFINE_string(
  "class_balance",
  None,
  "Labelled data: train on a class-imbalanced subset of the training split, the same rows for "
  "a given --seed. longtail:R (exponential profile, R:1 between class 0 and the last class) "
  "or counts:N0,N1,... (examples of each class). Default: the whole split.",
)
# Time series (series:).
flags.DEFINE_integer(
  "series_length",
  0,
  "Series: resample every series (linear interpolation) to this many steps; 0: pad to the "
  "training split's longest, the padding masked.",
)
flags.DEFINE_enum(
  "series_scaling",
  "znorm",
  ["znorm", "global", "none"],
  "Series: znorm (each series and channel to zero mean, unit variance), global (per channel, "
  "from the training split) or none; kept in WORKDIR/series.json.",
)
# Text (text:).
flags.DEFINE_string(
  "text_column", None, "text: a .csv/.parquet table's column holding the documents."
)
flags.DEFINE_enum(
  "tokenizer",
  "bytes",
  ["bytes", "sentencepiece"],
  "text: UTF-8 bytes, or a SentencePiece model of --vocab_size pieces trained on the training "
  "split; kept in WORKDIR/text.json.",
)
flags.DEFINE_integer("vocab_size", 0, "text --tokenizer=sentencepiece: pieces in its vocabulary.")
flags.DEFINE_integer(
  "max_length",
  256,
  "text: tokens per document (its end token included), longer ones truncated (the run's "
  "summary counts them); 0: the training split's longest.",
)
