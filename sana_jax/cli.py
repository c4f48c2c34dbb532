"""The one wrapper every `python -m sana_jax.<tool>` runs under: `cli.run(main)`.

- `--help` / `--helpfull` print the flags and exit 0.
- Log lines below WARNING (Orbax, absl, Grain) are silenced unless `--verbosity` / `-v` is given;
  Orbax's error records are cut to one line each (no TensorStore spec dumps) unless `--debug`.
- A user mistake (a missing or malformed path, a bad flag value, a config that does not fit, an
  empty prompts file) prints one line `error: ...` and exits 2; a run that fails for another
  stated reason (a diverged loss, a failed checkpoint write) prints its message and exits 1. The
  traceback is printed only under `--debug`.
- `--config` takes a config file (`configs/tiny.py`) or a preset name (`tiny`,
  `SanaMS1.5_4800M_P1_D60`, see `sana_jax.configs.NAMED_CONFIGS`) in every tool:
  `DEFINE_config_file` flags (train, plan; `--config.a.b=v` overrides work with either) and
  `DEFINE_config` flags (convert, grow, prune: the value becomes a ConfigDict).
"""
import importlib.util
import logging as py_logging
import os
import sys
import traceback

from absl import app, flags, logging

flags.DEFINE_bool("debug", False, "Print the full traceback of an error.")

# Errors that come from what the user gave (paths, formats, values): one line, exit 2.
USER_ERRORS = (OSError, ValueError, KeyError, app.UsageError, flags.Error)
_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")
_VERBOSE = ("--verbosity", "-verbosity", "-v", "--v")


class RunFailed(RuntimeError):
  """A failure the tool explains itself (exit 1, no traceback unless --debug)."""


def load_config(value: str):
  """A job ConfigDict from a config file path (`path.py` or `path.py:arg`) or a preset name."""
  from sana_jax import configs
  path, _, arg = value.partition(":")
  if path.endswith(".py") or os.path.sep in path:
    if not os.path.isfile(path):
      raise ValueError(f"--config: no config file {path!r} (give a configs/*.py file or one of "
                       f"the preset names {sorted(configs.NAMED_CONFIGS)})")
    spec = importlib.util.spec_from_file_location("_sana_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  try:
    return configs.get_config(value)
  except ValueError as e:
    raise ValueError(f"--config: {e}, or a config file path") from None


class _ConfigParser(flags.ArgumentParser):
  syntactic_help = "a config file or a preset name"

  def parse(self, argument):
    if argument is None or not isinstance(argument, str):
      return argument
    return load_config(argument)

  def flag_type(self):
    return "config"


def DEFINE_config(name: str, help_text: str):  # noqa: N802 - absl's naming
  """A `--name` flag whose value (a config file or a preset name) parses into a job ConfigDict."""
  return flags.DEFINE(_ConfigParser(), name, None, help_text, serializer=flags.ArgumentSerializer())


def _preset_to_file(argv: list[str]) -> list[str]:
  """`--config=tiny` -> `--config=<package>/configs/tiny.py` for DEFINE_config_file flags."""
  from sana_jax import configs
  flag = flags.FLAGS["config"] if "config" in flags.FLAGS else None
  if flag is None or isinstance(flag.parser, _ConfigParser):
    return argv
  out = list(argv)
  for i, arg in enumerate(out):
    value, prefix = None, None
    if arg.startswith("--config="):
      prefix, value = "--config=", arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(out):
      prefix, value, i = "", out[i + 1], i + 1
    if value is None:
      continue
    name, sep, rest = value.partition(":")
    if os.path.isfile(name) or name not in configs.NAMED_CONFIGS:
      if not os.path.isfile(name):
        load_config(value)  # raises the one-line error naming the choices
      continue
    module = configs.NAMED_CONFIGS[name]
    out[i] = prefix + os.path.join(os.path.dirname(configs.__file__), f"{module}.py") + sep + rest
  return out


def _say(message: str, code: int, debug: bool):
  if debug:
    traceback.print_exc()
  print(f"error: {message}", file=sys.stderr, flush=True)
  if not debug:
    print("(run with --debug for the traceback)", file=sys.stderr, flush=True)
  sys.exit(code)


class OneLinePerProblem(py_logging.Filter):
  """Orbax / TensorStore log records cut to their first line (no spec dumps, no tracebacks),
  each distinct line once."""

  def __init__(self):
    super().__init__()
    self._seen = set()

  def filter(self, record):
    if "orbax" not in record.pathname and "tensorstore" not in record.pathname:
      return True
    text = record.getMessage()
    for cut in (" [tensorstore_spec=", " See full TensorStore details", "\n"):
      text = text.split(cut)[0]
    text = text[:300]
    if text in self._seen:
      return False
    self._seen.add(text)
    record.msg, record.args, record.exc_info, record.exc_text = text, (), None, None
    return True


def _quiet():
  logging.set_verbosity(logging.WARNING)
  for name in ("absl", "orbax", "jax._src.distributed", "grain"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)
  py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)  # "Event loop is closed" echoes


def run(main, user_errors=()):
  """absl.app.run(main) with the behaviour in the module docstring.

  user_errors: extra exception types that count as user mistakes (exit 2).
  """
  argv = list(sys.argv)
  debug = "--debug" in argv
  verbose = any(a.split("=")[0] in _VERBOSE for a in argv)
  app.define_help_flags()
  try:
    argv = _preset_to_file(argv)
    rest = flags.FLAGS(argv)
  except SystemExit as e:
    sys.exit(0 if any(a.split("=")[0] in _HELP for a in argv) and e.code == 1 else e.code)
  except (flags.Error, ValueError, OSError) as e:
    _say(str(e).splitlines()[0] if not debug else str(e), 2, debug)

  def wrapped(args):
    if not debug:
      logging.get_absl_handler().addFilter(OneLinePerProblem())
      sys.unraisablehook = _without_closed_loop_echoes(sys.unraisablehook)
    if not verbose:
      _quiet()
    try:
      main(args)
    except (RunFailed, *_failures()) as e:
      _say(str(e), 1, debug)
    except (*USER_ERRORS, *user_errors) as e:
      _say(_describe(e), 2, debug)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(130)
    except Exception as e:  # noqa: BLE001 - safetensors' format errors have no Python base class
      if type(e).__name__ != "SafetensorError":
        raise
      _say(str(e), 2, debug)

  app.run(wrapped, argv=argv, flags_parser=lambda _: rest)


def _without_closed_loop_echoes(hook):
  """Drops `Event loop is closed` reports of Orbax's background coroutines collected after their
  loop ended (echoes of a failure already reported); everything else goes to `hook`."""
  def filtered(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
      return
    hook(unraisable)
  return filtered


def _failures():
  """Failures with a message of their own: exit 1."""
  from sana_jax.training import checkpointing, loop
  return (checkpointing.CheckpointError, loop.TrainingDiverged, loop.Interrupted)


def _describe(e: BaseException) -> str:
  if isinstance(e, KeyError):
    return f"missing key {e}"
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return str(e) or type(e).__name__
