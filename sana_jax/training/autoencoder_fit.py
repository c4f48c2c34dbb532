"""A small autoencoder fitted to the run's own images: the latent space of the default CPU job.

SANA trains its transformer on the latents of a DC-AE, not on pixels. The published DC-AE needs a
download and is built for photos of 512 px and more, so `codecs.autoencoder = "conv_fit"` fits a
small convolutional autoencoder (models/conv_autoencoder.py) to the training images before the
transformer trains, and keeps it in the workdir. (A DC-AE of the same widths, fitted the same way,
reconstructed worse and fitted 1.75x slower: docs/training.md, "A fitted autoencoder".)

    <workdir>/autoencoder/autoencoder.json   its config (scaling_factor included) + the fit's report
    <workdir>/autoencoder/state/             its weights (Orbax, convert/native.py)

A resumed run, `python -m sana_jax.sample --checkpoint workdir` and `SanaPipeline.from_pretrained(workdir)`
read it back; it is fitted only when the folder is absent, and written complete or not at all. A
run started from another run (`train.init_from` = its workdir: a fine-tune, a LoRA) copies that
run's autoencoder instead of fitting one, so it stays in the latent space its weights know.

The fit: mean squared reconstruction error with Gaussian noise (std `fit_latent_noise`) added to
the latents before decoding, so the decoder draws clean shapes from the slightly-off latents a
sampler ends at, and a small penalty on the latents' size so that noise keeps its meaning. The
latents' standard deviation over training images sets `scaling_factor` (unit-variance latents for
the transformer, as DC-AE's published factor does). Why the default job uses it, and what it
measured: docs/training.md ("A fitted autoencoder").
"""
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from sana_jax.convert import native
from sana_jax.convert.tensors import CheckpointError
from sana_jax.models.conv_autoencoder import ConvAutoencoder, ConvAutoencoderConfig

FOLDER = "autoencoder"
KIND = "conv_fit"
_META = "autoencoder.json"
_LATENT_PENALTY = 1e-3


def autoencoder_config(codecs_cfg, in_channels: int = 3, scaling_factor: float = 1.0) -> ConvAutoencoderConfig:
  """The autoencoder cfg.codecs describes (fit_widths: one stage per width, each after the first
  halving the resolution), checked against codecs.autoencoder_factor."""
  widths = tuple(int(w) for w in codecs_cfg.fit_widths)
  config = ConvAutoencoderConfig(in_channels=in_channels, latent_channels=int(codecs_cfg.fit_latent_channels),
                                 widths=widths, scaling_factor=float(scaling_factor))
  if config.spatial_compression_ratio != codecs_cfg.autoencoder_factor:
    raise ValueError(f"codecs.fit_widths {widths} make a {config.spatial_compression_ratio}x autoencoder but "
                     f"codecs.autoencoder_factor is {codecs_cfg.autoencoder_factor} (one stage per halving, plus one)")
  return config


def fit(cfg, progress: bool = True) -> tuple[ConvAutoencoder, dict]:
  """Fits the autoencoder cfg.codecs describes on cfg.data's images -> (autoencoder with its
  scaling_factor set, report {steps, seconds, reconstruction_mse (mean of the last 50 steps),
  latent_std, and on the shapes data reconstruction_score})."""
  from sana_jax.data import pipeline  # data -> training, not the other way

  c = cfg.codecs
  if cfg.data.name == "cache":
    raise ValueError(f"codecs.autoencoder {KIND!r} fits on images; a latent cache has none "
                     "(fit it on the image data, or preprocess with the space_to_depth autoencoder)")
  if c.fit_steps < 1 or c.fit_batch_size < 1:
    raise ValueError(f"codecs.fit_steps and fit_batch_size must be positive, got {c.fit_steps}, {c.fit_batch_size}")
  vae = ConvAutoencoder(autoencoder_config(c), rngs=nnx.Rngs(cfg.seed))
  optimizer = nnx.Optimizer(vae, optax.adam(c.fit_learning_rate), wrt=nnx.Param)
  noise_std = float(c.fit_latent_noise)

  @nnx.jit
  def train_step(vae, optimizer, images, key):
    def loss_fn(vae):
      latents = vae.encoder(images)
      noisy = latents + noise_std * jax.random.normal(key, latents.shape)
      error = jnp.mean(jnp.square(vae.decoder(noisy) - images))
      return error + _LATENT_PENALTY * jnp.mean(jnp.square(latents)), error
    (_, error), grads = nnx.value_and_grad(loss_fn, has_aux=True)(vae)
    optimizer.update(vae, grads)
    return error

  start = time.perf_counter()
  batches = iter(pipeline.make_dataset(cfg.data, c.fit_batch_size, cfg.seed))
  errors = []
  bar = tqdm.tqdm(range(c.fit_steps), desc="fitting the autoencoder", unit="step", disable=not progress,
                  mininterval=2.0)
  for i in bar:
    images = jnp.asarray(next(batches)["images"], jnp.float32)
    errors.append(train_step(vae, optimizer, images, jax.random.fold_in(jax.random.key(cfg.seed), i)))
    if i % 100 == 99 or i == c.fit_steps - 1:
      bar.set_postfix(mse=f"{float(errors[-1]):.5f}")
  final = float(np.mean(jax.device_get(errors[-min(50, len(errors)):])))
  if not np.isfinite(final):
    raise FloatingPointError(f"fitting the autoencoder diverged (reconstruction error {final}); "
                             f"lower codecs.fit_learning_rate ({c.fit_learning_rate})")
  sample = np.concatenate([np.asarray(vae.encode(next(batches)["images"])) for _ in range(4)])
  std = float(sample.std())
  vae.config = dataclasses.replace(vae.config, scaling_factor=1.0 / std)
  vae.scaling_factor = vae.config.scaling_factor
  report = {"steps": int(c.fit_steps), "seconds": round(time.perf_counter() - start, 1),
            "reconstruction_mse": round(final, 6), "latent_std": round(std, 5)}
  if cfg.data.name == "shapes":
    report["reconstruction_score"] = reconstruction_score(vae, cfg)
  return vae, report


def reconstruction_score(vae: ConvAutoencoder, cfg, count: int = 192) -> float:
  """The shapes evaluator's overall score of the autoencoder's reconstructions of `count` held-out
  images, the scenes the training loop scores (an autoencoder that loses shapes caps every model
  trained on its latents)."""
  from sana_jax.data import shapes, shapes_eval
  source = shapes.heldout_source(count, cfg.data.image_size, cfg.data.shapes_seed, cfg.data.shapes_tasks)
  images, specs = source.first(count)
  decoded = np.clip(np.asarray(vae.decode(vae.encode(images))), -1.0, 1.0)
  return round(shapes_eval.score(list(decoded), specs)["overall"], 3)


def save(vae: ConvAutoencoder, report: dict, folder) -> str:
  """Writes the autoencoder to `folder` (which must not exist) via a temporary sibling, so the
  folder is either complete or absent."""
  meta = {"kind": KIND, "config": dataclasses.asdict(vae.config), "fit": report}
  return native.save_module_folder(vae, meta, folder, _META, "an autoencoder")


def load(folder, codecs_cfg=None) -> tuple[ConvAutoencoder, dict]:
  """-> (the autoencoder saved in `folder`, its fit report); CheckpointError naming what is wrong.
  codecs_cfg: also check that it is the autoencoder these settings describe (`check_matches`)."""
  folder = os.path.abspath(os.fspath(folder))
  vae, meta = native.load_module_folder(folder, _META, ConvAutoencoderConfig, ConvAutoencoder, "fitted autoencoder")
  if codecs_cfg is not None:
    check_matches(vae, codecs_cfg, folder)
  return vae, meta.get("fit", {})


def check_matches(vae: ConvAutoencoder, codecs_cfg, folder) -> None:
  """The saved autoencoder must be the one cfg.codecs describes (else the latents mean something else)."""
  want = dataclasses.replace(autoencoder_config(codecs_cfg), scaling_factor=vae.config.scaling_factor)
  if vae.config != want:
    diffs = [f"{f.name}: saved {getattr(vae.config, f.name)} vs config {getattr(want, f.name)}"
             for f in dataclasses.fields(want) if getattr(vae.config, f.name) != getattr(want, f.name)]
    raise ValueError(f"the autoencoder in {folder} is not the one codecs.fit_* describe ({'; '.join(diffs)}); "
                     "use the settings it was fitted with, or another workdir")


def load_or_fit(cfg, workdir=None, progress: bool = True, allow_fit: bool = True) -> ConvAutoencoder:
  """The run's fitted autoencoder: read from <workdir>/autoencoder, else fitted now (and saved
  there when a workdir is given; with none, e.g. a benchmark, it lives in memory only).
  allow_fit=False (reading a finished run): a missing folder is a CheckpointError instead."""
  folder = None if workdir is None else os.path.join(os.fspath(workdir), FOLDER)
  if folder is not None and os.path.exists(folder):
    vae, _ = load(folder, cfg.codecs)
    return vae
  if not allow_fit:
    raise CheckpointError(f"{folder or 'no workdir'}: the run's fitted autoencoder is missing (codecs.autoencoder "
                          f"{KIND!r}), so its latents cannot be decoded")
  init_from = str(cfg.train.get("init_from", "") or "")
  inherited = os.path.join(init_from, FOLDER) if init_from else None
  if inherited and os.path.isdir(inherited):
    # A fine-tune or LoRA of a run continues in that run's latent space: its autoencoder, copied.
    vae, report = load(inherited, cfg.codecs)
    print(f"using the autoencoder of train.init_from ({inherited})", flush=True)
    if folder is not None:
      save(vae, {**report, "copied_from": inherited}, folder)
    return vae
  if init_from:
    print(f"train.init_from {init_from} holds no fitted autoencoder: fitting a new one, whose latents "
          "its weights have not seen", flush=True)
  vae, report = fit(cfg, progress=progress)
  line = ", ".join(f"{k} {v}" for k, v in report.items())
  print(f"fitted the autoencoder ({describe(vae)}): {line}", flush=True)
  if folder is not None:
    save(vae, report, folder)
  return vae


def describe(vae: ConvAutoencoder) -> str:
  c = vae.config
  return (f"conv {'/'.join(map(str, c.widths))}, {c.latent_channels} latent channels, "
          f"{c.spatial_compression_ratio}x, scaling_factor {c.scaling_factor:.4f}")
