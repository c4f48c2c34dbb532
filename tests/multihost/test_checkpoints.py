"""Checkpoints across hosts: a checkpoint written by 2 processes resumes in 1 and one written by 1
resumes in 2, continuing the uninterrupted run's losses and examples; every host's data-iterator
state is in the checkpoint."""
import numpy as np
import pytest

from tests.multihost import helpers

FLAGS = helpers.TINY + helpers.mesh_flags(data=8)
# The 1- and 2-process numerics differ by float rounding only (test_equality measures ~1e-7).
LOSS_RTOL = 1e-5


def _steps(n):
  return FLAGS + [f"--config.train.num_steps={n}"]


@pytest.mark.slow
@pytest.mark.parametrize("first,then", [("two", "one"), ("one", "two")])
def test_a_checkpoint_resumes_in_another_process_count(runs, tmp_path, first, then):
  reference = tmp_path / "reference"
  runs.finish(runs.single(reference, _steps(4)))

  def run(kind, workdir, steps):
    proc = runs.launch(workdir, _steps(steps)) if kind == "two" else runs.single(workdir, _steps(steps))
    return runs.finish(proc)

  workdir = tmp_path / "mixed"
  run(first, workdir, 2)
  hosts = helpers.read_data_state(workdir, 2)["hosts"]
  assert len(hosts) == (2 if first == "two" else 1)
  saved = helpers.read_state(workdir, 2)
  expected = helpers.read_state(reference, 2)
  assert helpers.relative_error(saved, expected) < 1e-5
  output = run(then, workdir, 4)
  assert "resumed from" in output

  losses, reference_losses = helpers.losses(workdir), helpers.losses(reference)
  np.testing.assert_allclose([losses[s] for s in (1, 2, 3, 4)], [reference_losses[s] for s in (1, 2, 3, 4)],
                             rtol=LOSS_RTOL)
  # The resumed run reads the global batches that followed step 2, split over its own processes.
  seen, single = helpers.example_indices(workdir), helpers.example_indices(reference)[0]
  for step in (2, 3):
    rows = seen[0][step] + (seen[1][step] if 1 in seen and step in seen[1] else [])
    assert rows == single[step]
  # The resumed run's state at step 4 is the uninterrupted run's.
  assert helpers.relative_error(helpers.read_state(workdir, 4), helpers.read_state(reference, 4)) < 1e-4
