"""2 processes x 4 devices train exactly like 1 process x 8 devices: same losses, parameters and
updates, each process reading only its own rows of every batch (the example-index audit)."""
import numpy as np
import pytest

from tests.multihost import helpers

STEPS = 3
# (mesh flags, whether the two processes hold different batch rows)
MESHES = {
    "data8": (helpers.mesh_flags(data=8), True),
    "fsdp8": (helpers.mesh_flags(fsdp=8), True),
    "data2_fsdp2_tensor2": (helpers.mesh_flags(data=2, fsdp=2, tensor=2), True),
    # Tokens split over "data", whose two halves are the two processes: both hold every batch row
    # (over fsdp) and so read the same samples; the halo exchange crosses the process boundary.
    "seq_over_processes": (helpers.mesh_flags(data=2, fsdp=4, seq_axis="data", seq_batch_axis="fsdp"), False),
}
# Measured (norm of the difference / norm of each array, worst array): losses 0 to 1.4e-7,
# parameters 4e-7 to 2.8e-5 (arrays that start at zero are all update), updates (step 1 -> 3)
# 1.1e-5 to 1.2e-5: a gloo all-reduce sums in another order than the in-process one, and Adam's
# first steps (~ sign(g)) enlarge that in near-zero gradients.
LOSS_RTOL, PARAM_RTOL, UPDATE_RTOL = 1e-5, 1e-4, 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_two_processes_match_one(runs, tmp_path, mesh):
  flags, split_rows = MESHES[mesh]
  flags = helpers.TINY + flags + [f"--config.train.num_steps={STEPS}"]
  one, two = tmp_path / "one", tmp_path / "two"
  runs.finish(runs.single(one, flags))
  output = runs.finish(runs.launch(two, flags))
  assert "every process finished" in output

  reference, losses = helpers.losses(one), helpers.losses(two)
  assert sorted(losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)],
                             rtol=LOSS_RTOL)

  # Every process wrote its own shards of the state.
  state_dir = two / "checkpoints" / str(STEPS) / "state"
  assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()
  first, last = helpers.read_state(two, 1), helpers.read_state(two, STEPS)
  first_ref, last_ref = helpers.read_state(one, 1), helpers.read_state(one, STEPS)
  params = [k for k in last_ref if k.startswith("['params']")]
  assert params
  update = {k: last[k] - first[k] for k in params}
  update_ref = {k: last_ref[k] - first_ref[k] for k in params}
  assert min(np.linalg.norm(v) for v in update_ref.values()) > 0
  loss_error = max(abs(losses[s] / reference[s] - 1) for s in losses)
  param_error = helpers.relative_error({k: last[k] for k in params}, {k: last_ref[k] for k in params})
  update_error = helpers.relative_error(update, update_ref)
  print(f"{mesh}: relative error of losses {loss_error:.1e}, params {param_error:.1e}, "
        f"updates {update_error:.1e}")
  assert param_error < PARAM_RTOL and update_error < UPDATE_RTOL

  # Example-index audit: process p read its part of each global batch, and only that.
  seen = helpers.example_indices(two)
  single = helpers.example_indices(one)[0]
  assert sorted(seen) == [0, 1]
  for step in range(STEPS):
    if split_rows:
      assert seen[0][step] + seen[1][step] == single[step]
      assert not set(seen[0][step]) & set(seen[1][step])
    else:
      assert seen[0][step] == seen[1][step] == single[step]
