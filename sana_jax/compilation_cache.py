"""JAX's persistent compilation cache, on by default for the CLIs and SanaPipeline.

XLA compiles every program (the whole sampling loop, the decoder, a train step) the first time a
process runs it; with the cache the compiled executables are written to a folder and a later
process with the same programs loads them instead of compiling again. Where the folder is, first
match wins:

1. `enable(path)` called with a path (the CLIs pass their `--compilation_cache` flag);
2. the environment variable SANA_JAX_COMPILATION_CACHE;
3. a folder the user already gave JAX itself (JAX_COMPILATION_CACHE_DIR / jax.config);
4. $XDG_CACHE_HOME/sana_jax/jax, else ~/.cache/sana_jax/jax.

"off" (or "none", "0", "false") at 1 or 2 switches the cache off for the process. Entries are keyed
by the program, the jax/XLA version and the devices, so a stale entry is never used.

jax is imported inside the functions: importing this module (which defines the CLIs' flag) stays
cheap for a CLI's --help.
"""
import os

from absl import flags

ENV_VAR = "SANA_JAX_COMPILATION_CACHE"
OFF = ("off", "none", "0", "false")
# Programs that compile faster than this are not written (JAX's default is 1 s).
MIN_COMPILE_SECONDS = 0.0

flags.DEFINE_string("compilation_cache", None,
                    f"Folder of JAX's persistent compilation cache, or 'off'. Default: ${ENV_VAR}, "
                    "else ~/.cache/sana_jax/jax (XDG_CACHE_HOME respected).")


def default_dir():
  """$XDG_CACHE_HOME/sana_jax/jax, else ~/.cache/sana_jax/jax."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sana_jax", "jax")


def _choice(path):
  if path is None and flags.FLAGS.is_parsed():
    path = flags.FLAGS.compilation_cache
  if path is None:
    path = os.environ.get(ENV_VAR)
  if path is None:
    import jax
    path = jax.config.jax_compilation_cache_dir or default_dir()
  return os.fspath(path)


def enable(path=None):
  """Turns the persistent compilation cache on at `path` (default: see the module docstring).

  Returns the folder in use, or None when the cache is switched off. Safe to call more than once.
  """
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  path = _choice(path)
  if path.strip().lower() in OFF:
    if current() is not None:
      jax_cache.reset_cache()  # JAX opens its cache once; make it look at the settings again
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the compilation cache folder {path} ({e}); set "
                     f"--compilation_cache or ${ENV_VAR} to another folder, or to 'off'") from None
  if current() != path:
    jax_cache.reset_cache()
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path


def current():
  """The folder the persistent cache writes to now, or None when it is off."""
  import jax
  if not jax.config.jax_enable_compilation_cache:
    return None
  return jax.config.jax_compilation_cache_dir
