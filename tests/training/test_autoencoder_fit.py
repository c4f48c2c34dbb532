"""The fitted autoencoder of the default job (codecs.autoencoder = "conv_fit"): its layers against
torch's, the fit, the folder it is kept in, and each way a run or a reader could get it wrong."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from sana_jax import configs
from sana_jax.convert import pipeline as convert_pipeline
from sana_jax.convert.tensors import CheckpointError
from sana_jax.models.conv_autoencoder import ConvAutoencoder, ConvAutoencoderConfig
from sana_jax.training import autoencoder_fit, loop
from tests.training.test_loop import micro_config


def _torch_conv(conv, x, stride=1):
  """flax Conv ("SAME") applied with torch: kernel [kh, kw, in, out] -> [out, in, kh, kw]; for
  stride 2 on an even size, "SAME" pads one row/column after, none before."""
  weight = torch.from_numpy(np.array(conv.kernel.value)).permute(3, 2, 0, 1)
  bias = torch.from_numpy(np.array(conv.bias.value))
  k = weight.shape[-1]
  if stride == 1:
    return F.conv2d(x, weight, bias, padding=k // 2)
  return F.conv2d(F.pad(x, (0, 1, 0, 1)), weight, bias, stride=2)


def _torch_autoencoder(ae, images):
  """The architecture models/conv_autoencoder.py describes, written with torch ops (NCHW)."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  convs = list(ae.encoder_convs)
  x = F.silu(_torch_conv(convs[0], x))
  for i, conv in enumerate(convs[1:]):
    x = F.silu(_torch_conv(conv, x, stride=2 if i % 2 == 0 else 1))
  z = _torch_conv(ae.encoder_out, x)
  x = F.silu(_torch_conv(ae.decoder_in, z))
  for i, conv in enumerate(ae.decoder_convs):
    if i % 2 == 0:
      x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = F.silu(_torch_conv(conv, x))
  out = _torch_conv(ae.decoder_out, x)
  return z.permute(0, 2, 3, 1).numpy(), out.permute(0, 2, 3, 1).numpy()


def test_encode_and_decode_equal_the_same_layers_in_torch():
  ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=4, widths=(8, 16, 16)), rngs=nnx.Rngs(3))
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  z_ref, out_ref = _torch_autoencoder(ae, images)
  z = np.asarray(ae.encode(images))
  assert z.shape == (2, 8, 8, 4) and ae.spatial_compression_ratio == 4
  # fp32 convolutions summed in another order: measured max differences 5e-7 of the largest value
  # (2.9e-8 of 0.064 for the latents, 1.3e-9 of 0.0026 for the images)
  np.testing.assert_allclose(z, z_ref, atol=1e-5 * np.abs(z_ref).max())
  np.testing.assert_allclose(np.asarray(ae.decode(z_ref)), out_ref, atol=1e-5 * np.abs(out_ref).max())


def _fit_config(steps, **codecs):
  cfg = configs.get_config("tiny")
  cfg.codecs.update(fit_steps=steps, **codecs)
  return cfg


@pytest.fixture(scope="module")
def fitted():
  """The default autoencoder fitted for 150 of its 600 steps."""
  return autoencoder_fit.fit(_fit_config(150), progress=False)


def test_the_fit_learns_to_reconstruct_the_shapes(fitted):
  vae, report = fitted
  untrained = ConvAutoencoder(autoencoder_fit.autoencoder_config(_fit_config(1).codecs), rngs=nnx.Rngs(0))
  images = np.stack([img for img in _held_out_images(64)])
  error = lambda ae: float(np.mean((np.asarray(ae.decode(ae.encode(images))) - images) ** 2))
  before, after = error(untrained), error(vae)
  # measured: 0.030 -> 0.0043 (7.0x) on held-out images; the full 600-step fit reaches ~0.0015
  print(f"held-out reconstruction error {before:.4f} -> {after:.4f}, report {report}")
  assert after * 5 <= before
  # unit-variance latents for the transformer
  latents = np.asarray(vae.encode(images)) * vae.scaling_factor
  assert 0.8 < latents.std() < 1.25
  assert set(report) >= {"steps", "seconds", "reconstruction_mse", "latent_std", "reconstruction_score"}


def _held_out_images(count):
  from sana_jax.data import shapes
  source = shapes.ShapesSource(count, 32, seed=7)
  return [source[i]["image"].astype(np.float32) / 127.5 - 1.0 for i in range(count)]


def test_a_saved_autoencoder_reads_back_the_same_and_is_never_overwritten(fitted, tmp_path):
  vae, report = fitted
  folder = tmp_path / "autoencoder"
  autoencoder_fit.save(vae, report, folder)
  back, back_report = autoencoder_fit.load(folder)
  images = np.stack(_held_out_images(4))
  np.testing.assert_array_equal(np.asarray(back.decode(back.encode(images))), np.asarray(vae.decode(vae.encode(images))))
  assert back.scaling_factor == vae.scaling_factor and back_report == report
  with pytest.raises(FileExistsError, match="never overwritten"):
    autoencoder_fit.save(vae, report, folder)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["autoencoder"]  # no partial folder left


def test_reading_a_run_never_fits_and_names_a_missing_or_unreadable_autoencoder(fitted, tmp_path, monkeypatch):
  monkeypatch.setattr(autoencoder_fit, "fit", lambda *a, **k: pytest.fail("a reader must not fit"))
  cfg = _fit_config(600)
  with pytest.raises(CheckpointError, match="fitted autoencoder is missing"):
    loop.build_codecs(cfg, tmp_path, allow_fit=False)
  autoencoder_fit.save(*fitted, tmp_path / "autoencoder")
  ae, _ = loop.build_codecs(cfg, tmp_path, allow_fit=False)
  assert ae.scaling_factor == fitted[0].scaling_factor
  (tmp_path / "autoencoder" / "autoencoder.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="cannot read autoencoder.json"):
    loop.build_codecs(cfg, tmp_path)


def test_an_autoencoder_of_other_settings_is_refused_naming_them(fitted, tmp_path):
  autoencoder_fit.save(*fitted, tmp_path / "autoencoder")
  cfg = _fit_config(600, fit_latent_channels=8)
  cfg.model.update(in_channels=8, out_channels=8)
  with pytest.raises(ValueError, match="latent_channels: saved 16 vs config 8"):
    loop.build_codecs(cfg, tmp_path)


@pytest.mark.parametrize("change, message", [
    (dict(model_channels=48), "makes 16 latent channels but model.in_channels is 48"),
    (dict(fit_widths=(16, 32)), "make a 2x autoencoder but codecs.autoencoder_factor is 4"),
])
def test_inconsistent_settings_stop_before_a_minute_of_fitting(change, message, monkeypatch):
  monkeypatch.setattr(autoencoder_fit, "fit", lambda *a, **k: pytest.fail("fitted before checking"))
  cfg = _fit_config(600)
  if "model_channels" in change:
    cfg.model.update(in_channels=change["model_channels"], out_channels=change["model_channels"])
  else:
    cfg.codecs.update(**change)
  with pytest.raises(ValueError, match=message):
    loop.build_codecs(cfg)


def _conv_fit_micro_config(**train):
  cfg = micro_config(**train)
  cfg.codecs.update(autoencoder="conv_fit", fit_steps=4, fit_batch_size=4, fit_widths=(8, 16, 16),
                    fit_latent_channels=4)
  cfg.model.update(in_channels=4, out_channels=4)
  return cfg


def test_a_run_fits_once_resumes_with_the_same_autoencoder_and_samples_with_it(tmp_path, monkeypatch):
  fits = []
  real_fit = autoencoder_fit.fit
  monkeypatch.setattr(autoencoder_fit, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
  loop.train_and_evaluate(_conv_fit_micro_config(num_steps=2), tmp_path)
  meta = json.loads((tmp_path / "autoencoder" / "autoencoder.json").read_text())
  assert fits == [1] and meta["fit"]["steps"] == 4 and meta["config"]["latent_channels"] == 4
  loop.train_and_evaluate(_conv_fit_micro_config(num_steps=4), tmp_path)  # resumes at step 2
  assert fits == [1]
  parts, suggested = convert_pipeline.pipeline_parts(str(tmp_path))
  assert parts["vae"].scaling_factor == meta["config"]["scaling_factor"] and suggested["training_step"] == 4


def test_a_run_started_from_a_run_keeps_that_runs_autoencoder(tmp_path, monkeypatch):
  base = tmp_path / "base"
  loop.train_and_evaluate(_conv_fit_micro_config(num_steps=2), base)
  monkeypatch.setattr(autoencoder_fit, "fit", lambda *a, **k: pytest.fail("a fine-tune fitted its own"))
  loop.train_and_evaluate(_conv_fit_micro_config(num_steps=2, init_from=str(base)), tmp_path / "tuned")
  saved = json.loads((base / "autoencoder" / "autoencoder.json").read_text())
  copied = json.loads((tmp_path / "tuned" / "autoencoder" / "autoencoder.json").read_text())
  assert copied["config"] == saved["config"] and copied["fit"]["copied_from"] == str(base / "autoencoder")
