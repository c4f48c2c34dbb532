"""The training loop end to end on a minute-sized config: artifacts, resume, divergence stop."""
import json
import os

import pytest

from sana_jax.training import loop
from tests.training.helpers import tiny_config


def micro_config(**train):
  """Smallest config the loop accepts: 24 px shapes -> 6x6x48 latents, one block of width 32."""
  cfg = tiny_config()
  cfg.model.update(in_channels=48, out_channels=48, hidden_size=32, depth=1, cross_num_heads=1,
                   cross_head_dim=32, caption_channels=16)
  cfg.codecs.update(max_text_length=8)
  cfg.data.update(image_size=24, shapes_num_examples=64, num_threads=1, prefetch_buffer_size=1)
  cfg.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=0)
  cfg.train.update({"batch_size": 8, "num_steps": 4, "log_every": 1, "checkpoint_every": 2,
                    "sample_every": 2, **train})
  cfg.mesh.update(data=-1, fsdp=1, tensor=1)
  cfg.sampling.update(num_steps=2, num_images=8, num_eval_images=8, guidance_scale=2.0)
  return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  return workdir, loop.train_and_evaluate(micro_config(), str(workdir))


def test_run_writes_checkpoints_logs_samples_and_scores(finished_run):
  workdir, summary = finished_run
  assert summary["step"] == 4
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 4
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert sorted(os.listdir(workdir / "samples")) == ["step_0000002.png", "step_0000004.png"]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  assert {"loss", "learning_rate", "grad_norm", "step_time", "images_per_sec",
          "tflops_per_device"} <= set(lines[0])
  score = json.loads((workdir / "eval.json").read_text())
  assert 0.0 <= score["overall"] <= 1.0 and summary["shapes_score"] == score


@pytest.mark.slow  # a second compile of the step and the sampler; the kill -9 test covers resume too
def test_rerun_resumes_from_the_newest_checkpoint(finished_run, capsys):
  workdir, _ = finished_run
  cfg = micro_config(num_steps=5)
  cfg.sampling.num_eval_images = 0
  summary = loop.train_and_evaluate(cfg, str(workdir))
  assert summary["step"] == 5
  assert "at step 4" in capsys.readouterr().out
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = micro_config(num_steps=6, checkpoint_every=1, sample_every=0)
  cfg.optimizer.update(learning_rate=1e12)
  with pytest.raises(loop.TrainingDiverged, match=r"loss is (nan|inf) at step (\d+)") as err:
    loop.train_and_evaluate(cfg, str(tmp_path))
  bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert kept[-1] == bad_step - 1 and f"step {bad_step - 1}" in str(err.value)


def test_training_starts_from_a_grown_checkpoint_with_fresh_optimiser_state(tmp_path):
  """`train.init_from` takes the weights of a checkpoint (here: grown 1 -> 2 blocks) at step 0."""
  import numpy as np
  from flax import nnx
  from sana_jax.convert.checkpoints import save_transformer
  from sana_jax.optim.registry import build_optimizer
  from sana_jax.scaling.growth import grow
  from sana_jax.training import train_state

  cfg = micro_config()
  source = train_state.build_model(cfg.model, 0)
  grown = grow(source, 2, strategy="constant")
  save_transformer(grown, tmp_path / "grown")
  cfg.model.depth = 2
  cfg.train.init_from = str(tmp_path / "grown")
  _, state, _ = train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))
  assert int(state.step) == 0
  for got, want in zip(jax_leaves(state.params), jax_leaves(nnx.state(grown, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  cfg.model.depth = 3
  with pytest.raises(ValueError, match="does not match model config"):
    train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)
