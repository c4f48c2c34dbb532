"""Flow-matching samplers of SANA (docs/sampling.md): Flow-Euler and Flow-DPM-Solver++, and the one
sigma shift and scheduler factory of sana_jax.

Both schedulers compute their whole schedule in numpy when built, with the same arithmetic as
diffusers' `FlowMatchEulerDiscreteScheduler` / `DPMSolverMultistepScheduler(use_flow_sigmas=True)`,
so sigmas and timesteps are equal to theirs. Stepping is then a pure function of arrays:

  x_next, state = scheduler.step(state, velocity, i, x)      # i may be a traced loop index

which runs inside `lax.fori_loop`. A scheduler is a pytree (its tables are the leaves), so it can be
passed into a jitted function as an argument, and a new scheduler with the same number of steps
and settings reuses the compiled loop.

Conventions: sigma runs from ~1 (noise) down to 0 (data); x_sigma = (1 - sigma) x0 + sigma noise;
the model predicts the velocity v = noise - x0 and sees timestep sigma * 1000.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("flow_dpm_solver", "flow_euler")


def _check_common(num_inference_steps, flow_shift, num_train_timesteps):
  if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
    raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
  if num_inference_steps < 1:
    raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
  if not flow_shift > 0:
    raise ValueError(f"flow_shift must be > 0, got {flow_shift}")
  if num_train_timesteps < 1:
    raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")


def shift_sigma(sigma, flow_shift):
  """Moves sigma in [0, 1] towards 1 (more noise) for flow_shift > 1; 0 and 1 stay fixed.

  The one shift of training and sampling: numpy or jax arrays, computed in their dtype with a
  Python-float shift (as diffusers' torch code does).
  """
  return flow_shift * sigma / (1.0 + (flow_shift - 1.0) * sigma)


@jax.tree_util.register_pytree_node_class
class FlowEulerScheduler:
  """Euler steps along the velocity: x <- x + (sigma_next - sigma) v.

  Matches `FlowMatchEulerDiscreteScheduler(shift=flow_shift)`, including its quirk that the sigma
  range is taken from the already-shifted training grid and then shifted a second time.
  """

  def __init__(self, num_inference_steps: int, flow_shift: float = 3.0, num_train_timesteps: int = 1000):
    _check_common(num_inference_steps, flow_shift, num_train_timesteps)
    self.flow_shift, self.num_train_timesteps = float(flow_shift), int(num_train_timesteps)
    n_train = np.float32(num_train_timesteps)
    # Ends of the shifted float32 training grid (diffusers' sigma_max, sigma_min), in torch's float32 order.
    ends = np.array([n_train, 1.0], np.float32) / n_train
    ends = shift_sigma(ends, self.flow_shift)
    sigma_max, sigma_min = (float(s) for s in ends)
    sigmas = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps,
                         num_inference_steps) / num_train_timesteps
    sigmas = shift_sigma(sigmas, self.flow_shift).astype(np.float32)
    self.timesteps = sigmas * n_train                            # [N] float32
    self.sigmas = np.append(sigmas, np.float32(0.0))             # [N + 1] float32, ends at 0
    self.dt = self.sigmas[1:] - self.sigmas[:-1]                 # [N] float32, negative

  @property
  def num_inference_steps(self) -> int:
    return self.timesteps.shape[0]

  def init_state(self, sample):
    """Euler keeps no history."""
    return ()

  def step(self, state, model_output, i, sample):
    """One Euler step from sigma_i to sigma_{i+1}; returns (x_next [float32], state)."""
    dt = jnp.asarray(self.dt)[i]
    return sample.astype(jnp.float32) + dt * model_output.astype(jnp.float32), state

  def tree_flatten(self):
    return (self.sigmas, self.timesteps, self.dt), (self.flow_shift, self.num_train_timesteps)

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    obj = object.__new__(cls)
    obj.sigmas, obj.timesteps, obj.dt = leaves
    obj.flow_shift, obj.num_train_timesteps = aux
    return obj

  def __repr__(self):
    return (f"FlowEulerScheduler(num_inference_steps={self.num_inference_steps}, "
            f"flow_shift={self.flow_shift}, num_train_timesteps={self.num_train_timesteps})")


@jax.tree_util.register_pytree_node_class
class FlowDPMSolverScheduler:
  """Multistep DPM-Solver++ on the flow path (alpha = 1 - sigma), data-prediction form.

  Matches `DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift, prediction_type=
  "flow_prediction", algorithm_type="dpmsolver++", final_sigmas_type="zero", ...)`.

  Every update is linear in the current sample, the current x0 prediction and the previous one,
  x_next = a_i x + b_i x0_i + c_i x0_{i-1}, so the coefficients (a, b, c) are precomputed per step
  and the loop carries only the previous x0. The first step has no history and the last step lands
  on sigma = 0, where lambda = log(alpha / sigma) is infinite: both are first order, and the
  first-order coefficients are written without logarithms so sigma = 0 needs no special case.
  With a zero final sigma diffusers always takes the last step first order, so its
  `lower_order_final` / `euler_at_final` options change nothing at order <= 2 and are not needed.
  """

  def __init__(self, num_inference_steps: int, flow_shift: float = 3.0, num_train_timesteps: int = 1000,
               solver_order: int = 2, solver_type: str = "midpoint"):
    _check_common(num_inference_steps, flow_shift, num_train_timesteps)
    if solver_order not in (1, 2):
      raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
    if solver_type not in ("midpoint", "heun"):
      raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    self.flow_shift, self.num_train_timesteps = float(flow_shift), int(num_train_timesteps)
    self.solver_order, self.solver_type = int(solver_order), solver_type

    alphas = np.linspace(1.0, 1.0 / num_train_timesteps, num_inference_steps + 1)
    sigmas = shift_sigma(1.0 - alphas, self.flow_shift)[::-1][:-1]   # [N] float64, from ~1 down
    self.timesteps = (sigmas * num_train_timesteps).astype(np.int64).astype(np.float32)  # truncated, [N]
    self.sigmas = np.append(sigmas, 0.0).astype(np.float32)     # [N + 1], ends at 0
    self.coefs = self._coefficients()                           # [N, 3] float32

  def _is_first_order(self, i: int) -> bool:
    return self.solver_order == 1 or i == 0 or i == self.num_inference_steps - 1

  def _coefficients(self) -> np.ndarray:
    """(a, b, c) of x_next = a x + b x0 + c x0_prev for every step, in float64, stored float32."""
    s = self.sigmas.astype(np.float64)
    alpha = 1.0 - s
    with np.errstate(divide="ignore"):
      lam = np.log(alpha) - np.log(s)                           # +inf at sigma = 0
    coefs = np.zeros((self.num_inference_steps, 3))
    for i in range(self.num_inference_steps):
      s0, s1 = s[i], s[i + 1]
      # alpha_t (exp(-h) - 1) with exp(-h) = (sigma_t / alpha_t) (alpha_s / sigma_s): finite at sigma_t = 0.
      k = s1 * alpha[i] / s0 - alpha[i + 1]
      a = s1 / s0
      if self._is_first_order(i):
        coefs[i] = (a, -k, 0.0)
        continue
      h, h_prev = lam[i + 1] - lam[i], lam[i] - lam[i - 1]     # both finite: sigma_{i+1} > 0 here
      r = h_prev / h
      if self.solver_type == "midpoint":
        coefs[i] = (a, -k * (1.0 + 0.5 / r), 0.5 * k / r)
      else:
        q = (k / h + alpha[i + 1]) / r
        coefs[i] = (a, q - k, -q)
    return coefs.astype(np.float32)

  @property
  def num_inference_steps(self) -> int:
    return self.timesteps.shape[0]

  def init_state(self, sample):
    """The previous x0 prediction; its coefficient is 0 on the first step."""
    return jnp.zeros(sample.shape, jnp.float32)

  def step(self, state, model_output, i, sample):
    """One step from sigma_i to sigma_{i+1}; returns (x_next [float32], x0 prediction as new state)."""
    sample = sample.astype(jnp.float32)
    x0 = sample - jnp.asarray(self.sigmas)[i] * model_output.astype(jnp.float32)
    a, b, c = jnp.asarray(self.coefs)[i]
    return a * sample + b * x0 + c * state, x0

  def tree_flatten(self):
    aux = (self.flow_shift, self.num_train_timesteps, self.solver_order, self.solver_type)
    return (self.sigmas, self.timesteps, self.coefs), aux

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    obj = object.__new__(cls)
    obj.sigmas, obj.timesteps, obj.coefs = leaves
    obj.flow_shift, obj.num_train_timesteps, obj.solver_order, obj.solver_type = aux
    return obj

  def __repr__(self):
    return (f"FlowDPMSolverScheduler(num_inference_steps={self.num_inference_steps}, "
            f"flow_shift={self.flow_shift}, solver_order={self.solver_order}, "
            f"solver_type={self.solver_type!r})")


_CLASS_TO_SAMPLER = {"DPMSolverMultistepScheduler": "flow_dpm_solver",
                     "FlowMatchEulerDiscreteScheduler": "flow_euler"}

# diffusers options we do not implement, with the value that means "off" (diffusers' default).
_DPM_REQUIRED = dict(use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
                     final_sigmas_type="zero", thresholding=False, use_karras_sigmas=False,
                     use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
                     use_dynamic_shifting=False)
_EULER_REQUIRED = dict(use_dynamic_shifting=False, invert_sigmas=False, shift_terminal=None,
                       use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                       stochastic_sampling=False)
# diffusers' defaults for the required keys where they differ from the supported value.
_DPM_DEFAULTS = dict(use_flow_sigmas=False, prediction_type="epsilon")


def scheduler_config(sampler: str, flow_shift: float) -> dict:
  """The diffusers scheduler_config.json dict of SANA's sampler `sampler` with this flow shift."""
  if sampler == "flow_euler":
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": float(flow_shift)}
  if sampler == "flow_dpm_solver":
    return {"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True, "flow_shift": float(flow_shift),
            "prediction_type": "flow_prediction", "algorithm_type": "dpmsolver++", "solver_order": 2,
            "solver_type": "midpoint", "lower_order_final": True, "final_sigmas_type": "zero"}
  raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")


def scheduler_from_config(config: Mapping[str, Any], num_inference_steps: int, sampler: str | None = None):
  """Our scheduler for a diffusers `scheduler_config.json` dict.

  `sampler` ("flow_dpm_solver" | "flow_euler") overrides the class named in the config; the flow
  shift carries over (`flow_shift` of the DPM config is the Euler `shift` and back), and a DPM
  solver made from an Euler config gets SANA's settings (order 2, midpoint, lower-order final).
  """
  class_name = config.get("_class_name")
  config_sampler = _CLASS_TO_SAMPLER.get(class_name)
  if class_name is not None and config_sampler is None:
    raise ValueError(f"unsupported scheduler class {class_name!r}; expected one of {sorted(_CLASS_TO_SAMPLER)}")
  sampler = sampler or config_sampler
  if sampler is None:
    raise ValueError("scheduler config has no '_class_name'; pass sampler='flow_dpm_solver' or 'flow_euler'")
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

  if (config_sampler or sampler) == "flow_dpm_solver":
    _check_supported(config, _DPM_REQUIRED, _DPM_DEFAULTS, "DPMSolverMultistepScheduler")
    flow_shift = config.get("flow_shift", 1.0)
  else:
    _check_supported(config, _EULER_REQUIRED, {}, "FlowMatchEulerDiscreteScheduler")
    flow_shift = config.get("shift", 1.0)
  num_train_timesteps = config.get("num_train_timesteps", 1000)

  if sampler == "flow_euler":
    return FlowEulerScheduler(num_inference_steps, flow_shift=flow_shift, num_train_timesteps=num_train_timesteps)
  solver = {}
  if config_sampler == "flow_dpm_solver":
    solver = dict(solver_order=config.get("solver_order", 2), solver_type=config.get("solver_type", "midpoint"))
  return FlowDPMSolverScheduler(num_inference_steps, flow_shift=flow_shift,
                                num_train_timesteps=num_train_timesteps, **solver)


def _check_supported(config, required, defaults, class_name):
  for key, wanted in required.items():
    value = config.get(key, defaults.get(key, wanted))
    if value != wanted:
      raise ValueError(f"{class_name} config has {key}={value!r}; sana_jax supports only {key}={wanted!r}")
