"""Text to image with SANA: `SanaPipeline`, diffusers' `SanaPipeline` call on a compiled JAX core.

  pipe = SanaPipeline.from_pretrained(path)       # a diffusers Sana pipeline folder or our export
  images = pipe("a cyberpunk cat", seed=0).images   # list of PIL images (output_type="pil")

The call takes diffusers' names and defaults and gives the same pictures for the same initial
latents. What is compiled, and how often:
  - the text encoder once per (batch, padded length) (`PromptEncoder`); the "" negative prompt is
    encoded once per max_sequence_length and cached;
  - the whole denoising loop once per (latent shape, text length, sampler, number of steps, whether
    guidance runs): transformer parameters, scheduler tables, latents and guidance scale are
    arguments of one jitted `lax.fori_loop`, so nothing is dispatched from Python per step;
  - the VAE decode and the image post-processing once per latent shape.
When the number of images divides over the local devices, latents, text and decode are sharded on
the batch axis over all of them (parameters replicated), so a TPU host uses every chip; after
`enable_sequence_parallel()` a batch that does not (one 4K image) has its tokens split over them.

LoRA, with diffusers' names (docs/lora.md): `pipe.load_lora_weights(path, adapter_name=..., scale=...)`
reads a diffusers / PEFT SANA LoRA file or one we saved, `set_adapters(names, adapter_weights)`,
`fuse_lora()` / `unfuse_lora()`, `delete_adapters(names)`, `unload_lora_weights()`; changing
weights reuses the compiled loop, adding or fusing adapters compiles it once more.

Loading and writing every pipeline format lives in sana_jax/convert/pipeline.py: `convert_pipeline(src,
dst, to="sana_jax")` writes our export (Orbax, loads without PyTorch), `to="diffusers"` a folder that
diffusers' SanaPipeline reads.
"""
import contextlib
import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sana_jax import compilation_cache
from sana_jax.convert.pipeline import convert_pipeline, pipeline_parts
from sana_jax.data.buckets import nearest_bucket, scale_table
from sana_jax.models import lora
from sana_jax.models.transformer import SanaTransformer
from sana_jax.sampling.denoise import sample_loop
from sana_jax.sampling.schedulers import SAMPLERS, scheduler_from_config
from sana_jax.sampling.text_encoding import CHI_DEFAULT

__all__ = ["SanaPipeline", "SanaPipelineOutput", "aspect_ratio_table", "classify_height_width_bin",
           "convert_pipeline", "resize_and_crop", "to_pil"]
OUTPUT_TYPES = ("pil", "np", "latent")

# ----------------------------------------------------------------------------- resolution binning
# diffusers picks the bucket table from the transformer's sample_size. The 2048 / 4096 tables are
# the 40-bucket 1024 table scaled; the 512 / 1024 ones (PixArt-alpha's) lack these seven ratios.
_BIN_BASE_SIZE = {16: 512, 32: 1024, 64: 2048, 128: 4096}
_PIXART_ALPHA_MISSING = ("0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88")


def aspect_ratio_table(sample_size: int) -> dict[str, tuple[int, int]]:
  """{ratio "h/w": (height, width)} that diffusers' SanaPipeline bins to for this sample_size."""
  if sample_size not in _BIN_BASE_SIZE:
    raise ValueError(f"use_resolution_binning=True needs a transformer sample_size in "
                     f"{sorted(_BIN_BASE_SIZE)} (SANA's 512/1024/2048/4096 px models), this one has "
                     f"{sample_size}; pass use_resolution_binning=False")
  base = _BIN_BASE_SIZE[sample_size]
  table = scale_table(base, 32)
  if base <= 1024:
    table = {k: v for k, v in table.items() if k not in _PIXART_ALPHA_MISSING}
  return table


def classify_height_width_bin(height: int, width: int, table: dict) -> tuple[int, int]:
  """The (height, width) of the bucket whose ratio is nearest height / width (first on ties)."""
  return tuple(int(s) for s in table[nearest_bucket(height, width, table)])


def resize_and_crop(images, height: int, width: int):
  """[B, h, w, C] -> [B, height, width, C]: bilinear resize (half-pixel, no antialias, as torch's
  F.interpolate(align_corners=False)) until both sides cover the target, then a centre crop."""
  b, h, w, c = images.shape
  if (h, w) == (height, width):
    return images
  ratio = max(height / h, width / w)
  rh, rw = int(h * ratio), int(w * ratio)
  images = jax.image.resize(images, (b, rh, rw, c), method="linear", antialias=False)
  top, left = (rh - height) // 2, (rw - width) // 2
  return images[:, top:top + height, left:left + width]


# ----------------------------------------------------------------------------- the pipeline
@dataclasses.dataclass
class SanaPipelineOutput:
  """images: a list of PIL images, float32 numpy [B, H, W, 3] in [0, 1], or latents [B, h, w, C]."""
  images: Any


def _split(module):
  """(static part, state): an nnx module is split so its weights are jit arguments; a parameter-free
  codec (simple_codecs) is itself the static part, with an empty state."""
  if isinstance(module, nnx.Module):
    return nnx.split(module)
  return module, {}


def _merge(static, state):
  return nnx.merge(static, state) if isinstance(static, nnx.GraphDef) else static


# The bar of the call in progress; the compiled loop reports finished steps to it from the host.
_progress_bar = None


def _report_step(step):
  if _progress_bar is not None:
    _progress_bar.update(max(0, int(step) - _progress_bar.n))


@contextlib.contextmanager
def _progress(show: bool, total: int):
  global _progress_bar
  import tqdm
  with tqdm.tqdm(total=total, disable=not show, desc="denoise", dynamic_ncols=True) as bar:
    _progress_bar = bar
    try:
      yield bar
    finally:
      _progress_bar = None


# Module-level jitted functions with the graph definitions as static arguments: pipelines of one
# architecture (e.g. loaded from a diffusers folder and from our export) share their compilations.
@functools.partial(jax.jit, static_argnames=("graphdef", "guided", "timestep_scale", "progress"))
def _denoise(graphdef, state, latents, scheduler, guidance_scale, text, mask, neg_text, neg_mask, *,
             guided, timestep_scale, progress):
  return sample_loop(_merge(graphdef, state), latents, scheduler, guidance_scale if guided else 1.0, text, mask,
                     neg_text, neg_mask, timestep_scale=timestep_scale,
                     progress_fn=_report_step if progress else None)


@functools.partial(jax.jit, static_argnames=("size",))
def _postprocess(images, size):
  """Decoded images about [-1, 1] -> resized/cropped to `size` (h, w) if given -> [0, 1] float32."""
  images = images.astype(jnp.float32)
  if size is not None:
    images = resize_and_crop(images, *size)
  return jnp.clip(images * 0.5 + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "size"))
def _decode(graphdef, state, latents, *, size):
  vae = _merge(graphdef, state)
  return _postprocess(vae.decode(latents / vae.scaling_factor), size)


class SanaPipeline:
  """SANA text-to-image: prompt -> Gemma-2 features -> flow sampler over the DiT -> DC-AE decode.

  transformer: a `SanaTransformer`; vae: a `DCAE` (or any object with `decode`, `scaling_factor`
  and a spatial compression factor, e.g. `SpaceToDepthAutoencoder`); text_encoder: a `PromptEncoder`
  (or an object with its `encode` / `encode_negative` methods); scheduler_config: a diffusers
  scheduler_config.json dict; timestep_scale: the diffusers transformer's `timestep_scale`.
  """

  def __init__(self, transformer, vae, text_encoder, scheduler_config: dict, *, timestep_scale: float = 1.0):
    self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
    self.scheduler_config = dict(scheduler_config)
    self.timestep_scale = float(timestep_scale)
    self.vae_scale_factor = _compression(vae)
    self.vae_tiling = None
    # Timings (seconds) of the last call: text_encoder, denoise, decode, total.
    self.last_timings: dict[str, float] = {}
    self._transformer_graph, self._transformer_state = _split(transformer)
    self._vae_graph, self._vae_state = _split(vae)
    self._replicated = {}
    self._token_split_devices = None  # set by enable_sequence_parallel
    self._token_split_graphs = {}
    self.compilation_cache = compilation_cache.enable()  # folder or None (sana_jax/compilation_cache.py)

  # --------------------------------------------------------------------------- loading
  @classmethod
  def from_pretrained(cls, path, dtype=jnp.float32, variant: str | None = None) -> "SanaPipeline":
    """Loads a diffusers Sana pipeline folder (model_index.json, transformer/, vae/, text_encoder/,
    tokenizer/, scheduler/), our export (`convert_pipeline`) or a training workdir; weights and
    compute in dtype. variant: diffusers' weight variant ("bf16" reads *.bf16.safetensors)."""
    compilation_cache.enable()  # loading compiles programs too
    parts, _ = pipeline_parts(path, dtype=dtype, variant=variant)
    return cls(**parts)

  # --------------------------------------------------------------------------- LoRA
  def load_lora_weights(self, path, adapter_name: str | None = None, scale: float = 1.0):
    """Adds the LoRA in `path` (a .safetensors file, or a folder with pytorch_lora_weights.safetensors,
    as diffusers' save_lora_weights writes it) to the transformer as `adapter_name` (default
    "default_{n}", as diffusers names them) with weight `scale`; adapters loaded before stay active."""
    from sana_jax.convert.lora import load_lora
    if adapter_name is None:
      adapter_name = f"default_{len(lora.adapters(self.transformer))}"
    load_lora(self.transformer, path, adapter_name=adapter_name, scale=scale)
    self._transformer_changed()

  def save_lora_weights(self, path, adapter_name: str = "default", base_model=None) -> str:
    """Writes one adapter as the file diffusers' SanaPipeline.load_lora_weights reads; returns it."""
    from sana_jax.convert.lora import save_lora
    return save_lora(self.transformer, path, adapter_name, base_model=base_model)

  def get_list_adapters(self) -> dict:
    """{"transformer": [adapter names]}, as diffusers returns it."""
    return {"transformer": list(lora.adapters(self.transformer))}

  def set_adapters(self, adapter_names, adapter_weights=None):
    """Only `adapter_names` are active, with `adapter_weights` (default 1.0 each)."""
    lora.set_adapters(self.transformer, adapter_names, adapter_weights)
    self._transformer_changed()

  def fuse_lora(self, lora_scale: float = 1.0, adapter_names=None):
    """Adds lora_scale x the active adapters' updates into the transformer's kernels (same images)."""
    lora.fuse_lora(self.transformer, lora_scale, adapter_names)
    self._transformer_changed()

  def unfuse_lora(self):
    lora.unfuse_lora(self.transformer)
    self._transformer_changed()

  def delete_adapters(self, adapter_names):
    for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
      lora.delete_adapter(self.transformer, name)
    self._transformer_changed()

  def unload_lora_weights(self):
    """Removes every adapter: the base transformer again."""
    lora.unload_lora(self.transformer)
    self._transformer_changed()

  def _transformer_changed(self):
    """The transformer's variables (or its structure) changed: split it again for the jitted loop."""
    self._transformer_graph, self._transformer_state = _split(self.transformer)
    self._replicated = {}
    self._token_split_graphs = {}

  def enable_vae_tiling(self, tile_latent_size: int = 16, overlap: int = 2):
    """Decode in overlapping latent tiles (bounded memory for 4096^2 images; `DCAE.decode_tiled`)."""
    if not hasattr(self.vae, "decode_tiled"):
      raise ValueError(f"{type(self.vae).__name__} has no tiled decoding")
    self.vae_tiling = (int(tile_latent_size), int(overlap))

  def disable_vae_tiling(self):
    self.vae_tiling = None

  def enable_sequence_parallel(self, devices=None):
    """Split each image's tokens over `devices` (default: all local ones) when a call's batch does
    not divide over them, e.g. one 4K image on the 8 cores of a TPU host: the devices form a
    (batch, seq) mesh with batch = gcd(images, devices) and the transformer runs sequence-parallel
    over seq (docs/kernels.md). The latent rows (in patches) must divide by the seq size. A batch
    that divides over the devices is spread over them as usual."""
    devices = list(jax.local_devices() if devices is None else devices)
    if len(devices) < 2:
      raise ValueError(f"sequence parallelism needs at least 2 devices, got {len(devices)}")
    self._token_split_devices = devices

  def disable_sequence_parallel(self):
    self._token_split_devices = None

  # --------------------------------------------------------------------------- sampling
  def encode_prompt(self, prompt, negative_prompt="", num_images_per_prompt: int = 1,
                    guided: bool = True, complex_human_instruction=CHI_DEFAULT,
                    max_sequence_length: int = 300):
    """-> (text [B*n, L, C], mask [B*n, L], negative text, negative mask); negatives are None
    without guidance. Each prompt's rows are repeated n times in a row (p0, p0, p1, p1, ...)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    text, mask = self.text_encoder.encode(prompts, complex_human_instruction, max_sequence_length)
    return self._embeddings(text, mask, negative_prompt, None, None, num_images_per_prompt, guided)

  def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] = "",
               height: int = 1024, width: int = 1024, num_inference_steps: int = 20,
               guidance_scale: float = 4.5, latents=None, seed: int = 0, num_images_per_prompt: int = 1,
               sampler: str | None = None, use_resolution_binning: bool = True,
               complex_human_instruction: Sequence[str] | None = CHI_DEFAULT,
               max_sequence_length: int = 300, output_type: str = "pil", return_dict: bool = True,
               progress: bool = False, *, prompt_embeds=None, prompt_attention_mask=None,
               negative_prompt_embeds=None, negative_prompt_attention_mask=None, generator=None,
               attention_kwargs=None):
    """Generates images for `prompt` (a string or a list: one batch), diffusers' arguments.

    latents: initial noise, NHWC [B * num_images_per_prompt, height/f, width/f, C]; drawn from
      `generator` (a seed or a JAX key; default `jax.random.key(seed)`) when None.
    prompt_embeds [B, L, C] + prompt_attention_mask [B, L]: instead of `prompt`, as diffusers takes
      them; negative_prompt_embeds / negative_prompt_attention_mask likewise instead of
      `negative_prompt` (which is otherwise encoded at length L).
    sampler: "flow_dpm_solver" | "flow_euler"; None uses the scheduler config's.
    complex_human_instruction: SANA's default; None disables it.
    output_type: "pil" (list of PIL images), "np" (float32 [B, H, W, 3] in [0, 1]) or "latent".
    Returns a `SanaPipelineOutput`, or the images themselves with return_dict=False.
    progress: show a tqdm bar over the denoising steps.
    attention_kwargs: as diffusers, {"scale": s} multiplies every loaded LoRA's weight by s for
      this call (no recompilation); no other key is read.
    """
    start = time.perf_counter()
    lora_scale = _lora_scale(attention_kwargs)
    if output_type not in OUTPUT_TYPES:
      raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if sampler is not None and sampler not in SAMPLERS:
      raise ValueError(f"sampler must be one of {SAMPLERS} or None, got {sampler!r}")
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) \
        or num_images_per_prompt < 1:
      raise ValueError(f"num_images_per_prompt must be a positive int, got {num_images_per_prompt!r}")
    orig_size = (int(height), int(width))
    if use_resolution_binning:
      height, width = classify_height_width_bin(height, width, aspect_ratio_table(self.transformer.cfg.sample_size))
    latent_hw = self._latent_size(height, width)
    scheduler = scheduler_from_config(self.scheduler_config, num_inference_steps, sampler)
    guided = float(guidance_scale) > 1.0

    if prompt_embeds is None:
      prompt_embeds, prompt_attention_mask = self.text_encoder.encode(
          _check_prompts(prompt), complex_human_instruction, max_sequence_length)
    elif prompt is not None:
      raise ValueError("pass either prompt or prompt_embeds, not both")
    text, mask, neg_text, neg_mask = self._embeddings(
        prompt_embeds, prompt_attention_mask, negative_prompt, negative_prompt_embeds,
        negative_prompt_attention_mask, num_images_per_prompt, guided)
    batch = text.shape[0]
    latents = self._initial_latents(latents, batch, latent_hw, _noise_key(generator, seed))
    jax.block_until_ready((text, neg_text))
    t_text = time.perf_counter()

    spread = self._spread_sharding(batch)
    transformer_graph, token_mesh = self._transformer_graph, None
    if spread is None and self._token_split_devices is not None:
      token_mesh, transformer_graph = self._token_split(batch, latent_hw)
      spread = NamedSharding(token_mesh, P("batch"))
    transformer_state, vae_state = self._transformer_state, self._vae_state
    if spread is not None:
      latents, text, mask = jax.device_put((latents, text, mask), spread)
      if guided:
        neg_text, neg_mask = jax.device_put((neg_text, neg_mask), spread)
      transformer_state, vae_state = self._replicated_states(spread)
    if lora_scale is not None:
      transformer_state = lora.scaled_weights(transformer_state, lora_scale)
    # The loop's per-step host callback is ordered, which XLA allows on one device only.
    show = progress and spread is None
    with _progress(progress, scheduler.num_inference_steps) as bar, \
        (jax.set_mesh(token_mesh) if token_mesh is not None else contextlib.nullcontext()):
      latents = _denoise(transformer_graph, transformer_state, latents, scheduler,
                         jnp.float32(guidance_scale), text, mask, neg_text, neg_mask, guided=guided,
                         timestep_scale=self.timestep_scale, progress=show)
      latents.block_until_ready()
      bar.update(scheduler.num_inference_steps - bar.n)
    t_denoise = time.perf_counter()

    if output_type == "latent":
      images = latents
    else:
      size = orig_size if use_resolution_binning else None
      if self.vae_tiling is not None:
        decoded = self.vae.decode_tiled(latents / self.vae.scaling_factor, *self.vae_tiling)
        images = _postprocess(decoded, size=size)
      else:
        images = _decode(self._vae_graph, vae_state, latents, size=size)
      images = np.asarray(images, np.float32)
      if output_type == "pil":
        images = to_pil(images)
    end = time.perf_counter()
    self.last_timings = dict(text_encoder=t_text - start, denoise=t_denoise - t_text, decode=end - t_denoise,
                             total=end - start)
    return SanaPipelineOutput(images) if return_dict else images

  # --------------------------------------------------------------------------- helpers
  def _latent_size(self, height, width):
    multiple = self.vae_scale_factor * self.transformer.cfg.patch_size
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
      raise ValueError(f"height and width must be positive multiples of {multiple} (autoencoder factor "
                       f"{self.vae_scale_factor} x patch size {self.transformer.cfg.patch_size}), "
                       f"got {height}x{width}")
    return height // self.vae_scale_factor, width // self.vae_scale_factor

  def _embeddings(self, embeds, mask, negative_prompt, neg_embeds, neg_mask, n, guided):
    """Prompt embeddings checked, the negatives encoded at their length unless given, each row
    repeated n times (p0, p0, p1, p1, ...); negatives are None without guidance."""
    if mask is None:
      raise ValueError("prompt_embeds needs prompt_attention_mask ([B, L], 1 = real token)")
    embeds, mask = jnp.asarray(embeds), jnp.asarray(mask)
    if embeds.ndim != 3 or mask.shape != embeds.shape[:2]:
      raise ValueError(f"prompt_embeds must be [B, L, C] with prompt_attention_mask [B, L], got "
                       f"{embeds.shape} and {mask.shape}")
    repeat = functools.partial(jnp.repeat, repeats=n, axis=0)
    if not guided:
      return repeat(embeds), repeat(mask), None, None
    if neg_embeds is None:
      neg_embeds, neg_mask = self.text_encoder.encode_negative(negative_prompt, embeds.shape[0], embeds.shape[1])
    elif neg_mask is None:
      raise ValueError("negative_prompt_embeds needs negative_prompt_attention_mask")
    neg_embeds, neg_mask = jnp.asarray(neg_embeds), jnp.asarray(neg_mask)
    if neg_embeds.shape != embeds.shape or neg_mask.shape != mask.shape:
      raise ValueError(f"negative_prompt_embeds {neg_embeds.shape} / mask {neg_mask.shape} must match "
                       f"prompt_embeds {embeds.shape} / mask {mask.shape}")
    return repeat(embeds), repeat(mask), repeat(neg_embeds), repeat(neg_mask)

  def _initial_latents(self, latents, batch, latent_hw, key):
    shape = (batch, *latent_hw, self.transformer.cfg.in_channels)
    if latents is None:
      return jax.random.normal(key, shape, jnp.float32)
    latents = jnp.asarray(latents, jnp.float32)
    if latents.shape != shape:
      raise ValueError(f"latents must be NHWC {shape} (batch = prompts x num_images_per_prompt, size = "
                       f"image size / {self.vae_scale_factor}), got {latents.shape}")
    return latents

  def _spread_sharding(self, batch):
    """Batch sharding over all local devices when the batch divides over them, else None."""
    devices = jax.local_devices()
    if len(devices) < 2 or batch % len(devices):
      return None
    return NamedSharding(Mesh(np.array(devices), ("batch",)), P("batch"))

  def _token_split(self, batch, latent_hw):
    """(batch x seq mesh, transformer graph that splits tokens over seq) for this call."""
    devices = self._token_split_devices
    data = math.gcd(batch, len(devices))
    seq = len(devices) // data
    rows = latent_hw[0] // self.transformer.cfg.patch_size
    if rows % seq:
      raise ValueError(f"sequence parallelism splits the {rows} latent rows (patches) of each image "
                       f"over {seq} devices, which does not divide them; choose another height or "
                       "fewer devices (enable_sequence_parallel(devices=...))")
    mesh = Mesh(np.array(devices).reshape(data, seq), ("batch", "seq"))
    if seq not in self._token_split_graphs:
      cfg = self.transformer.cfg.as_configdict()
      cfg.seq_parallel_axis, cfg.seq_parallel_batch_axis = "seq", "batch"
      self._token_split_graphs[seq] = nnx.split(nnx.eval_shape(
          lambda: lora.copy_structure(self.transformer, SanaTransformer(cfg, rngs=nnx.Rngs(0)))))[0]
    return mesh, self._token_split_graphs[seq]

  def _replicated_states(self, spread):
    """Transformer and VAE parameters replicated on the sharding's devices (made once, kept)."""
    key = (spread.mesh.devices.shape, tuple(d.id for d in spread.mesh.devices.flat))
    if key not in self._replicated:
      replicated = NamedSharding(spread.mesh, P())
      self._replicated[key] = jax.device_put((self._transformer_state, self._vae_state), replicated)
    return self._replicated[key]

  def warmup(self, resolutions=((1024, 1024),), batch_sizes=(1,), **call_kwargs):
    """Compiles, before the first real request, what calls at these sizes will run.

    resolutions: (height, width) pairs; batch_sizes: images per call; call_kwargs: the other
    `__call__` arguments the real calls will use (num_inference_steps, guidance_scale, ...: the
    compiled programs depend on them). Runs one call per (resolution, batch size) on placeholder
    prompts, so later calls at those shapes in this process start at once, and, through the
    persistent compilation cache, so do the first calls of later processes. Returns
    {(height, width, batch): seconds}.
    """
    call_kwargs = dict(call_kwargs, output_type="np")
    seconds = {}
    for height, width in resolutions:
      for batch in batch_sizes:
        start = time.perf_counter()
        self(["warmup"] * int(batch), height=height, width=width, **call_kwargs)
        seconds[int(height), int(width), int(batch)] = time.perf_counter() - start
    return seconds


def to_pil(images: np.ndarray) -> list:
  """float [B, H, W, 3] in [0, 1] -> PIL images, rounded as diffusers' numpy_to_pil."""
  from PIL import Image
  return [Image.fromarray(im) for im in (np.asarray(images) * 255).round().astype(np.uint8)]


def _compression(vae) -> int:
  """The autoencoder's spatial factor (`spatial_compression_ratio`: DCAE and the built-in codecs)."""
  if hasattr(vae, "spatial_compression_ratio"):
    return int(vae.spatial_compression_ratio)
  raise ValueError(f"{type(vae).__name__} has no spatial_compression_ratio: not an autoencoder")


def _noise_key(generator, seed):
  """A JAX key from diffusers' `generator` argument (a seed or a JAX key), else from `seed`."""
  if generator is None:
    return jax.random.key(seed)
  if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
    return jax.random.key(int(generator))
  if isinstance(generator, jax.Array) and (jnp.issubdtype(generator.dtype, jax.dtypes.prng_key) or
                                           generator.shape == (2,)):
    return generator
  raise ValueError(f"generator must be a seed (int) or a JAX key, got {type(generator).__name__}; "
                   "a torch.Generator has no JAX equivalent")


def _lora_scale(attention_kwargs):
  """diffusers' attention_kwargs: only "scale" (the LoRA scale of the call) has a meaning here."""
  if attention_kwargs is None:
    return None
  unknown = sorted(set(attention_kwargs) - {"scale"})
  if unknown:
    raise ValueError(f"attention_kwargs: only 'scale' (the LoRA scale) is supported, got {unknown}")
  return float(attention_kwargs["scale"]) if "scale" in attention_kwargs else None


def _check_prompts(prompt) -> list[str]:
  prompts = [prompt] if isinstance(prompt, str) else prompt
  if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
  return list(prompts)
