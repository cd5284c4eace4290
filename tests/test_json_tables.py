"""json:PATH tables: an array of objects or JSON lines read as a table (keys are columns, null or a
missing key a missing cell), with one-line errors naming the record or line; trained on and
applied to like a CSV."""

import json

import numpy as np
import pytest

from dlu import config
from dlu.data import tables
from dlu.errors import UsageError


def _read(path, label_column=None):
  return tables.read_table(str(path), fmt="json", label_column=label_column, what=f"json:{path}")


def test_an_array_of_objects_and_json_lines_read_the_same(tmp_path):
  records = [{"a": 1.5, "b": 2, "y": "p"}, {"b": None, "a": 3, "y": "q"}, {"a": 4, "y": "p"}]
  (tmp_path / "t.json").write_text(json.dumps(records, indent=1))
  lines = "\ufeff" + "\n".join(json.dumps(r) for r in records) + "\n\n"  # a BOM, a blank line
  (tmp_path / "t.jsonl").write_text(lines, encoding="utf-8")
  for name in ("t.json", "t.jsonl"):
    names, x, y = _read(tmp_path / name, "y")
    assert names == ["a", "b"]
    np.testing.assert_array_equal(x, [[1.5, 2.0], [3.0, np.nan], [4.0, np.nan]])
    assert list(y) == ["p", "q", "p"]


@pytest.mark.parametrize(
  "text, message",
  [
    ('[{"a": 1}, {"a": "x"}]', r"column 'a' holds a number in record 1 and a text in record 2"),
    ('{"a": 1}\n\n{"a": \n', r"line 3 is not valid JSON"),
    ('[{"a": 1},\n {"a": }]', r"line 2 is not valid JSON"),
    ("[1, 2]", r"record 1 is a int, not an object"),
    ('[{"a": [1, 2]}]', r"record 1 holds a nested list in 'a'"),
    ("[]", r"holds no columns"),
    ('[{"a": 1}, {"a": "n/a"}, {"a": 2}]', r"column 'a' holds a number in record 1 and a text"),
    ('[{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]', r"column 'b' row 1 holds 'x', not a number"),
  ],
)
def test_bad_json_is_one_line_naming_the_record_or_line(tmp_path, text, message):
  path = tmp_path / "bad.json"
  path.write_text(text)
  with pytest.raises(UsageError, match=message) as e:
    _read(path)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_json_that_is_not_utf8_is_refused(tmp_path):
  path = tmp_path / "latin1.json"
  path.write_bytes('[{"caf\xe9": 1}]'.encode("latin-1"))
  with pytest.raises(UsageError, match="is not UTF-8"):
    _read(path)


@pytest.mark.slow
def test_train_on_json_lines_and_apply_to_an_array_of_objects(tmp_path):
  from dlu.train import apply, loop

  rng = np.random.default_rng(0)
  rows = [
    {"a": float(a), "b": float(b), "y": "pq"[int(a > 0)]} for a, b in rng.normal(size=(48, 2))
  ]
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  cfg = config.make_config(
    model="ae_mlp",
    dataset=f"json:{tmp_path / 'train.jsonl'}",
    label_column="y",
    widths=(8,),
    latent_dim=2,
    batch_size=16,
    num_steps=4,
    eval_every=4,
    checkpoint_every=4,
  )
  loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  new = [{"b": 0.5, "a": -1.0}, {"b": 1.0, "a": 2.0}]  # another key order, no label
  (tmp_path / "new.json").write_text(json.dumps(new))
  run = apply.load_run(str(tmp_path / "run"))
  by_name = run.inputs(f"json:{tmp_path / 'new.json'}")  # matched to the training columns
  np.testing.assert_array_equal(by_name, run.inputs(np.array([[-1.0, 0.5], [2.0, 1.0]])))
  scores = run.score(f"json:{tmp_path / 'new.json'}")
  assert scores.shape == (2,) and np.isfinite(scores).all()
