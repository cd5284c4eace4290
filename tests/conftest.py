"""Test set-up: eight fake CPU devices, so data-parallel code paths run on any machine."""

import os

# Must happen before JAX initialises its backend.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Entry points run as subprocesses keep their compiled programs in the session's own folder.
if "DLU_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402

  os.environ["DLU_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlu_test_cache_")
  atexit.register(shutil.rmtree, os.environ["DLU_CACHE_DIR"], True)

import pytest  # noqa: E402
from absl import flags  # noqa: E402

import dlu.train.evaluate  # noqa: E402,F401  (defines every flag, as the entry points do)
import dlu.train.loop  # noqa: E402,F401

flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def digits_feature_dir(tmp_path_factory):
  """A data dir holding the digits feature network, trained once for the whole session."""
  from dlu import data
  from dlu.metrics import feature_net  # pylint: disable=g-import-not-at-top  # after XLA_FLAGS

  path = str(tmp_path_factory.mktemp("data"))
  feature_net.load_or_train(data.load("digits"), path)
  return path
