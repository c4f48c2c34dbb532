"""The compiled denoising loop equals diffusers.SanaPipeline's loop, driven by the same toy velocity model."""
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.configuration_utils import register_to_config

from sana_jax.sampling.denoise import sample_loop
from sana_jax.sampling.schedulers import FlowDPMSolverScheduler, FlowEulerScheduler

B, H, W, C, L, D = 2, 4, 4, 4, 5, 8


class ToyTransformer(diffusers.ModelMixin, diffusers.ConfigMixin):
  """Stands in for SanaTransformer2DModel: v = W x + (t / 1000) u + P (masked mean of the text), NCHW."""

  @register_to_config
  def __init__(self, in_channels=C, out_channels=C, caption_channels=D, sample_size=8, timestep_scale=1.0):
    super().__init__()
    g = torch.Generator().manual_seed(0)
    self.mix = torch.nn.Parameter(0.3 * torch.randn(C, C, generator=g))
    self.time = torch.nn.Parameter(torch.randn(C, generator=g))
    self.text_proj = torch.nn.Parameter(torch.randn(D, C, generator=g))

  def forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, return_dict=True,
              attention_kwargs=None):
    mask = encoder_attention_mask.float()[..., None]
    pooled = (encoder_hidden_states * mask).sum(1) / mask.sum(1)                     # [b, D]
    v = (torch.einsum("bchw,dc->bdhw", hidden_states, self.mix)
         + (timestep.float() / 1000)[:, None, None, None] * self.time[None, :, None, None]
         + (pooled @ self.text_proj)[:, :, None, None])
    return (v,)


def jax_velocity_fn(toy):
  """The same toy model in JAX, NHWC, following the SanaTransformer call contract."""
  mix, time, proj = (jnp.asarray(p.detach().numpy()) for p in (toy.mix, toy.time, toy.text_proj))

  def velocity(latents, timesteps, text, text_mask):
    mask = text_mask.astype(jnp.float32)[..., None]
    pooled = (text * mask).sum(1) / mask.sum(1)                                      # [b, D]
    return (jnp.einsum("bhwc,dc->bhwd", latents, mix) + (timesteps / 1000)[:, None, None, None] * time
            + (pooled @ proj)[:, None, None, :])
  return velocity


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((B, H, W, C)).astype(np.float32)                     # NHWC
  text, negative = rng.standard_normal((2, B, L, D)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64)
  negative_mask = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], np.int64)
  return latents, text, mask, negative, negative_mask


def diffusers_latents(scheduler, inputs, steps, guidance_scale, timestep_scale):
  latents, text, mask, negative, negative_mask = (torch.from_numpy(a) for a in inputs)
  pipe = diffusers.SanaPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                                transformer=ToyTransformer(timestep_scale=timestep_scale))
  pipe.set_progress_bar_config(disable=True)
  out = pipe(negative_prompt=None, prompt_embeds=text, prompt_attention_mask=mask,
             negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask,
             latents=latents.permute(0, 3, 1, 2), height=H * 32, width=W * 32, use_resolution_binning=False,
             num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent")
  return out.images.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("sampler,guidance_scale,timestep_scale", [
    ("flow_dpm_solver", 4.5, 1.0), ("flow_dpm_solver", 1.0, 1.0), ("flow_euler", 4.5, 1.0),
    ("flow_euler", 1.0, 2.0)])
def test_whole_loop_equals_diffusers_sana_pipeline(inputs, sampler, guidance_scale, timestep_scale):
  steps = 20
  if sampler == "flow_dpm_solver":
    ours = FlowDPMSolverScheduler(steps, flow_shift=3.0)
    ref = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
  else:
    ours, ref = FlowEulerScheduler(steps, flow_shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
  expected = diffusers_latents(ref, inputs, steps, guidance_scale, timestep_scale)
  velocity = jax_velocity_fn(ToyTransformer())
  run = jax.jit(lambda scheduler, *arrays: sample_loop(velocity, arrays[0], scheduler, guidance_scale, *arrays[1:],
                                                       timestep_scale=timestep_scale))
  got = run(ours, *inputs)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


class CallLog:
  """A velocity function that records the batch size of every Python-level call."""

  def __init__(self, velocity):
    self.velocity, self.batches = velocity, []

  def __call__(self, latents, timesteps, text, text_mask):
    self.batches.append(latents.shape[0])
    return self.velocity(latents, timesteps, text, text_mask)


def test_velocity_fn_is_traced_once_for_the_whole_loop_with_cond_and_uncond_batched(inputs):
  log = CallLog(jax_velocity_fn(ToyTransformer()))
  run = jax.jit(lambda *arrays: sample_loop(log, arrays[0], FlowDPMSolverScheduler(20), 4.5, *arrays[1:]))
  jax.block_until_ready(run(*inputs))
  assert log.batches == [2 * B]


def test_guidance_scale_at_most_one_skips_the_unconditional_branch(inputs):
  latents, text, mask, _, _ = inputs
  log = CallLog(jax_velocity_fn(ToyTransformer()))
  scheduler = FlowEulerScheduler(3)
  got = sample_loop(log, latents, scheduler, 1.0, text, mask)
  assert log.batches == [B]
  x = jnp.asarray(latents)
  for i in range(scheduler.num_inference_steps):
    t = jnp.full((B,), scheduler.timesteps[i])
    x, _ = scheduler.step((), log.velocity(x, t, text, mask), i, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("interval", [(0.0, 0.5), (0.3, 0.8)])
def test_guidance_interval_guides_only_the_steps_whose_noise_level_lies_inside(inputs, interval):
  """NVlabs Sana's interval_guidance: v_u + g (v_c - v_u) inside [low, high] (t / 1000), v_c outside."""
  latents, text, mask, negative, negative_mask = inputs
  velocity = jax_velocity_fn(ToyTransformer())
  scheduler, g = FlowEulerScheduler(8), 4.5
  got = sample_loop(velocity, latents, scheduler, g, text, mask, negative, negative_mask, guidance_interval=interval)
  x, guided = jnp.asarray(latents), []
  for i in range(scheduler.num_inference_steps):
    t = jnp.full((B,), scheduler.timesteps[i])
    v_c, v_u = velocity(x, t, text, mask), velocity(x, t, negative, negative_mask)
    inside = interval[0] <= scheduler.timesteps[i] / 1000 <= interval[1]
    guided.append(inside)
    x, _ = scheduler.step((), v_u + g * (v_c - v_u) if inside else v_c, i, x)
  assert 0 < sum(guided) < len(guided)  # the interval splits this schedule
  np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=1e-5, atol=1e-5)
  every_step = sample_loop(velocity, latents, scheduler, g, text, mask, negative, negative_mask)
  assert not np.allclose(np.asarray(got), np.asarray(every_step), atol=1e-3)
  np.testing.assert_array_equal(
      np.asarray(sample_loop(velocity, latents, scheduler, g, text, mask, negative, negative_mask,
                             guidance_interval=(0.0, 1.0))), np.asarray(every_step))


def test_guidance_interval_out_of_order_or_range_raises(inputs):
  with pytest.raises(ValueError, match="guidance_interval must be"):
    sample_loop(jax_velocity_fn(ToyTransformer()), inputs[0], FlowEulerScheduler(3), 4.5, *inputs[1:],
                guidance_interval=(0.8, 0.2))


def test_traced_guidance_scale_gives_the_same_latents_as_a_static_one(inputs):
  velocity = jax_velocity_fn(ToyTransformer())
  scheduler = FlowDPMSolverScheduler(5)
  static = sample_loop(velocity, inputs[0], scheduler, 4.5, *inputs[1:])
  traced = jax.jit(lambda g: sample_loop(velocity, inputs[0], scheduler, g, *inputs[1:]))(jnp.float32(4.5))
  np.testing.assert_allclose(np.asarray(traced), np.asarray(static), rtol=1e-5, atol=1e-5)


def test_a_new_scheduler_with_the_same_settings_reuses_the_compiled_loop(inputs):
  log = CallLog(jax_velocity_fn(ToyTransformer()))
  run = jax.jit(lambda scheduler, *arrays: sample_loop(log, arrays[0], scheduler, 4.5, *arrays[1:]))
  first = run(FlowDPMSolverScheduler(6, flow_shift=3.0), *inputs)
  second = run(FlowDPMSolverScheduler(6, flow_shift=3.0), *inputs)
  assert len(log.batches) == 1
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_progress_fn_hears_every_finished_step_in_order(inputs):
  latents, text, mask, _, _ = inputs
  seen = []
  run = jax.jit(lambda x: sample_loop(jax_velocity_fn(ToyTransformer()), x, FlowEulerScheduler(7), 1.0, text,
                                      mask, progress_fn=lambda n: seen.append(int(n))))
  jax.block_until_ready(run(latents))
  jax.effects_barrier()
  assert seen == list(range(1, 8))


def test_guidance_without_a_negative_prompt_raises(inputs):
  latents, text, mask, _, _ = inputs
  with pytest.raises(ValueError, match="negative_text"):
    sample_loop(jax_velocity_fn(ToyTransformer()), latents, FlowEulerScheduler(2), 4.5, text, mask)


def test_negative_prompt_of_another_length_raises(inputs):
  latents, text, mask, negative, negative_mask = inputs
  with pytest.raises(ValueError, match=r"negative_text must have the prompt embedding's \[L, D\]"):
    sample_loop(jax_velocity_fn(ToyTransformer()), latents, FlowEulerScheduler(2), 4.5, text, mask,
                negative[:, :3], negative_mask[:, :3])


def test_velocity_of_the_wrong_shape_raises(inputs):
  latents, text, mask, _, _ = inputs
  double = lambda *args: jnp.concatenate([jax_velocity_fn(ToyTransformer())(*args)] * 2, axis=-1)
  with pytest.raises(ValueError, match="velocity_fn returned shape"):
    sample_loop(double, latents, FlowEulerScheduler(2), 1.0, text, mask)


def test_latents_not_nhwc_raise(inputs):
  latents, text, mask, _, _ = inputs
  with pytest.raises(ValueError, match="NHWC"):
    sample_loop(jax_velocity_fn(ToyTransformer()), latents[0], FlowEulerScheduler(2), 1.0, text, mask)
