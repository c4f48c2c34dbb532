"""How long a fresh process waits for XLA, with the persistent compilation cache cold and warm.

    python bench/compile_time.py [--size 256] [--steps 20] [--skip-plan]

1. Sampling: builds the small random pipeline of bench/sampling.py once, then starts fresh Python
   processes that load it with `SanaPipeline.from_pretrained` and time their first call (text
   encoder + the whole denoising loop + decode, everything compiled on that call) and their second
   (the same work, nothing to compile), plus JAX's own stage timers (tracing, lowering to MLIR,
   XLA compile, cache reads) summed over the process: with the cache off, with an empty cache
   folder (cold: the process compiles and writes), and again with the same folder (warm: a new
   process reads the executables back). Target: warm <= 15% of cold.
2. Training: the 4.8B train step (SanaMS1.5_4800M_P1_D60, full remat, 8 simulated devices,
   fsdp=8, batch 8 at 1024 px) AOT-compiled by `python -m sana_jax.plan`, cold then warm: the wall
   time of the whole command (imports and tracing included).
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time


def child(folder, size, steps):
  """Runs in the fresh process: load, first and second call; prints one JSON line."""
  import jax
  from sampling import PROMPTS

  durations = collections.Counter()  # JAX's own compile-stage timers, summed over the process
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kw: durations.update({event.rsplit("/", 1)[-1]: seconds}))
  start = time.perf_counter()
  from sana_jax.sampling.pipeline import SanaPipeline
  pipe = SanaPipeline.from_pretrained(folder)
  loaded = time.perf_counter()
  call = lambda: pipe(PROMPTS, height=size, width=size, num_inference_steps=steps,
                      use_resolution_binning=False, output_type="np")
  call()
  first = time.perf_counter()
  call()
  second = time.perf_counter()
  print(json.dumps(dict(load=loaded - start, first_call=first - loaded, second_call=second - first,
                        cache=pipe.compilation_cache,
                        split=pipe.last_timings, stages=dict(durations))))


def run_child(folder, cache, args):
  env = dict(os.environ, SANA_JAX_COMPILATION_CACHE=cache)
  out = subprocess.run([sys.executable, __file__, "--child", folder, "--size", str(args.size),
                        "--steps", str(args.steps)], env=env, check=True, capture_output=True,
                       text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def plan_seconds(cache):
  from sana_jax import configs
  config = os.path.join(os.path.dirname(configs.__file__), "sana15_4800m_p1_d60.py")
  env = dict(os.environ, SANA_JAX_COMPILATION_CACHE=cache)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "sana_jax.plan", f"--config={config}", "--mesh=fsdp=8",
                  "--batch_size=8", "--image_size=1024", "--config.model.remat_policy=full"],
                 env=env, check=True, capture_output=True)
  return time.perf_counter() - start


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", type=int, default=256)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--skip-plan", action="store_true", help="skip the 4.8B train-step compile")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    return child(args.child, args.size, args.steps)
  from sampling import build_small_pipeline  # puts the repository root on sys.path

  folder = tempfile.mkdtemp(prefix="sana_compile_")
  build_small_pipeline(folder)
  cache = tempfile.mkdtemp(prefix="sana_jax_cache_")
  print(f"small pipeline (bench/sampling.py), {len(os.listdir(folder))} parts, {args.size} px, "
        f"{args.steps} steps, CFG on; one fresh process per row; cache folder {cache}")
  rows = [("off", run_child(folder, "off", args)), ("cold", run_child(folder, cache, args)),
          ("warm", run_child(folder, cache, args))]
  for name, r in rows:
    split = ", ".join(f"{k} {r['split'][k]:.1f}" for k in ("text_encoder", "denoise", "decode"))
    stages = ", ".join(f"{k.replace('_duration', '')} {v:.1f}" for k, v in r["stages"].items())
    print(f"  cache {name:4s}: load {r['load']:5.1f} s, first call {r['first_call']:5.1f} s, "
          f"second call {r['second_call']:5.1f} s ({split}); JAX stages (s): {stages}")
  (_, cold), (_, warm) = rows[1:]
  xla = lambda r: r["stages"].get("backend_compile_duration", 0) + r["stages"].get(
      "cache_retrieval_time_sec", 0)
  trace = lambda r: (r["stages"].get("jaxpr_trace_duration", 0) +
                     r["stages"].get("jaxpr_to_mlir_module_duration", 0))
  print(f"first call, warm / cold: {warm['first_call'] / cold['first_call']:.1%} (target <= 15%); "
        f"wait (first - second call): cold {cold['first_call'] - cold['second_call']:.1f} s, "
        f"warm {warm['first_call'] - warm['second_call']:.1f} s")
  print(f"XLA compile + cache reads, warm / cold: {xla(warm):.1f} / {xla(cold):.1f} s = "
        f"{xla(warm) / xla(cold):.1%}; tracing + lowering (not cacheable): warm {trace(warm):.1f} s, "
        f"cold {trace(cold):.1f} s")
  if not args.skip_plan:
    plan_cache = tempfile.mkdtemp(prefix="sana_jax_cache_")
    cold_plan, warm_plan = plan_seconds(plan_cache), plan_seconds(plan_cache)
    print(f"4.8B train step AOT compile (python -m sana_jax.plan, fsdp=8, batch 8, 1024 px, full "
          f"remat; whole command): cold {cold_plan:.1f} s, warm {warm_plan:.1f} s "
          f"({warm_plan / cold_plan:.1%})")


if __name__ == "__main__":
  main()
