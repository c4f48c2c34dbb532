"""Judges for best-of-N sampling: pick the best of a prompt's candidate images.

A judge has `select(images, prompt, keep) -> Selection`: the winners and a full ranking.
  PointwiseJudge        any `score_fn(images, prompt) -> [N] scores` (higher is better): the top `keep`.
  CLIPScoreJudge        CLIP score 100 * max(cos(image, text), 0) from a local transformers CLIP folder.
  ShapesEvaluatorJudge  the exact shapes evaluator (1 = the image satisfies its caption, else 0).
  YesNoVLMJudge         a vision-language model asked whether the image matches the prompt, every
                        image judged alone, winners found by a knockout tournament of pairs with the
                        NVILA verifier's rules (NVlabs/Sana tools/inference_scaling/nvila_sana_pick.py).
Images are uint8 [N, H, W, 3], or float in [-1, 1] (the pipeline's range).
"""
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from sana_jax.data import shapes_eval

# The NVILA-Lite-2B-Verifier prompt, as in NVlabs/Sana's nvila_sana_pick.py (wording and spacing kept,
# the model was trained with it).
NVILA_VERIFIER_PROMPT = (
    "You are an AI assistant specializing in image analysis and ranking. Your task is to analyze and "
    "compare image based on how well they match the given prompt.\nThe given prompt is:{prompt}. Please "
    "consider the prompt and the image to make a decision and response directly with 'yes' or 'no'.\n")


def to_uint8(images) -> np.ndarray:
  """[N, H, W, 3] uint8 from uint8, or from floats in [-1, 1] (per image: `shapes_eval.to_uint8`)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
  return np.stack([shapes_eval.to_uint8(image) for image in images])


@dataclasses.dataclass
class Selection:
  """winners: the kept candidate indices, best first; ranking: every index, best first;
  details: per-candidate judge outputs (scores, or verdicts and the round each candidate lost in)."""
  winners: list
  ranking: list
  details: dict


class PointwiseJudge:
  """Scores every candidate independently; the best `keep` scores win (ties: the earlier candidate)."""

  def __init__(self, score_fn: Callable[[np.ndarray, str], Sequence[float]], name: str = "score"):
    self.score_fn = score_fn
    self.name = name

  def scores(self, images, prompt: str) -> np.ndarray:
    scores = np.asarray(self.score_fn(images, prompt), np.float64).reshape(-1)
    if scores.shape[0] != len(images):
      raise ValueError(f"judge {self.name!r} returned {scores.shape[0]} scores for {len(images)} images")
    return scores

  def select(self, images, prompt: str, keep: int = 1) -> Selection:
    scores = self.scores(images, prompt)
    ranking = [int(i) for i in np.argsort(-scores, kind="stable")]
    return Selection(winners=ranking[:keep], ranking=ranking, details={self.name: scores.tolist()})


class ShapesEvaluatorJudge(PointwiseJudge):
  """The shapes dataset's exact evaluator as a judge: 1 when the image satisfies the caption, else 0."""

  def __init__(self):
    def score_fn(images, prompt):
      return [float(shapes_eval.evaluate_image(image, prompt)) for image in to_uint8(images)]

    super().__init__(score_fn, name="shapes_evaluator")


class CLIPScoreJudge(PointwiseJudge):
  """CLIP score, 100 * max(cos(image embedding, text embedding), 0), from a local CLIP folder."""

  def __init__(self, model_dir: str, batch_size: int = 32):
    import torch
    from transformers import CLIPModel, CLIPProcessor
    self.model = CLIPModel.from_pretrained(model_dir).eval()
    self.processor = CLIPProcessor.from_pretrained(model_dir)
    self.batch_size = batch_size
    self._torch = torch
    super().__init__(self._clip_scores, name="clip_score")

  def _clip_scores(self, images, prompt):
    torch = self._torch
    images = list(to_uint8(images))
    with torch.no_grad():
      text = self.processor(text=[prompt], return_tensors="pt", padding=True)
      text_emb = _unit(_features(self.model.get_text_features(**text)))
      out = []
      for start in range(0, len(images), self.batch_size):
        pixels = self.processor(images=images[start:start + self.batch_size], return_tensors="pt")
        image_emb = _unit(_features(self.model.get_image_features(pixel_values=pixels["pixel_values"])))
        out.append(100.0 * torch.clamp(image_emb @ text_emb[0], min=0.0))
    return torch.cat(out).numpy()


def _features(out):
  """transformers 5 may return a model output instead of a tensor from get_*_features."""
  return getattr(out, "pooler_output", out)


def _unit(x):
  return x / x.norm(dim=-1, keepdim=True)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One image judged alone: the answer (greedy first token, stripped) and the yes / no logits."""
  answer: str
  yes_logit: float
  no_logit: float


def first_wins(a: Verdict, b: Verdict) -> bool:
  """The NVILA verifier's pairwise rule: a 'yes' beats anything else; two equal answers: for 'yes' the
  higher yes-logit wins, otherwise the lower no-logit wins; exact ties and every other case go to b."""
  if a.answer == b.answer:
    if a.answer == "yes":
      return a.yes_logit > b.yes_logit
    return a.no_logit < b.no_logit
  return a.answer == "yes"


def knockout(verdicts: Sequence[Verdict], keep: int = 1) -> tuple[list, list]:
  """Knockout tournament over candidates 0..N-1, pairs (0, 1), (2, 3), ... each round, until `keep` remain.

  For N a power of two and keep a power of two this is NVlabs' loop exactly. Otherwise a round plays
  only as many matches as it takes to get down to `keep`, and unpaired candidates advance (a bye);
  NVlabs instead truncates N and keep to powers of two. Returns (winners in bracket order,
  elimination round of each candidate: 0 = lost in the first round, ..., None = a winner).
  """
  if keep < 1:
    raise ValueError(f"keep must be >= 1, got {keep}")
  alive = list(range(len(verdicts)))
  lost_in = [None] * len(verdicts)
  rnd = 0
  while len(alive) > keep:
    matches = min(len(alive) // 2, len(alive) - keep)
    survivors = []
    for m in range(matches):
      a, b = alive[2 * m], alive[2 * m + 1]
      winner, loser = (a, b) if first_wins(verdicts[a], verdicts[b]) else (b, a)
      survivors.append(winner)
      lost_in[loser] = rnd
    alive = survivors + alive[2 * matches:]
    rnd += 1
  return alive, lost_in


class YesNoVLMJudge:
  """A transformers vision-language model (local folder) as a yes/no verifier, winners by knockout.

  Loaded with AutoProcessor + AutoModelForImageTextToText (e.g. a LLaVA-style model); the question is
  NVILA_VERIFIER_PROMPT, formatted with the processor's chat template when it has one, otherwise as
  "<image token>\\n<question>". The answer is the greedy first generated token; its logits give the
  yes / no scores ("yes" and "no" are the first token of each word without special tokens).
  """

  def __init__(self, model_dir: str, batch_size: int = 8, prompt_template: str = NVILA_VERIFIER_PROMPT):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    self.processor = AutoProcessor.from_pretrained(model_dir)
    self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    self.tokenizer = self.processor.tokenizer
    self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
    self.yes_id = self.tokenizer.encode("yes", add_special_tokens=False)[0]
    self.no_id = self.tokenizer.encode("no", add_special_tokens=False)[0]
    self.batch_size = batch_size
    self.prompt_template = prompt_template
    self._torch = torch

  def question(self, prompt: str) -> str:
    text = self.prompt_template.format(prompt=prompt)
    if getattr(self.processor, "chat_template", None):
      messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
      return self.processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"{self.processor.image_token}\n{text}"

  def verdicts(self, images, prompt: str) -> list[Verdict]:
    question = self.question(prompt)
    images = list(to_uint8(images))
    out = []
    with self._torch.no_grad():
      for start in range(0, len(images), self.batch_size):
        chunk = images[start:start + self.batch_size]
        inputs = self.processor(images=chunk, text=[question] * len(chunk), return_tensors="pt", padding=True)
        gen = self.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
        logits = gen.logits[0].float()  # [b, vocab] of the first generated token
        tokens = logits.argmax(-1)
        for row, token in zip(logits, tokens):
          out.append(Verdict(answer=self.tokenizer.decode([int(token)]).strip(),
                             yes_logit=float(row[self.yes_id]), no_logit=float(row[self.no_id])))
    return out

  def select(self, images, prompt: str, keep: int = 1) -> Selection:
    verdicts = self.verdicts(images, prompt)
    winners, lost_in = knockout(verdicts, keep)
    # Full ranking: winners (best first by the pairwise rule), then by the round each candidate lost in.
    winners = sorted(winners, key=lambda i: _verdict_key(verdicts[i]), reverse=True)
    losers = sorted((i for i in range(len(verdicts)) if lost_in[i] is not None),
                    key=lambda i: (lost_in[i], _verdict_key(verdicts[i])), reverse=True)
    return Selection(winners=winners, ranking=winners + losers,
                     details={"verdicts": [dataclasses.asdict(v) for v in verdicts], "lost_in_round": lost_in})


def _verdict_key(v: Verdict):
  """A total order consistent with `first_wins` (up to its tie rule), used only to order the report."""
  return (v.answer == "yes", v.yes_logit if v.answer == "yes" else -v.no_logit)


def as_judge(judge):
  """A judge object from a judge, or a plain `score_fn(images, prompt) -> scores` callable."""
  if hasattr(judge, "select"):
    return judge
  if callable(judge):
    return PointwiseJudge(judge, name=getattr(judge, "__name__", "score"))
  raise TypeError(f"a judge must have .select(images, prompt, keep) or be a score function, got {judge!r}")
