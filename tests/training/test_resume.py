"""Resume rules, the workdir lock and the metrics log cut back (no JAX compile: seconds)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from sana_jax import configs
from sana_jax.optim.registry import build_optimizer
from sana_jax.training import resume, train_state
from tests.training.helpers import tiny_config


def _dict(cfg):
  return json.loads(cfg.to_json())


@pytest.mark.parametrize("section,field,value", [
    ("model", "hidden_size", 96), ("model", "depth", 3), ("model", "linear_head_dim", 16),
    ("optimizer", "name", "came"), ("codecs", "max_text_length", 8)])
def test_a_change_that_shapes_or_interprets_the_weights_stops_listing_the_field(section, field, value):
  saved, requested = tiny_config(), tiny_config()
  requested[section][field] = value
  with pytest.raises(resume.ResumeError) as err:
    resume.check_resume(_dict(saved), _dict(requested), "/w", 40)
  text = str(err.value)
  assert f"{section}.{field}" in text and "(saved)" in text and "checkpoint step 40" in text
  assert "--config.train.init_from=/w" in text and "new --workdir" in text


@pytest.mark.parametrize("name,other", [("codecs.scaling_factor", 5.75), ("model.prediction", "x0"),
                                        ("codecs.fit_latent_channels", 8), ("model.pooled_caption", True),
                                        ("codecs.text_context", 2)])
def test_a_run_saved_before_a_field_existed_resumes_with_the_value_it_used(name, other):
  section, field = name.split(".")
  used = resume.FIELDS_ADDED_LATER[name]  # 1.0 / "velocity" / 16 / False: what such runs trained with
  saved, requested = _dict(tiny_config()), tiny_config()
  del saved[section][field]
  filled = resume.with_fields_added_later(saved)  # what the workdir reader builds its config from
  assert filled[section][field] == used and field not in saved[section]
  requested[section][field] = used
  assert resume.check_resume(saved, _dict(requested), "/w", 40) == []
  requested[section][field] = other
  with pytest.raises(resume.ResumeError, match=rf"{name}: {used!r} \(saved\) -> {other!r}".replace(".", r"\.")):
    resume.check_resume(saved, _dict(requested), "/w", 40)


def test_loop_settings_change_with_one_notice_each():
  saved, requested = tiny_config(), tiny_config()
  requested.optimizer.learning_rate = 3e-4
  requested.train.update(batch_size=16, num_steps=9000, log_every=10, checkpoint_every=100)
  requested.sampling.num_steps = 4
  requested.model.remat_policy = "full"
  notices = resume.check_resume(_dict(saved), _dict(requested), "/w", 40)
  assert len(notices) == 7 and all(n.startswith("resume: ") for n in notices)
  assert "resume: optimizer.learning_rate 0.003 -> 0.0003" in notices


def test_a_train_state_layout_change_stops_even_when_no_stop_field_changed():
  """EMA switched on adds a copy of the weights to the saved state."""
  saved, requested = tiny_config(), tiny_config(ema_decay=0.99)
  layouts = [train_state.abstract_train_state(c, build_optimizer(c.optimizer)) for c in (saved, requested)]
  differs = resume.describe_layout_difference(*layouts)
  assert "ema_params" in differs
  with pytest.raises(resume.ResumeError, match=r"train\.ema_decay: 0\.0 \(saved\) -> 0\.99"):
    resume.check_resume(_dict(saved), _dict(requested), "/w", 40, differs)
  assert resume.describe_layout_difference(layouts[0], layouts[0]) == ""


def test_the_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
  lock = resume.WorkdirLock(tmp_path).acquire()
  with pytest.raises(resume.ResumeError, match=rf"in use by another training run \(pid {os.getpid()} on this host"):
    resume.WorkdirLock(tmp_path).acquire()
  lock.release()
  assert not (tmp_path / "train.lock").exists()
  resume.WorkdirLock(tmp_path).acquire().release()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / "train.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                   "since": "earlier"}))
  lock = resume.WorkdirLock(tmp_path).acquire()
  assert f"pid {dead.pid}" in lock.notice and "stopped run" in lock.notice
  assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
  lock.release()


def test_a_lock_from_another_host_refuses_and_says_which(tmp_path):
  (tmp_path / "train.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "t"}))
  with pytest.raises(resume.ResumeError, match="on host elsewhere .* delete"):
    resume.WorkdirLock(tmp_path).acquire()


def test_metrics_are_cut_back_to_the_resumed_step_and_a_torn_line_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4))
                  + '{"step": 5, "lo')
  assert resume.cut_metrics(str(path), 2) == 3
  assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
  assert resume.cut_metrics(str(path), 2) == 0 and resume.cut_metrics(str(tmp_path / "none"), 0) == 0


def test_a_fifth_round_default_workdir_stops_naming_the_autoencoder_it_was_trained_on():
  """Its pixels-as-latents run cannot continue on the fitted autoencoder's latents."""
  saved = _dict(configs.get_config("tiny"))
  saved["codecs"].update(autoencoder="space_to_depth", scaling_factor=5.75)
  saved["model"].update(in_channels=48, out_channels=48)
  for field in [k for k in resume.FIELDS_ADDED_LATER if k.startswith("codecs.fit_")]:
    del saved["codecs"][field.split(".")[1]]
  with pytest.raises(resume.ResumeError) as err:
    resume.check_resume(saved, _dict(configs.get_config("tiny")), "/w", 2400)
  assert "codecs.autoencoder: 'space_to_depth' (saved) -> 'conv_fit'" in str(err.value)
  assert "codecs.fit_" not in str(err.value)  # absent fields read as the values such runs had
