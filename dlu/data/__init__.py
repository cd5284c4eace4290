"""Datasets (images, tables, vectors), in memory or read by row from disk, and the order in which
training batches visit them.

    ds = data.load("fashion_mnist")   # or "digits", "npz:PATH", "folder:DIR", "records:DIR", ...
    sampler = data.BatchSampler(len(ds.x_train), 128, seed=0)
    x = data.normalize(ds.x_train[sampler.indices(step)])

Small datasets are decoded once, cached, and batched from memory. `records:DIR` (ArrayRecord
shards that `experiments.prepare_data` writes) and `npy:PATH` stay on disk: their splits are
`RowArray`s, indexed like arrays, read row by row when a batch needs them. Reading needs no
TensorFlow; only downloading new tfds datasets does (see tfds_offline).

Modules, each importing only those named before it: arrays (Dataset, normalize, checks);
fingerprints (a table's rows split by content, its fingerprint); columns (a table's column
kinds, inferred or named, and their encoding: one-hot categories, 0/1 booleans);
preprocessing (a table's imputation and scaling, fitted on the training split; JSON); sampler
(BatchSampler, BatchReader); subsets (the validation rows, a class-imbalanced subset); local
(digits, npz, folder), tables (csv, parquet, vectors: reading, checks, splits), records (rows on
disk) and tfds_offline; sources (load); writer and preparation (records written once).
"""

from dlu.data.arrays import ACCEPTED_FORMS, PIXEL_RANGES, Dataset, RowArray, normalize
from dlu.data.sampler import BatchReader, BatchSampler
from dlu.data.sources import (
  DEFAULT_IDX_DIR,
  TableOptions,
  default_data_dir,
  describe,
  load,
  prepare,
  read_rows,
  read_table_input,
  read_table_rows,
)
from dlu.data.subsets import class_balance, hold_out_validation

__all__ = [
  "ACCEPTED_FORMS",
  "BatchReader",
  "BatchSampler",
  "DEFAULT_IDX_DIR",
  "Dataset",
  "PIXEL_RANGES",
  "RowArray",
  "TableOptions",
  "class_balance",
  "default_data_dir",
  "describe",
  "hold_out_validation",
  "load",
  "normalize",
  "prepare",
  "read_rows",
  "read_table_input",
  "read_table_rows",
]
