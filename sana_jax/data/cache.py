"""A latent cache: images encoded by the autoencoder and captions by the text encoder, stored once.

`python -m sana_jax.preprocess` writes one with `write_cache`; training reads it with
`data.name="cache", data.path=DIR`, so a training step runs neither encoder. A cache folder holds

  manifest.json                 format tag, count, skipped, dtypes, encoders, scaling factor, buckets
  null_text.npz                 the "" prompt's features [1, L, C] and mask [1, L] (caption dropout)
  b<k>-<shard>.array_record     records of bucket k, one per example, in source order

Each aspect-ratio bucket has its own shards and one latent shape, and the buckets' records are
contiguous (the manifest gives each bucket's first record and count), so every batch of the
pipeline's bucketed plan stacks into fixed shapes. A record is the `.npz` bytes of
  latents [h, w, C] (already x scaling_factor), text [T, C_text] (only the first T = number of
  unmasked tokens), text_mask [L], caption, index (in the source), spec (shapes data only).
The text encoders pad on the right, so the unmasked tokens are a prefix; the padded rows come back
as zeros. The transformer's cross-attention masks them out, so the model sees the same inputs as
with on-the-fly encoding, and the cache stores only the caption's own tokens (with Gemma-2's 300
positions most are padding). Arrays are stored as float32 or bfloat16 (`storage_dtype`) and read
back as float32.
"""
import dataclasses
import io
import json
import logging
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import tqdm
from array_record.python.array_record_data_source import ArrayRecordDataSource
from array_record.python.array_record_module import ArrayRecordWriter

from sana_jax.data import buckets

log = logging.getLogger(__name__)

FORMAT = "sana_jax.latent_cache.v1"
MANIFEST = "manifest.json"
NULL_TEXT = "null_text.npz"
STORAGE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


# ------------------------------------------------------------------------------------------ records

def _to_storage(array, storage_dtype: str) -> np.ndarray:
  """float array -> numpy in the storage dtype; bfloat16 travels as its uint16 bit pattern (npz
  has no bfloat16)."""
  array = np.asarray(array, np.float32).astype(STORAGE_DTYPES[storage_dtype])
  return array.view(np.uint16) if storage_dtype == "bfloat16" else array


def _from_storage(array: np.ndarray, storage_dtype: str) -> np.ndarray:
  if storage_dtype == "bfloat16":
    array = array.view(ml_dtypes.bfloat16)
  return array.astype(np.float32)


def serialize_record(latents, text, text_mask, caption: str, index: int, storage_dtype: str,
                     spec: str | None = None) -> bytes:
  """One example -> `.npz` bytes. latents [h, w, C], text [L, C_text], text_mask [L]."""
  mask = np.asarray(text_mask).astype(np.uint8)
  length = int(mask.sum())
  if mask[:length].min(initial=1) == 0:
    raise ValueError(f"text_mask must be a prefix of ones (right padding), got {mask.tolist()}")
  fields = dict(latents=_to_storage(latents, storage_dtype),
                text=_to_storage(np.asarray(text)[:length], storage_dtype),  # [T, C_text]
                text_mask=mask, caption=np.asarray(caption), index=np.asarray(index, np.int64))
  if spec is not None:
    fields["spec"] = np.asarray(spec)
  buffer = io.BytesIO()
  np.savez(buffer, **fields)
  return buffer.getvalue()


def deserialize_record(data: bytes, storage_dtype: str) -> dict:
  """`.npz` bytes -> {"latents" f32 [h, w, C], "text" f32 [L, C_text], "text_mask" int32 [L],
  "caption" str, "index" int (, "spec" str)}."""
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    mask = f["text_mask"].astype(np.int32)
    kept = _from_storage(f["text"], storage_dtype)  # [T, C_text]
    text = np.zeros((mask.shape[0], kept.shape[1]), np.float32)
    text[:kept.shape[0]] = kept
    record = {"latents": _from_storage(f["latents"], storage_dtype), "text": text, "text_mask": mask,
              "caption": str(f["caption"]), "index": int(f["index"])}
    if "spec" in f:
      record["spec"] = str(f["spec"])
  return record


# ------------------------------------------------------------------------------------------ writing

def plan_buckets(source, data_cfg) -> list[tuple[str, tuple[int, int], np.ndarray]]:
  """[(bucket key, (height, width), source indices in order)] for the buckets that hold examples:
  the training table (`buckets.bucket_table`), images assigned to the nearest ratio."""
  table, ids = buckets.assign_buckets(source, data_cfg)
  keys = list(table)
  return [(keys[b], tuple(int(s) for s in table[keys[b]]), np.flatnonzero(ids == b)) for b in np.unique(ids)]


def _describe(codec) -> dict:
  """What a codec is, for the manifest: its class and the settings that change its output."""
  info = {"class": type(codec).__name__}
  for name in ("spatial_compression", "latent_channels", "scaling_factor", "dim", "max_length", "vocab"):
    value = getattr(codec, name, None)
    if value is not None:
      info[name] = value if isinstance(value, (int, float, str)) else " ".join(value)
  config = getattr(codec, "config", None) or getattr(getattr(codec, "model", None), "config", None)
  if dataclasses.is_dataclass(config):
    info["config"] = dataclasses.asdict(config)
  return info


def write_cache(out_dir: str, source, data_cfg, autoencoder, text_encoder, *, max_text_length: int,
                batch_size: int = 8, complex_human_instruction=None, storage_dtype: str = "float32",
                shard_size: int = 1000, provenance: dict | None = None, progress: bool = True) -> dict:
  """Encodes every example of `source` into a cache at `out_dir`; returns the manifest.

  autoencoder: `encode(images [B, H, W, 3] in [-1, 1]) -> [B, h, w, C]` (jitted) and
  `scaling_factor`; text_encoder: `encode(prompts, complex_human_instruction, max_sequence_length)
  -> (embeds [B, L, C_text], mask [B, L])` and `null_embedding(max_sequence_length)`. Each bucket is
  encoded in batches of `batch_size` (the last one padded, so each bucket compiles once). Examples
  that fail to load are skipped, logged and counted in the manifest's "skipped" (with those the
  source itself skipped, e.g. a folder's unreadable files). `provenance` (e.g. the encoders' paths)
  is stored in the manifest as given.
  """
  if storage_dtype not in STORAGE_DTYPES:
    raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES)}, got {storage_dtype!r}")
  if batch_size < 1 or shard_size < 1:
    raise ValueError(f"batch_size and shard_size must be positive, got {batch_size=}, {shard_size=}")
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    raise FileExistsError(f"{out_dir} already holds a cache ({MANIFEST}); choose another --out")
  os.makedirs(out_dir, exist_ok=True)
  scale = float(autoencoder.scaling_factor)
  plan = plan_buckets(source, data_cfg)
  source_skipped = getattr(source, "skipped", None)
  skipped = sum(source_skipped.values()) if isinstance(source_skipped, dict) else 0
  bar = tqdm.tqdm(total=sum(len(ids) for _, _, ids in plan), desc="encode", unit="img", disable=not progress)
  manifest_buckets, start = [], 0

  for bucket_number, (key, (height, width), indices) in enumerate(plan):
    shards, shard_count, writer, latent_shape = [], 0, None, None
    count = 0

    def emit(payload):
      nonlocal writer, shard_count, count
      if writer is None or shard_count == shard_size:
        if writer is not None:
          writer.close()
        shards.append({"file": f"b{bucket_number:03d}-{len(shards):05d}.array_record", "count": 0})
        writer = ArrayRecordWriter(os.path.join(out_dir, shards[-1]["file"]), "group_size:1")
        shard_count = 0
      writer.write(payload)
      shard_count += 1
      shards[-1]["count"] += 1
      count += 1

    pending = []  # loaded examples waiting for a full batch: (index, image, caption, spec)
    for position, index in enumerate(indices):
      try:
        record = source[int(index)]
        image = buckets.resize_center_crop(record["image"], height, width)
        pending.append((int(index), image.astype(np.float32) / 127.5 - 1.0, record["caption"], record.get("spec")))
      except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt data
        skipped += 1
        log.warning("skipping unreadable example %d of %r (%s: %s); %d skipped so far",
                    index, source, type(e).__name__, e, skipped)
      bar.update(1)
      if len(pending) == batch_size or (position == len(indices) - 1 and pending):
        real = len(pending)
        padded = pending + [pending[-1]] * (batch_size - real)
        images = np.stack([p[1] for p in padded])  # [batch_size, H, W, 3]
        latents = np.asarray(autoencoder.encode(jnp.asarray(images)), np.float32) * scale  # [B, h, w, C]
        text, mask = text_encoder.encode([str(p[2]) for p in padded], complex_human_instruction,
                                         max_text_length)
        text, mask = np.asarray(text, np.float32), np.asarray(mask)
        latent_shape = list(latents.shape[1:])
        for row, (example_index, _, caption, spec) in enumerate(pending[:real]):
          emit(serialize_record(latents[row], text[row], mask[row], str(caption), example_index,
                                storage_dtype, spec))
        pending = []
    if writer is not None:
      writer.close()
    if count:
      manifest_buckets.append({"key": key, "image_size": [height, width], "latent_shape": latent_shape,
                               "start": start, "count": count, "shards": shards})
      start += count
  bar.close()
  if not start:
    raise ValueError(f"no example of {source!r} could be loaded ({skipped} skipped); nothing was cached")

  null_text, null_mask = text_encoder.null_embedding(max_text_length)
  null_text, null_mask = np.asarray(null_text, np.float32), np.asarray(null_mask, np.int32)
  np.savez(os.path.join(out_dir, NULL_TEXT), text=null_text, text_mask=null_mask)
  manifest = {
      "format": FORMAT, "count": start, "skipped": skipped, "storage_dtype": storage_dtype,
      "scaling_factor": scale, "latent_channels": int(manifest_buckets[0]["latent_shape"][-1]),
      "text_length": int(null_mask.shape[1]), "text_channels": int(null_text.shape[2]),
      "complex_human_instruction": (None if not complex_human_instruction else
                                    "\n".join([complex_human_instruction] if isinstance(complex_human_instruction, str)
                                              else list(complex_human_instruction))),
      "autoencoder": _describe(autoencoder), "text_encoder": _describe(text_encoder),
      "provenance": provenance or {}, "data": data_cfg.to_dict(), "buckets": manifest_buckets,
  }
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=2, default=str)
  log.info("cache %s: %d examples in %d buckets, %d skipped", out_dir, start, len(manifest_buckets), skipped)
  return manifest


# ------------------------------------------------------------------------------------------ reading

class CacheSource:
  """Random-access source over a cache folder (Grain-compatible: len + getitem -> record dict).

  The pipeline (`make_dataset` with data.name="cache") batches it by the cache's own buckets
  (`bucket_ids`) and stacks records with `collate` instead of resizing images.
  """

  def __init__(self, path: str):
    self.path = path
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
      raise FileNotFoundError(f"{path!r} is not a latent cache: no {MANIFEST} (write one with "
                              "`python -m sana_jax.preprocess --out DIR`)")
    try:
      with open(manifest_path) as f:
        manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"cache manifest {manifest_path} is not valid JSON ({e}); re-run preprocess") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
      found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
      raise ValueError(f"cache manifest {manifest_path} has format {found!r}, expected {FORMAT!r}")
    try:
      self.count, self.storage_dtype = int(manifest["count"]), manifest["storage_dtype"]
      bucket_list = manifest["buckets"]
      files = [os.path.join(path, s["file"]) for b in bucket_list for s in b["shards"]]
      starts = [int(b["start"]) for b in bucket_list]
      counts = [int(b["count"]) for b in bucket_list]
      shard_total = [sum(int(s["count"]) for s in b["shards"]) for b in bucket_list]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"cache manifest {manifest_path} is incomplete or malformed ({type(e).__name__}: {e})") from e
    if self.storage_dtype not in STORAGE_DTYPES:
      raise ValueError(f"cache manifest {manifest_path}: unknown storage_dtype {self.storage_dtype!r}")
    if starts != list(np.cumsum([0] + counts[:-1])) or sum(counts) != self.count or shard_total != counts:
      raise ValueError(f"cache manifest {manifest_path} is inconsistent: count {self.count}, bucket "
                       f"starts {starts}, bucket counts {counts}, records in their shards {shard_total}")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f"cache {path!r} lacks {len(missing)} shard file(s) its manifest lists: {missing[:5]}")
    self.manifest = manifest
    self._source = ArrayRecordDataSource(files)
    if len(self._source) != self.count:
      raise ValueError(f"cache {path!r}: the shards hold {len(self._source)} records but the manifest "
                       f"says {self.count}; the cache is truncated or its manifest is stale")
    self._bucket_ids = np.repeat(np.arange(len(bucket_list)), counts)  # [N]

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, index: int) -> dict:
    record = deserialize_record(self._source[int(index)], self.storage_dtype)
    expected = self.manifest["buckets"][self._bucket_ids[index]]["latent_shape"]
    if list(record["latents"].shape) != expected:
      raise ValueError(f"cache record {index} has latents of shape {record['latents'].shape}, but its "
                       f"bucket's shape is {expected} in the manifest")
    return record

  def __repr__(self) -> str:
    return f"CacheSource({self.path!r}, {self.count} examples)"

  def bucket_keys(self) -> list[str]:
    return [b["key"] for b in self.manifest["buckets"]]

  def bucket_sizes(self) -> np.ndarray:
    """[num_buckets, 2] (height, width) in pixels of each bucket's images."""
    return np.asarray([b["image_size"] for b in self.manifest["buckets"]], np.int64)

  def bucket_ids(self) -> np.ndarray:
    """[N] bucket number of every record."""
    return self._bucket_ids

  def image_sizes(self) -> np.ndarray:
    """[N, 2] (height, width) of the images the records were encoded at."""
    return self.bucket_sizes()[self._bucket_ids]

  def null_embedding(self):
    """The "" prompt, as the text encoder gave it: (text [1, L, C_text] f32, mask [1, L] int32)."""
    with np.load(os.path.join(self.path, NULL_TEXT), allow_pickle=False) as f:
      return f["text"], f["text_mask"]

  def check_autoencoder(self, autoencoder) -> None:
    """Raises ValueError when the cached latents were scaled otherwise than `autoencoder` decodes them."""
    cached, decoded = float(self.manifest["scaling_factor"]), float(autoencoder.scaling_factor)
    if abs(cached - decoded) > 1e-6 * max(abs(cached), 1.0):
      raise ValueError(f"cache {self.path!r} holds latents scaled by {cached:g} but the run's autoencoder "
                       f"decodes with scaling_factor {decoded:g}; set --config.codecs.scaling_factor={cached:g} "
                       "or re-run preprocess with the run's value")

  def check_model(self, model_cfg) -> None:
    """Raises ValueError when the cached latents or text features do not fit the model config."""
    m = self.manifest
    if m["latent_channels"] != model_cfg.in_channels:
      raise ValueError(f"cache {self.path!r} holds {m['latent_channels']}-channel latents but "
                       f"model.in_channels is {model_cfg.in_channels}")
    if m["text_channels"] != model_cfg.caption_channels:
      raise ValueError(f"cache {self.path!r} holds {m['text_channels']}-channel text features but "
                       f"model.caption_channels is {model_cfg.caption_channels}")

  @staticmethod
  def collate(loaded: list[tuple[int, dict]]) -> dict:
    """[(record index, record)] of one bucket -> {"latents" [B, h, w, C], "text" [B, L, C_text],
    "text_mask" [B, L], "captions" [B], "indices" [B] (cache records) (, "specs" [B])}."""
    records = [r for _, r in loaded]
    shapes_seen = {r["latents"].shape for r in records}
    if len(shapes_seen) != 1:
      raise ValueError(f"a cache batch mixes latent shapes {sorted(shapes_seen)}; records of one "
                       "bucket failed to load and were replaced across a bucket boundary")
    batch = {"latents": np.stack([r["latents"] for r in records]),
             "text": np.stack([r["text"] for r in records]),
             "text_mask": np.stack([r["text_mask"] for r in records]),
             "captions": np.asarray([r["caption"] for r in records]),
             "indices": np.asarray([i for i, _ in loaded], np.int64)}
    if "spec" in records[0]:
      batch["specs"] = np.asarray([r["spec"] for r in records])
    return batch
