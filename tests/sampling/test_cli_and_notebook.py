"""`python -m sana_jax.sample` (diffusers folder and training workdir) and the Colab notebook, run on
tiny checkpoints."""
import json
import pathlib

import nbformat
import numpy as np
import pytest
from absl import flags
from nbclient import NotebookClient
from PIL import Image

from sana_jax import configs
from sana_jax import sample
from sana_jax.optim.registry import build_optimizer
from sana_jax.training import autoencoder_fit, checkpointing, train_state

NOTEBOOK = pathlib.Path(__file__).parents[2] / "notebooks" / "colab_tpu_sampling.ipynb"
PROMPTS = ["A cat sleeping on a red sofa", "two dogs running"]


def run_cli(*args):
  """Runs sample.main in-process with fresh flag values."""
  argv = ["sample", *args]
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    sample.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()


def test_cli_writes_the_pipeline_images_and_every_setting(tiny_folder, tiny_pipe, tmp_path):
  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text(f"{PROMPTS[1]}\n\n")
  out = tmp_path / "out"
  run_cli("--checkpoint", str(tiny_folder[0]), "--prompt", PROMPTS[0], "--prompts-file", str(prompts_file),
          "--out", str(out), "--height", "32", "--width", "64", "--num-inference-steps", "4",
          "--max-sequence-length", "16", "--seed", "4", "--sampler", "flow_euler",
          "--use_resolution_binning=false")
  settings = json.loads((out / "settings.json").read_text())
  assert [i["prompt"] for i in settings["images"]] == PROMPTS
  assert settings["use_resolution_binning"] is False and settings["sampler"] == "flow_euler" and settings["guidance_scale"] == 4.5
  assert settings["complex_human_instruction"] and settings["num_inference_steps"] == 4
  assert set(settings["timings"][0]) == {"text_encoder", "denoise", "decode", "total"}
  pngs = np.stack([np.asarray(Image.open(out / i["file"])) for i in settings["images"]])
  keys = ("height", "width", "num_inference_steps", "guidance_scale", "sampler", "use_resolution_binning",
          "complex_human_instruction", "max_sequence_length", "negative_prompt", "num_images_per_prompt")
  expected = tiny_pipe(PROMPTS, seed=4, output_type="np", **{k: settings[k] for k in keys}).images
  assert pngs.shape == (2, 32, 64, 3)
  np.testing.assert_array_equal(pngs, (expected * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def training_workdir(tmp_path_factory):
  """A `sana_jax.train` workdir of the tiny config with one checkpoint (initial weights, step 3) and
  its fitted autoencoder (a few steps of the fit)."""
  workdir = tmp_path_factory.mktemp("train_run")
  cfg = configs.get_config("tiny")
  cfg.codecs.update(fit_steps=3, fit_batch_size=4)
  autoencoder_fit.save(*autoencoder_fit.fit(cfg, progress=False), workdir / autoencoder_fit.FOLDER)
  (workdir / "config.json").write_text(cfg.to_json(indent=2))
  _, state, _ = train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))
  ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=1, async_save=False)
  ckpt.save(3, state, cfg, {})
  ckpt.close()
  return workdir


def test_cli_samples_a_training_run_with_its_codecs_and_sampling_config(training_workdir, tmp_path):
  run_cli("--checkpoint", str(training_workdir), "--prompt", "a red circle", "--num_images_per_prompt", "2",
          "--num-inference-steps", "2", "--out", str(tmp_path))
  settings = json.loads((tmp_path / "settings.json").read_text())
  cfg = configs.get_config("tiny")
  assert settings["checkpoint_settings"]["training_step"] == 3
  assert (settings["height"], settings["width"]) == (32, 32)  # 8 latent pixels x the autoencoder's 4
  assert settings["guidance_scale"] == cfg.sampling.guidance_scale
  assert settings["max_sequence_length"] == cfg.codecs.max_text_length
  assert settings["sampler"] == cfg.sampling.sampler and not settings["use_resolution_binning"]
  images = [np.asarray(Image.open(tmp_path / i["file"])) for i in settings["images"]]
  assert len(images) == 2 and images[0].shape == (32, 32, 3) and not np.array_equal(images[0], images[1])


def test_cli_best_of_n_keeps_the_judges_winner(training_workdir, tmp_path):
  run_cli("--checkpoint", str(training_workdir), "--prompt", "a red circle", "--best-of", "2", "--judge", "shapes",
          "--batch_size", "2", "--num-inference-steps", "2", "--out", str(tmp_path))
  ranking = json.loads((tmp_path / "ranking.json").read_text())
  (entry,) = ranking["prompts"]
  assert entry["seeds"] == [0, 1] and sorted(entry["ranking"]) == [0, 1]
  assert ranking["settings"]["best_of"] == 2 and ranking["settings"]["num_inference_steps"] == 2
  assert Image.open(tmp_path / entry["files"][0]).size == (32, 32)


def test_cli_without_prompts_is_a_usage_error(tiny_folder, tmp_path):
  with pytest.raises(Exception, match="at least one --prompt"):
    run_cli("--checkpoint", str(tiny_folder[0]), "--out", str(tmp_path))


def test_colab_notebook_converts_loads_and_samples_a_grid(tiny_folder, tmp_path, monkeypatch):
  params = dict(checkpoint=str(tiny_folder[0]), export_dir=str(tmp_path / "export"), dtype="float32",
                prompts=PROMPTS, images_per_prompt=2, height=32, width=64, num_inference_steps=2,
                max_sequence_length=16, use_resolution_binning=False)
  monkeypatch.setenv("SANA_NOTEBOOK_PARAMS", json.dumps(params))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  assert (tmp_path / "export" / "sana_pipeline.json").exists()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  pictures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(pictures) == 1  # the grid: 2 rows (prompts) x 2 columns (images per prompt)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "seed 1: 4 images (32, 64, 3)" in text
