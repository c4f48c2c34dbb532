"""The shared skeleton of every sana_jax config: model, optimiser, data, training, sampling, mesh.

Each preset module in this folder (tiny.py, sana_600m_p1_d28.py, ...) calls `base_config()` and
overrides what differs. A config value has one name everywhere: config field, CLI override
(`--config.optimizer.name=came_8bit`) and checkpoint metadata.
"""
import ml_collections
from ml_collections import config_dict

from sana_jax.data.pipeline import default_data_config
from sana_jax.optim.registry import default_optimizer_config


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Architecture of the linear DiT (docs/architecture.md). Defaults: the 1.6B SANA 1.0 model."""
  m = ml_collections.ConfigDict()
  m.name = "SanaMS_1600M_P1_D20"
  m.in_channels = 32
  m.out_channels = 32
  m.patch_size = 1
  m.hidden_size = 2240
  m.depth = 20
  m.linear_head_dim = 32          # self-attention heads = hidden_size // linear_head_dim
  m.cross_num_heads = 20
  m.cross_head_dim = 112          # cross-attention inner width = cross_num_heads * cross_head_dim
  m.caption_channels = 2304       # Gemma-2-2B hidden size
  m.mlp_ratio = 2.5
  # Not in SANA: add the caption's mean token (projected) to the timestep embedding, so every
  # block's modulation knows the whole caption (SD3's pooled text). Only False exports to diffusers.
  m.pooled_caption = False
  m.qk_norm = False               # SANA 1.5: RMSNorm on q and k (self- and cross-attention)
  m.qk_norm_eps = 1e-5
  m.norm_eps = 1e-6
  m.linear_attn_eps = 1e-15       # diffusers' value; the NVlabs block passes 1e-8
  m.use_pe = False                # sincos position embedding (2K / 4K checkpoints)
  m.interpolation_scale = 1.0
  m.sample_size = 32              # base latent size the sincos embedding is laid out for
  m.attention_impl = "auto"       # "auto" | "pallas" | "xla"
  # What the network's output means. "velocity": the flow velocity (SANA, diffusers). "x0": the
  # clean latent, which the model turns into the velocity (x_t - x0) / max(sigma, 0.05) itself, so
  # the objective and samplers are unchanged (JiT's x-prediction with the velocity loss; a little
  # better for the small default model, docs/training.md). x0 models do not export to diffusers.
  m.prediction = "velocity"
  # Sequence parallelism: the mesh axis the image tokens are split over in every layer (None =
  # off; the latent rows must divide by its size) and the axis (or axes) the batch is split over.
  # Needs a mesh: the train step provides it, elsewhere `jax.set_mesh(mesh)`. See docs/kernels.md.
  m.seq_parallel_axis = config_dict.placeholder(str)        # typed None: settable from flags
  m.seq_parallel_batch_axis = config_dict.placeholder(object)  # "data" or '("data", "fsdp")'
  m.remat_policy = "none"         # "none" | "full" | "dots" | "dots_no_batch" (see models/transformer.py)
  m.scan_unroll = 1               # blocks per iteration of the layer scan; = depth: a straight-line stack
                                  # (faster for a few small blocks on CPU, longer compiles for deep models)
  m.dtype = "float32"             # compute dtype
  m.param_dtype = "float32"
  m.update(overrides)
  return m


def train_config(**overrides) -> ml_collections.ConfigDict:
  """Objective, batch and loop settings (docs/architecture.md for the objective)."""
  t = ml_collections.ConfigDict()
  t.batch_size = 256              # global batch (all hosts, all micro-batches)
  t.grad_accum_steps = 1          # micro-batches per update, accumulated with a lax.scan
  t.num_steps = 100_000
  t.ema_decay = 0.0               # 0 = no EMA copy of the weights (the SANA default)
  t.flow_shift = 3.0
  t.logit_mean = 0.0
  t.logit_std = 1.0
  t.caption_dropout = 0.1
  t.log_every = 50                # steps between TensorBoard scalars
  t.checkpoint_every = 1000
  t.keep_checkpoints = 3
  t.sample_every = 5000           # steps between sample grids (0 = only at the end)
  t.init_from = ""                # start from these weights (e.g. a grown checkpoint), fresh optimiser
  t.update(overrides)
  return t


def mesh_config(**overrides) -> ml_collections.ConfigDict:
  """Device mesh sizes (one may be -1: all remaining devices) and logical-axis -> mesh-axis rules."""
  m = ml_collections.ConfigDict()
  m.data = 1
  m.fsdp = -1
  m.tensor = 1
  m.axis_rules = (("batch", ("data", "fsdp")), ("layers", None), ("embed", "fsdp"),
                  ("heads", "tensor"), ("mlp", "tensor"))
  m.update(overrides)
  return m


def sampling_config(**overrides) -> ml_collections.ConfigDict:
  """Sample grids drawn during training from fixed prompts."""
  s = ml_collections.ConfigDict()
  s.sampler = "flow_euler"
  s.num_steps = 20
  s.guidance_scale = 4.5
  # Noise levels t / 1000 where guidance acts (NVlabs Sana's interval_guidance); elsewhere the
  # conditional velocity alone. (0, 1): every step, as diffusers' SanaPipeline does.
  s.guidance_interval = (0.0, 1.0)
  s.flow_shift = 3.0
  s.num_images = 8               # images per sample grid (held-out prompts)
  s.num_eval_images = 0           # shapes data: images scored by the shapes evaluator at the end
  # Shapes data: also score SANA 1.5's inference-time scaling on those prompts: eval_best_of
  # candidates each (the first is the one-sample image), the run's contrastive judge keeps one
  # (fitted on renders for eval_judge_steps and kept in <workdir>/judge; never the evaluator). 0: off.
  s.eval_best_of = 0
  s.eval_judge_steps = 1500
  s.update(overrides)
  return s


def codecs_config(**overrides) -> ml_collections.ConfigDict:
  """Autoencoder and text encoder that turn images and captions into model inputs."""
  c = ml_collections.ConfigDict()
  # "dc-ae-f32c32" (the published DC-AE, through a preprocessed cache), "space_to_depth" (built in,
  # parameter-free) or "conv_fit": a small conv autoencoder fitted to the run's own images before the
  # transformer trains, kept in <workdir>/autoencoder (training/autoencoder_fit.py).
  c.autoencoder = "dc-ae-f32c32"
  c.autoencoder_factor = 32       # spatial compression
  c.scaling_factor = 1.0          # space_to_depth only: latents = pixels x this (a DC-AE brings its own)
  # conv_fit only: one stage per width (each after the first halves H and W), latent
  # channels, and the fit (steps of Adam on batches of images, noise added to the latents).
  c.fit_widths = (16, 32, 32)
  c.fit_latent_channels = 16
  c.fit_steps = 600
  c.fit_batch_size = 64
  c.fit_learning_rate = 2e-3
  c.fit_latent_noise = 0.1
  c.text_encoder = "gemma-2-2b-it"  # or "word_embedding" (built in, parameter-free)
  # word_embedding only: each token also carries this many tokens before it (as a causal LM's do).
  c.text_context = 0
  c.max_text_length = 300
  c.update(overrides)
  return c


def lora_config(**overrides) -> ml_collections.ConfigDict:
  """LoRA adapter on the transformer's linear maps (docs/lora.md, sana_jax/models/lora.py).

  Not part of base_config(): a run has a `lora` section only when it trains or samples with an
  adapter (configs/lora.py adds `c.lora = lora_config()`), so the stored config of a full
  fine-tuning checkpoint is unchanged and compares equal on resume.
  target_modules: names as diffusers / PEFT users write them ("to_q", "attn2.to_q", "to_out.0",
  "ff.conv_inverted", ...): a name matches a layer when it equals the layer's diffusers path or is
  a suffix of it at a "." boundary; a string (not a tuple) is a regular expression matched in full.
  """
  lo = ml_collections.ConfigDict()
  lo.rank = 16
  lo.alpha = 16.0                 # scale = alpha / rank (alpha / sqrt(rank) with use_rslora)
  lo.dropout = 0.0                # dropout on the adapter's input, training only
  # Untyped, so a flag may give a tuple ('("to_q", "attn2.to_k")') or a regex string ('.*attn1.*').
  lo.target_modules = config_dict.FieldReference(("to_q", "to_k", "to_v", "to_out.0"), field_type=object)
  lo.init = "gaussian"            # PEFT: "gaussian" A ~ N(0, std 1/rank); "kaiming" A ~ kaiming-uniform(a=sqrt 5); B = 0
  lo.use_rslora = False
  lo.base_model = ""              # the base checkpoint the adapter was trained on (recorded on export)
  lo.update(overrides)
  return lo


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = model_config()
  c.codecs = codecs_config()
  c.data = default_data_config()
  c.optimizer = default_optimizer_config()
  c.train = train_config()
  c.mesh = mesh_config()
  c.sampling = sampling_config()
  c.seed = 0
  return c
