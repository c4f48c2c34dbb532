"""The `runs` fixture: training subprocesses that are always killed at the end of a test."""
import pytest

from tests.multihost import helpers


@pytest.fixture
def runs(tmp_path):
  runs = helpers.Runs(tmp_path)
  yield runs
  runs.close()
