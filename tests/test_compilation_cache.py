"""The persistent compilation cache: where it goes, how it is switched off, and that a second
process reads what the first one wrote instead of compiling."""
import json
import os
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from sana_jax import compilation_cache

_CHILD = """
import json, jax, jax.numpy as jnp
from sana_jax import compilation_cache
path = compilation_cache.enable()
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
x = jnp.arange(64.0).reshape(8, 8)
jax.jit(lambda x: jnp.tanh(x @ x.T) * 3.0 + 1.0)(x).block_until_ready()
print(json.dumps(dict(path=path, hits=events.count("/jax/compilation_cache/cache_hits"))))
"""


@pytest.fixture
def restore_jax_cache_settings():
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs")
  saved = {name: getattr(jax.config, name) for name in names}
  yield
  jax_cache.reset_cache()  # drop the cache JAX may have opened on the test folder
  for name, value in saved.items():
    jax.config.update(name, value)


def test_default_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.default_dir() == str(tmp_path / "sana_jax" / "jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compilation_cache.default_dir().endswith(os.path.join(".cache", "sana_jax", "jax"))


def test_env_var_sets_the_folder_and_off_switches_it_off(monkeypatch, tmp_path,
                                                         restore_jax_cache_settings):
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
  assert compilation_cache.enable() == str(tmp_path / "c") == compilation_cache.current()
  assert (tmp_path / "c").is_dir()
  assert compilation_cache.enable(tmp_path / "d") == str(tmp_path / "d")  # explicit path wins
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.enable() is None and compilation_cache.current() is None


def test_a_folder_that_cannot_be_made_is_one_clear_error(tmp_path, restore_jax_cache_settings):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="cannot create the compilation cache folder"):
    compilation_cache.enable(blocker / "cache")


def test_a_second_process_reads_the_cache_instead_of_compiling(tmp_path):
  env = dict(os.environ, **{compilation_cache.ENV_VAR: str(tmp_path / "cache")})
  run = lambda: json.loads(subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True,
                                          capture_output=True, text=True).stdout.splitlines()[-1])
  first, second = run(), run()
  assert first["path"] == second["path"] == str(tmp_path / "cache")
  assert first["hits"] == 0 and second["hits"] >= 1
  assert os.listdir(tmp_path / "cache")
