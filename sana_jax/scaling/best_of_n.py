"""Inference-time scaling (SANA 1.5, section 2.4): sample N candidates per prompt, keep the judge's best.

  results = best_of_n(pipe_or_generate, prompts, n=32, judge=YesNoVLMJudge(folder), keep=1)
  save_best_of_n(results, "out/")          # winners as PNGs + ranking.json

`pipe_or_generate` is a `SanaPipeline` or any `generate(prompts: list[str], seeds: list[int]) -> images`
(uint8 [B, H, W, 3], or float in [-1, 1]). Candidate j of prompt p uses seed `seed + p * n + j`;
all (prompt, seed) pairs are generated in batches of exactly `batch_size` (the last one padded by
repeating its final pair), so a jitted generator compiles once. With a pipeline, candidate seed s
starts from `jax.random.normal(key(s), [1, h, w, C])`, the noise of `pipe(prompt, seed=s)`.
"""
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from sana_jax.scaling.judges import (CLIPScoreJudge, ShapesEvaluatorJudge, YesNoVLMJudge, as_judge,
                                     to_uint8)


@dataclasses.dataclass
class BestOfNResult:
  """One prompt's outcome; indices refer to candidates 0..N-1 (candidate j used seeds[j])."""
  prompt: str
  seeds: list
  winners: list
  ranking: list
  images: np.ndarray            # the winners' images, uint8 [keep, H, W, 3], best first
  details: dict
  candidates: np.ndarray | None = None  # every candidate, uint8 [N, H, W, 3], with keep_candidates

  def to_json(self) -> dict:
    return {"prompt": self.prompt, "seeds": self.seeds, "winners": self.winners,
            "winner_seeds": [self.seeds[i] for i in self.winners], "ranking": self.ranking,
            "ranking_seeds": [self.seeds[i] for i in self.ranking], "details": self.details}


def pipeline_generate_fn(pipe, height: int | None = None, width: int | None = None, **call_kwargs) -> Callable:
  """A `generate(prompts, seeds) -> uint8 images` over a `SanaPipeline`, one noise seed per image.

  call_kwargs go to the pipeline call (num_inference_steps, guidance_scale, sampler, ...). The default
  size is the model's native one; resolution binning is off unless asked for.
  """
  import jax
  import jax.numpy as jnp

  from sana_jax.sampling.pipeline import aspect_ratio_table, classify_height_width_bin

  cfg = pipe.transformer.cfg
  native = cfg.sample_size * pipe.vae_scale_factor
  height, width = int(height or native), int(width or native)
  call_kwargs.setdefault("use_resolution_binning", False)
  if call_kwargs["use_resolution_binning"]:
    latent_h, latent_w = classify_height_width_bin(height, width, aspect_ratio_table(cfg.sample_size))
  else:
    latent_h, latent_w = height, width
  shape = (1, latent_h // pipe.vae_scale_factor, latent_w // pipe.vae_scale_factor, cfg.in_channels)
  noise = jax.jit(jax.vmap(lambda s: jax.random.normal(jax.random.key(s), shape, jnp.float32)[0]))

  def generate(prompts, seeds):
    latents = noise(jnp.asarray(seeds, jnp.uint32))  # [B, h, w, C]
    images = pipe(list(prompts), height=height, width=width, latents=latents, output_type="np",
                  return_dict=False, **call_kwargs)  # float [B, H, W, 3] in [0, 1]
    return (np.asarray(images) * 255).round().astype(np.uint8)

  return generate


def _as_generate(pipe_or_generate):
  from sana_jax.sampling.pipeline import SanaPipeline
  if isinstance(pipe_or_generate, SanaPipeline):
    return pipeline_generate_fn(pipe_or_generate)
  if callable(pipe_or_generate):
    return pipe_or_generate
  raise TypeError(f"expected a SanaPipeline or a generate(prompts, seeds) callable, got {pipe_or_generate!r}")


def generate_candidates(generate: Callable, prompts: Sequence[str], n: int, *, batch_size: int = 8,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """-> (images uint8 [P, N, H, W, 3], seeds [P, N]); batches of exactly batch_size pairs."""
  pairs = [(p, seed + i * n + j) for i, p in enumerate(prompts) for j in range(n)]
  images = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)  # constant batch shape
    out = to_uint8(generate([p for p, _ in chunk], [s for _, s in chunk]))
    if out.shape[0] != batch_size:
      raise ValueError(f"generate returned {out.shape[0]} images for a batch of {batch_size}")
    images.append(out[:real])
  images = np.concatenate(images)
  seeds = np.asarray([s for _, s in pairs]).reshape(len(prompts), n)
  return images.reshape(len(prompts), n, *images.shape[1:]), seeds


def best_of_n(pipe_or_generate, prompts: str | Sequence[str], n: int, judge, keep: int = 1, *,
              batch_size: int = 8, seed: int = 0, keep_candidates: bool = False) -> list[BestOfNResult]:
  """For every prompt, generates n candidates and keeps the judge's best `keep` (module docstring).

  judge: an object with `select(images, prompt, keep)` (judges.py) or a `score_fn(images, prompt)`.
  """
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
  if n < 1 or not 1 <= keep <= n:
    raise ValueError(f"need n >= 1 and 1 <= keep <= n, got n={n}, keep={keep}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  judge = as_judge(judge)
  images, seeds = generate_candidates(_as_generate(pipe_or_generate), prompts, n, batch_size=batch_size,
                                      seed=seed)
  results = []
  for prompt, cands, cand_seeds in zip(prompts, images, seeds):
    sel = judge.select(cands, prompt, keep)
    results.append(BestOfNResult(prompt=prompt, seeds=[int(s) for s in cand_seeds], winners=list(sel.winners),
                                 ranking=list(sel.ranking), images=cands[list(sel.winners)],
                                 details=sel.details, candidates=cands if keep_candidates else None))
  return results


def save_best_of_n(results: Sequence[BestOfNResult], out_dir: str, settings: dict | None = None) -> str:
  """Writes `{prompt index:05d}_{rank}_seed{seed}.png` per winner and `ranking.json` (every prompt's
  seeds, winners, full ranking and judge details, plus `settings`). Returns the JSON path."""
  from PIL import Image
  os.makedirs(out_dir, exist_ok=True)
  report = []
  for i, r in enumerate(results):
    files = []
    for rank, (idx, image) in enumerate(zip(r.winners, r.images)):
      name = f"{i:05d}_{rank}_seed{r.seeds[idx]}.png"
      Image.fromarray(image).save(os.path.join(out_dir, name))
      files.append(name)
    report.append({**r.to_json(), "files": files})
  path = os.path.join(out_dir, "ranking.json")
  with open(path, "w") as f:
    json.dump({"settings": settings or {}, "prompts": report}, f, indent=2)
  return path


def selection_curve(scores, correct, max_n: int | None = None) -> dict:
  """How well a judge picks, measured against per-candidate verdicts.

  scores, correct: [P, N] (a judge's score and whether candidate j of prompt p is right). For
  N = 1, 2, 4, ... up to max_n (default: all N), "N=n" -> {"judge": accuracy of the judge's pick
  among the first n candidates, "oracle": share of prompts with a right one among them}; and
  "pair_auc": how often a right candidate outscores a wrong one of the same prompt (0.5 = chance;
  over the prompts that have both).
  """
  scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
  if scores.shape != correct.shape or scores.ndim != 2 or scores.size == 0:
    raise ValueError(f"scores and correct must be equal non-empty [P, N] arrays, got {scores.shape} and {correct.shape}")
  prompts, total = scores.shape
  max_n = total if max_n is None else int(max_n)
  if not 1 <= max_n <= total:
    raise ValueError(f"max_n must be in 1..{total}, got {max_n}")
  out, n = {}, 1
  while n <= max_n:
    pick = np.argmax(scores[:, :n], axis=1)
    out[f"N={n}"] = {"judge": float(correct[np.arange(prompts), pick].mean()),
                     "oracle": float(correct[:, :n].any(axis=1).mean())}
    n *= 2
  pairs = [(s[c][:, None] > s[~c][None, :]).mean() for s, c in zip(scores, correct) if c.any() and not c.all()]
  out["pair_auc"] = float(np.mean(pairs)) if pairs else None
  return out


JUDGES = ("vlm", "clip", "contrastive", "shapes")


def make_judge(spec: str, batch_size: int = 8):
  """A judge from a command-line spec: "vlm:FOLDER" (yes/no VLM, knockout), "clip:FOLDER" (CLIP score),
  "contrastive:FOLDER" (the shapes image-caption scorer, scaling/contrastive.py) or "shapes" (the
  shapes evaluator)."""
  kind, _, arg = spec.partition(":")
  if kind == "shapes" and not arg:
    return ShapesEvaluatorJudge()
  if kind in ("vlm", "clip", "contrastive") and arg:
    if not os.path.isdir(arg):
      raise FileNotFoundError(f"judge {spec!r}: {arg} is not a folder")
    if kind == "contrastive":
      from sana_jax.scaling import contrastive  # jax/flax: only when asked for
      return contrastive.load(arg)
    return YesNoVLMJudge(arg, batch_size=batch_size) if kind == "vlm" else CLIPScoreJudge(arg, batch_size=batch_size)
  raise ValueError(f"unknown judge {spec!r}; use 'vlm:FOLDER', 'clip:FOLDER', 'contrastive:FOLDER' or 'shapes'")


def run_best_of_n_cli(pipe_or_generate, prompts: Sequence[str], n: int, judge: str, out_dir: str, *,
                      keep: int = 1, batch_size: int = 8, seed: int = 0, settings: dict | None = None) -> str:
  """What `python -m sana_jax.sample --best-of N --judge SPEC` runs: best_of_n, then save_best_of_n.
  Returns the path of ranking.json."""
  results = best_of_n(pipe_or_generate, prompts, n, make_judge(judge), keep, batch_size=batch_size, seed=seed)
  settings = {**(settings or {}), "best_of": n, "judge": judge, "keep": keep, "batch_size": batch_size,
              "seed": seed}
  return save_best_of_n(results, out_dir, settings)
