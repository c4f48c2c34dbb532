"""The training loop end to end on a minute-sized config: artifacts, and each way a rerun or a
fault could lose a run (issue 14): a changed config, a second run, unreadable checkpoints, a
failed write, a NaN, a stop signal. The step compiles once per module (persistent cache)."""
import errno
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sana_jax.training import checkpointing, host, loop, resume
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


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Reruns in this module hit the persistent compilation cache instead of compiling again."""
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  return workdir, loop.train_and_evaluate(micro_config(), str(workdir))


def _copy(finished_run, tmp_path):
  shutil.copytree(finished_run[0], tmp_path / "run")
  return tmp_path / "run"


def _snapshot(workdir):
  return {str(p.relative_to(workdir)): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


def _steps(workdir):
  return [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_checkpoints_logs_labelled_samples_and_scores(finished_run):
  workdir, summary = finished_run
  assert summary["step"] == 4 and summary["saved"] == 4
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 4
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert sorted(os.listdir(workdir / "samples")) == ["eval_step_0000004.png", "step_0000002.png",
                                                     "step_0000004.png"]
  assert not (workdir / "train.lock").exists()
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  assert {"loss", "learning_rate", "grad_norm", "step_time", "images_per_sec",
          "tflops_per_device"} <= set(lines[0])
  score = json.loads((workdir / "eval.json").read_text())
  assert 0.0 <= score["overall"] <= 1.0 and summary["shapes_score"] == score
  assert sum(summary["shapes_counts"].values()) == 8


def test_best_of_n_fits_the_judge_once_scores_the_picks_and_refuses_a_judge_of_another_size(finished_run, tmp_path):
  """sampling.eval_best_of: N candidates per held-out prompt, the first the one-sample image, the
  run's contrastive judge (fitted once, kept in <workdir>/judge) keeps one; the picks are scored."""
  workdir = _copy(finished_run, tmp_path)
  cfg = micro_config(num_steps=4)  # the run is finished: only the final evaluation runs
  cfg.sampling.update(eval_best_of=3, eval_judge_steps=5)
  summary = loop.train_and_evaluate(cfg, str(workdir))
  best = summary["best_of"]
  assert best["n"] == 3 and sum(best["shapes_counts"].values()) == 8
  assert json.loads((workdir / "eval_best_of.json").read_text()) == best["shapes_score"]
  assert (workdir / "samples" / "eval_best_of_3_step_0000004.png").is_file()
  assert summary["shapes_score"] == json.loads((workdir / "eval.json").read_text())
  judge_files = _snapshot(workdir / "judge")
  assert "judge.json" in judge_files
  again = loop.train_and_evaluate(cfg, str(workdir))  # the saved judge, not a new fit
  assert _snapshot(workdir / "judge") == judge_files and again["best_of"] == best
  cfg.data.image_size = 32
  shutil.rmtree(workdir / "checkpoints")  # a fresh 32 px run in the same workdir (no resume check)
  (workdir / "config.json").unlink()
  with pytest.raises(ValueError, match=r"judges 24px images but the run draws 32px ones"):
    loop.train_and_evaluate(cfg, str(workdir))


@pytest.mark.parametrize("section,field,value", [("model", "hidden_size", 64), ("model", "depth", 2),
                                                  ("model", "linear_head_dim", 16),
                                                  ("optimizer", "name", "came")])
def test_a_changed_architecture_or_optimiser_stops_before_writing_anything(finished_run, section, field, value):
  workdir, _ = finished_run
  before = _snapshot(workdir)
  cfg = micro_config(num_steps=6)
  cfg[section][field] = value
  with pytest.raises(resume.ResumeError, match=rf"(?s){section}\.{field}: .* \(saved\) -> .*init_from="):
    loop.train_and_evaluate(cfg, str(workdir))
  assert _snapshot(workdir) == before


def test_a_second_run_on_a_workdir_in_use_is_refused(finished_run):
  workdir, _ = finished_run
  before = _snapshot(workdir)
  held = resume.WorkdirLock(workdir).acquire()
  try:
    with pytest.raises(resume.ResumeError, match="in use by another training run"):
      loop.train_and_evaluate(micro_config(num_steps=6), str(workdir))
    assert (workdir / "train.lock").exists()
  finally:
    held.release()
  assert _snapshot(workdir) == before


def test_all_checkpoints_unreadable_stops_naming_each_step(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  for step in ("2", "4"):
    for f in (workdir / "checkpoints" / step / "state").rglob("*"):
      if f.is_file():
        f.write_bytes(b"\x00")
  with pytest.raises(checkpointing.CheckpointError, match=r"(?s)step 4: .*step 2: "):
    loop.train_and_evaluate(micro_config(num_steps=6), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_fallback_then_saves_cut_metrics_and_take_over_a_stale_lock(finished_run, tmp_path, capsys):
  """Newest checkpoint unreadable, a torn metrics line, a lock left by a killed run: the rerun
  restores step 2, moves step 4 aside, saves steps 4 and 6 again and logs each step once."""
  workdir = _copy(finished_run, tmp_path)
  for f in (workdir / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00")
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "lo')
  (workdir / "train.lock").write_text(json.dumps({"host": __import__("socket").gethostname(),
                                                  "pid": 2 ** 22 + 1, "since": "before"}))
  cfg = micro_config(num_steps=6, sample_every=0)
  cfg.sampling.num_eval_images = 0
  summary = loop.train_and_evaluate(cfg, str(workdir))
  out = capsys.readouterr().out
  assert summary["step"] == 6 and "at step 2" in out and "taking over the lock" in out
  assert "resume: train.num_steps 4 -> 6" in out and "resume: train.sample_every 2 -> 0" in out
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "unreadable"]
  assert os.listdir(workdir / "checkpoints" / "unreadable") == ["4"]
  assert _steps(workdir) == [1, 2, 3, 4, 5, 6]
  assert not (workdir / "train.lock").exists()


def test_a_failed_write_stops_the_run_at_once_naming_the_newest_good_step(finished_run, tmp_path,
                                                                          monkeypatch):
  """A full disk, injected into the asynchronous write of step 6."""
  workdir = _copy(finished_run, tmp_path)

  async def full_disk(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
  cfg = micro_config(num_steps=10, checkpoint_every=6, sample_every=0)
  cfg.sampling.num_eval_images = 0
  with pytest.raises(checkpointing.CheckpointError, match=r"No space left.*newest checkpoint on disk is step 4"):
    loop.train_and_evaluate(cfg, str(workdir))
  assert max(_steps(workdir)) <= 7  # reported at the first log step after the failed write
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # no partial folder left
  assert not (workdir / "train.lock").exists()


def test_a_stop_signal_saves_the_current_step_and_reports_it(finished_run, tmp_path, monkeypatch):
  workdir = _copy(finished_run, tmp_path)
  checks = []

  class SignalAtStep6(host.StopSignals):
    @property
    def requested(self):
      checks.append(1)
      return "SIGTERM" if len(checks) > 2 else None

    @requested.setter
    def requested(self, value):
      pass
  monkeypatch.setattr(host, "StopSignals", SignalAtStep6)
  summary = loop.train_and_evaluate(micro_config(num_steps=10, sample_every=0), str(workdir))
  assert summary == {"step": 6, "stopped": "SIGTERM", "saved": 6, "workdir": str(workdir)}
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]


def test_non_finite_loss_stops_naming_the_step_and_only_finite_checkpoints_remain(tmp_path):
  """checkpoint_every=1 with an exploding learning rate: every kept checkpoint is finite, and the
  one whose weights produced the NaN is moved aside, so a rerun does not NaN at once."""
  cfg = micro_config(num_steps=8, checkpoint_every=1, sample_every=0)
  cfg.optimizer.update(learning_rate=1e12)
  with pytest.raises(loop.TrainingDiverged, match=r"loss is (nan|inf) at step (\d+)") as err:
    loop.train_and_evaluate(cfg, str(tmp_path))
  bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  if kept:
    assert kept[-1] == bad_step - 2 and f"last good checkpoint is step {bad_step - 2}" in str(err.value)
  assert os.listdir(tmp_path / "checkpoints" / "nonfinite") == [str(bad_step - 1)]
  for step in kept:
    meta = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(meta["params"]))


def test_training_starts_from_a_grown_checkpoint_with_fresh_optimiser_state(tmp_path):
  """`train.init_from` takes the weights of a checkpoint (here: grown 1 -> 2 blocks) at step 0."""
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
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(nnx.state(grown, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  cfg.model.depth = 3
  with pytest.raises(ValueError, match="does not match model config"):
    train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))


def test_a_rerun_with_fewer_steps_than_done_trains_nothing_and_writes_nothing_new(finished_run, tmp_path,
                                                                                 capsys):
  workdir = _copy(finished_run, tmp_path)
  cfg = micro_config(num_steps=2)
  cfg.sampling.update(num_images=0, num_eval_images=0)
  summary = loop.train_and_evaluate(cfg, str(workdir))
  assert summary["step"] == 4 and summary["saved"] == 4 and "nothing to train" in capsys.readouterr().out
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"] and _steps(workdir) == [1, 2, 3, 4]
