"""Documents read from files (`text:PATH`) and how they become model inputs: token ids int32
[N, L] padded with 0 (`TextPreprocessing`, fitted on the training split, kept in
WORKDIR/text.json and applied as is by resume, evaluation and `dlu.load_run`).

Sources: a `.txt` file with one document a line; a directory of `.txt` files, one document each
(class subdirectories give labels, as image folders do); a CSV or Parquet table with the
documents in `--text_column` (labels in `--label_column`).

Tokenisers: `bytes` (UTF-8 bytes, 256 ids after the special ones) or `sentencepiece` (a unigram
model of `--vocab_size` pieces trained on the training split only; its model is stored inside
text.json, and beside it as tokenizer.model for other tools). Ids: 0 padding, 1 the start of a
document (the decoder's first input), 2 its end, 3 unknown (and the word-dropout token).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import numpy as np

from dlu.errors import UsageError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
NUM_SPECIAL = 4
BYTE_VOCAB = NUM_SPECIAL + 256
TOKENIZERS = ("bytes", "sentencepiece")
FILE_NAME = "text.json"  # WORKDIR/text.json: how a run's documents became token ids
SPM_FILE = "tokenizer.model"  # beside it: the SentencePiece model alone
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclasses.dataclass(frozen=True)
class TextOptions:
  """How text:PATH is read and tokenised (--text_column, --tokenizer, --vocab_size,
  --max_length)."""

  text_column: str | None = None
  tokenizer: str = "bytes"
  vocab_size: int = 0
  max_length: int = 256


@dataclasses.dataclass
class RawText:
  """Documents as read, and their labels (text) when the source has them."""

  docs: list[str]
  labels: np.ndarray | None  # [N] label text, or None when unlabelled
  path: str


def _decode(data: bytes, path: str, what: str) -> str:
  """`data` as UTF-8 (a byte-order mark dropped); else the file and line of the first bad byte."""
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise UsageError(
      f"{what}: {path} line {line} is not UTF-8 text (byte {e.start}); expected UTF-8"
    ) from None


def _read_bytes(path: str, what: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UsageError(f"{what}: cannot read {path} ({e.strerror})") from None


def read_lines(path: str, what: str) -> RawText:
  """A text file with one document a line (a last newline allowed; no blank line)."""
  lines = _decode(_read_bytes(path, what), path, what).splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      raise UsageError(
        f"{what}: {path} line {i + 1} is an empty document; expected one document a line"
      )
  if not lines:
    raise UsageError(f"{what}: {path} holds no document; expected one document a line")
  return RawText(lines, None, path)


def read_directory(path: str, what: str) -> RawText:
  """`.txt` files of a directory, one document each, in sorted order; with class
  subdirectories (and no .txt file at the top), each subdirectory's name is its files' label."""
  entries = sorted(os.listdir(path))
  top = [e for e in entries if e.endswith(".txt") and os.path.isfile(os.path.join(path, e))]
  classes = [e for e in entries if os.path.isdir(os.path.join(path, e)) and not e.startswith(".")]
  if top:
    files, labels = [os.path.join(path, e) for e in top], None
  elif classes:
    files, labels = [], []
    for c in classes:
      names = sorted(e for e in os.listdir(os.path.join(path, c)) if e.endswith(".txt"))
      if not names:
        raise UsageError(f"{what}: the class directory {os.path.join(path, c)} holds no .txt file")
      files += [os.path.join(path, c, e) for e in names]
      labels += [c] * len(names)
  else:
    raise UsageError(
      f"{what}: {path} holds no .txt file and no class subdirectory; expected one document a "
      ".txt file"
    )
  docs = []
  for name in files:
    doc = _decode(_read_bytes(name, what), name, what).strip()
    if not doc:
      raise UsageError(f"{what}: {name} line 1 is an empty document; expected some text")
    docs.append(doc)
  return RawText(docs, None if labels is None else np.asarray(labels, dtype=object), path)


def read_table(
  path: str, what: str, text_column: str | None, label_column: str | None = None
) -> RawText:
  """A CSV or Parquet table's `text_column` (every cell a non-empty document) and, when
  named, its `label_column`."""
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.csv as pcsv  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415

  csv = path.endswith(".csv")
  if not text_column:
    raise UsageError(f"{what}: a table needs --text_column, the column holding the documents")
  try:
    if csv:
      data = _read_bytes(path, what)
      _decode(data, path, what)  # a bad byte named by its line
      opts = pcsv.ConvertOptions(
        column_types={
          text_column: pa.string(),
          **({label_column: pa.string()} if label_column else {}),
        },
        strings_can_be_null=False,
      )
      table = pcsv.read_csv(pa.BufferReader(data), convert_options=opts)
    else:
      table = pq.read_table(path)
  except pa.ArrowException as e:
    names = _header(path) if csv else None
    for flag, name in (("text_column", text_column), ("label_column", label_column)):
      if names is not None and name and name not in names:
        raise UsageError(_no_column(what, path, flag, name, names)) from None
    raise UsageError(f"{what}: cannot read {path} ({str(e).splitlines()[0]})") from None
  for flag, name in (("text_column", text_column), ("label_column", label_column)):
    if name and name not in table.column_names:
      raise UsageError(_no_column(what, path, flag, name, table.column_names))
  first = 2 if csv else 1  # a CSV's header is line 1
  where = "line" if csv else "row"
  docs = table.column(text_column).to_pylist()
  for i, doc in enumerate(docs):
    if not isinstance(doc, str):
      raise UsageError(
        f"{what}: {path} {where} {i + first}: column {text_column!r} holds "
        f"{'nothing' if doc is None else type(doc).__name__}; expected text"
      )
    if not doc.strip():
      raise UsageError(
        f"{what}: {path} {where} {i + first}: column {text_column!r} is an empty document"
      )
  labels = None
  if label_column:
    labels = table.column(label_column).to_pylist()
    for i, v in enumerate(labels):
      if v is None or (isinstance(v, str) and not v.strip()):
        raise UsageError(f"{what}: {path} {where} {i + first}: no label in {label_column!r}")
    labels = np.asarray([str(v) for v in labels], dtype=object)
  if not docs:
    raise UsageError(f"{what}: {path} holds no document")
  return RawText(docs, labels, path)


def _header(path: str) -> list[str] | None:
  try:
    with open(path, encoding="utf-8-sig") as f:
      import csv as csv_module  # noqa: PLC0415

      return next(csv_module.reader(f), None)
  except (OSError, UnicodeDecodeError):
    return None


def _no_column(what: str, path: str, flag: str, name: str, names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in list(names)[:10]) + (", ..." if len(names) > 10 else "")
  return f"--{flag}={name}: {path} has no such column; it has {shown}"


def read_source(
  path: str, what: str, *, text_column: str | None = None, label_column: str | None = None
) -> RawText:
  """A `.txt` file, a directory of them, or a CSV/Parquet table (by its suffix)."""
  if os.path.isdir(path):
    raw = read_directory(path, what)
  elif not os.path.isfile(path):
    raise UsageError(
      f"{what}: {path} does not exist; expected a .txt file, a directory of .txt files, or a "
      ".csv/.parquet table"
    )
  elif path.endswith(TABLE_SUFFIXES):
    return read_table(path, what, text_column, label_column)
  else:
    raw = read_lines(path, what)
  for flag, value in (("text_column", text_column), ("label_column", label_column)):
    if value:
      raise UsageError(
        f"--{flag}={value} names a column of a table; --dataset=text:{path} is not a "
        ".csv/.parquet table"
      )
  return raw


# --- Tokenisation.


@functools.lru_cache(maxsize=8)
def _processor(proto: bytes):
  import sentencepiece as spm  # noqa: PLC0415

  return spm.SentencePieceProcessor(model_proto=proto)


def train_sentencepiece(docs: Sequence[str], vocab_size: int, what: str) -> bytes:
  """A unigram SentencePiece model of `docs` (the training split): its serialised proto. At
  most `vocab_size` pieces (fewer when the split is too small for them); characters it never
  saw become the unknown token."""
  try:
    import sentencepiece as spm  # noqa: PLC0415
  except ImportError:
    raise UsageError(
      "--tokenizer=sentencepiece needs the sentencepiece package: pip install 'dlu[text]'"
    ) from None
  import io  # noqa: PLC0415

  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(docs),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="unigram",
      pad_id=PAD,
      bos_id=BOS,
      eos_id=EOS,
      unk_id=UNK,
      character_coverage=1.0,
      hard_vocab_limit=False,  # a small training split gets fewer pieces, not an error
      max_sentence_length=1 << 20,
      num_threads=1,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise UsageError(
      f"--vocab_size={vocab_size}: SentencePiece cannot train on the training split of {what} "
      f"({str(e).strip().splitlines()[-1]})"
    ) from None
  return model.getvalue()


@dataclasses.dataclass(frozen=True)
class TextPreprocessing:
  """How documents become token ids [N, length] int32 (0-padded; the mask is ids != 0): each
  document's tokens then EOS, truncated to `length`. `model` is the SentencePiece proto
  (base64) under --tokenizer=sentencepiece."""

  tokenizer: str
  vocab_size: int
  length: int
  model: str | None = None
  FILE_NAME = FILE_NAME

  def _proto(self) -> bytes:
    return base64.b64decode(self.model)

  def tokenize(self, doc: str) -> list[int]:
    if self.tokenizer == "bytes":
      return [b + NUM_SPECIAL for b in doc.encode("utf-8")]
    return _processor(self._proto()).encode(doc)

  def transform(self, docs: Sequence[str], what: str = "documents") -> np.ndarray:
    out = np.zeros((len(docs), self.length), np.int32)
    for i, doc in enumerate(docs):
      if not isinstance(doc, str):
        raise UsageError(f"{what}: document {i + 1} is a {type(doc).__name__}; expected text")
      if not doc.strip():
        raise UsageError(f"{what}: document {i + 1} is empty; expected some text")
      ids = (self.tokenize(doc) + [EOS])[: self.length]
      out[i, : len(ids)] = ids
    return out

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Token ids [N, L] back to text, each up to its first end (or padding) token."""
    out = []
    for row in np.asarray(tokens):
      ids = [int(t) for t in row]
      for stop in (EOS, PAD):
        ids = ids[: ids.index(stop)] if stop in ids else ids
      if self.tokenizer == "bytes":
        out.append(
          bytes(t - NUM_SPECIAL for t in ids if t >= NUM_SPECIAL).decode("utf-8", "replace")
        )
      else:
        out.append(_processor(self._proto()).decode([t for t in ids if t >= NUM_SPECIAL]))
    return out

  def describe(self) -> str:
    how = "UTF-8 bytes" if self.tokenizer == "bytes" else "SentencePiece pieces"
    return f"documents as {how} (vocabulary {self.vocab_size}), at most {self.length} tokens"

  def save(self, path: str) -> None:
    from dlu.files import atomic_write, write_json  # noqa: PLC0415

    write_json(path, {k: v for k, v in dataclasses.asdict(self).items()})
    if self.model is not None:
      with atomic_write(os.path.join(os.path.dirname(path), SPM_FILE), "wb") as f:
        f.write(self._proto())

  @classmethod
  def load(cls, path: str) -> TextPreprocessing:
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
      return cls(
        tokenizer=str(d["tokenizer"]),
        vocab_size=int(d["vocab_size"]),
        length=int(d["length"]),
        model=d.get("model"),
      )
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UsageError(
        f"{path} is unreadable ({type(e).__name__}: {e}); expected text.json"
      ) from None


def fit_preprocessing(
  docs: Sequence[str],
  *,
  tokenizer: str = "bytes",
  vocab_size: int = 0,
  max_length: int = 256,
  what: str = "text",
) -> TextPreprocessing:
  """The preprocessing of a training split: its tokeniser (SentencePiece trained on `docs`),
  and its length (`max_length`, or 0: the longest document's tokens and EOS)."""
  if tokenizer not in TOKENIZERS:
    raise UsageError(f"--tokenizer={tokenizer!r}; expected one of {', '.join(TOKENIZERS)}")
  if max_length < 0 or max_length == 1:
    raise UsageError(f"--max_length={max_length}; expected 0 (the longest document) or >= 2")
  if tokenizer == "sentencepiece":
    if vocab_size <= NUM_SPECIAL:
      raise UsageError(
        f"--tokenizer=sentencepiece needs --vocab_size > {NUM_SPECIAL}, got {vocab_size}"
      )
    proto = train_sentencepiece(docs, vocab_size, what)
    pre = TextPreprocessing(
      "sentencepiece",
      _processor(proto).get_piece_size(),
      max(max_length, 2),
      base64.b64encode(proto).decode("ascii"),
    )
  else:
    if vocab_size:
      raise UsageError(
        f"--vocab_size={vocab_size} sizes a SentencePiece vocabulary; --tokenizer=bytes has "
        f"{BYTE_VOCAB} ids (set --tokenizer=sentencepiece, or leave --vocab_size at 0)"
      )
    pre = TextPreprocessing("bytes", BYTE_VOCAB, max(max_length, 2))
  if not max_length:
    pre = dataclasses.replace(pre, length=max(len(pre.tokenize(d)) + 1 for d in docs))
  return pre


def truncated(tokens: np.ndarray) -> int:
  """Documents of `tokens` [N, L] cut short: those whose last position holds neither padding
  nor the end token."""
  last = np.asarray(tokens)[:, -1]
  return int(np.sum((last != PAD) & (last != EOS)))


def bag_of_tokens(x_train: np.ndarray, x_test: np.ndarray, vocab_size: int):
  """TF-IDF vectors of token counts (fitted on `x_train`), L2-normalised, dense float32: a
  bag-of-words baseline for codes of the same documents. ([N, V], [M, V])"""
  from sklearn.feature_extraction.text import TfidfTransformer  # noqa: PLC0415

  def counts(x):
    x = np.asarray(x)
    out = np.zeros((len(x), vocab_size), np.float32)
    rows = np.repeat(np.arange(len(x)), x.shape[1])
    np.add.at(out, (rows, x.reshape(-1)), 1.0)
    out[:, :NUM_SPECIAL] = 0
    return out

  tfidf = TfidfTransformer().fit(counts(x_train))
  return (
    tfidf.transform(counts(x_train)).toarray().astype(np.float32),
    tfidf.transform(counts(x_test)).toarray().astype(np.float32),
  )
