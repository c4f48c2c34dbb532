"""Flow-Euler and Flow-DPM-Solver++ schedules and steps equal diffusers' schedulers."""
import json

import diffusers
import numpy as np
import pytest
import torch

from sana_jax.sampling.schedulers import FlowDPMSolverScheduler, FlowEulerScheduler, scheduler_from_config

SANA_DPM = dict(use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
                solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")


def diffusers_dpm(steps, flow_shift=3.0, **overrides):
  scheduler = diffusers.DPMSolverMultistepScheduler(**{**SANA_DPM, "flow_shift": flow_shift, **overrides})
  scheduler.set_timesteps(steps)
  return scheduler


def diffusers_euler(steps, shift=3.0):
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(steps)
  return scheduler


def config_dict(scheduler):
  """What a pipeline folder's scheduler/scheduler_config.json holds (with `_class_name`)."""
  return json.loads(scheduler.to_json_string())


STEPS = (1, 2, 7, 14, 20, 50)
SHIFTS = (1.0, 2.7, 3.0, 6.0)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_dpm_solver_sigmas_and_timesteps_equal_diffusers(steps, shift):
  ours, ref = FlowDPMSolverScheduler(steps, flow_shift=shift), diffusers_dpm(steps, shift)
  np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_flow_euler_sigmas_and_timesteps_equal_diffusers(steps, shift):
  ours, ref = FlowEulerScheduler(steps, flow_shift=shift), diffusers_euler(steps, shift)
  np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def assert_every_step_equal(ours, ref, seed=0):
  """Feeds the same sample and random velocity to both schedulers at every step of a whole run."""
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
  state = ours.init_state(sample)
  for i, t in enumerate(ref.timesteps):
    velocity = rng.standard_normal(sample.shape).astype(np.float32)
    expected = ref.step(torch.from_numpy(velocity), t, torch.from_numpy(sample)).prev_sample.numpy()
    got, state = ours.step(state, velocity, i, sample)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6, err_msg=f"step {i}")
    sample = expected


@pytest.mark.parametrize("steps,solver_order,solver_type", [
    (20, 2, "midpoint"), (10, 2, "midpoint"), (20, 2, "heun"), (20, 1, "midpoint")])
def test_dpm_solver_every_step_equals_diffusers(steps, solver_order, solver_type):
  ours = FlowDPMSolverScheduler(steps, flow_shift=3.0, solver_order=solver_order, solver_type=solver_type)
  ref = diffusers_dpm(steps, 3.0, solver_order=solver_order, solver_type=solver_type)
  assert_every_step_equal(ours, ref)


def test_flow_euler_every_step_equals_diffusers():
  assert_every_step_equal(FlowEulerScheduler(20, flow_shift=3.0), diffusers_euler(20, 3.0))


def test_dpm_solver_last_step_lands_on_the_x0_prediction():
  """sigma = 0 at the end: lambda is infinite there, the step must still be finite and exact."""
  scheduler = FlowDPMSolverScheduler(4, flow_shift=3.0)
  rng = np.random.default_rng(1)
  sample, velocity = rng.standard_normal((2, 1, 3, 4, 4)).astype(np.float32)
  state = rng.standard_normal(sample.shape).astype(np.float32)
  last = scheduler.num_inference_steps - 1
  got, x0 = scheduler.step(state, velocity, last, sample)
  np.testing.assert_allclose(np.asarray(got), sample - scheduler.sigmas[last] * velocity, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(x0))


def test_scheduler_from_config_reads_a_sana_dpm_solver_config():
  ref = diffusers_dpm(20, 3.0)
  ours = scheduler_from_config(config_dict(ref), 20)
  assert isinstance(ours, FlowDPMSolverScheduler)
  assert (ours.flow_shift, ours.solver_order, ours.solver_type) == (3.0, 2, "midpoint")
  np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_scheduler_from_config_reads_a_flow_euler_config():
  ref = diffusers_euler(20, 6.0)
  ours = scheduler_from_config(config_dict(ref), 20)
  assert isinstance(ours, FlowEulerScheduler)
  np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_sampler_override_carries_the_flow_shift_across_schedulers():
  euler = scheduler_from_config(config_dict(diffusers_dpm(20, 3.0)), 20, sampler="flow_euler")
  np.testing.assert_array_equal(euler.sigmas, diffusers_euler(20, 3.0).sigmas.numpy())
  dpm = scheduler_from_config(config_dict(diffusers_euler(20, 3.0)), 20, sampler="flow_dpm_solver")
  np.testing.assert_array_equal(dpm.sigmas, diffusers_dpm(20, 3.0).sigmas.numpy())
  np.testing.assert_array_equal(dpm.coefs, FlowDPMSolverScheduler(20, flow_shift=3.0).coefs)


@pytest.mark.parametrize("config,match", [
    ({"_class_name": "DDIMScheduler"}, "unsupported scheduler class"),
    ({"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 3.0}, "use_flow_sigmas"),
    ({**SANA_DPM, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({**SANA_DPM, "_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, "solver_order"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"shift": 3.0}, "_class_name"),
])
def test_unsupported_scheduler_configs_raise_a_clear_error(config, match):
  with pytest.raises(ValueError, match=match):
    scheduler_from_config(config, 20)


@pytest.mark.parametrize("make", [FlowEulerScheduler, FlowDPMSolverScheduler])
@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_step_counts_raise(make, steps):
  with pytest.raises(ValueError, match="num_inference_steps"):
    make(steps)
