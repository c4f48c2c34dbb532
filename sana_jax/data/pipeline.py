"""The training input pipeline: a source -> one-bucket batches -> a checkpointable Grain iterator.

  it = make_dataset(cfg.data, global_batch_size=64, seed=0, shard_index=jax.process_index(),
                    shard_count=jax.process_count())
  batch = next(it)    # {"images": float32 [B, H, W, 3] in [-1, 1], "captions": str [B], "indices": [B]}
                      # (+ "specs": SceneSpec JSON [B] for the shapes dataset), B = global / shard_count
                      # data.name="cache": "latents", "text", "text_mask" instead of "images" (cache.py)
  state = it.get_state()          # save beside the model checkpoint
  it.set_state(state)             # resume: the next batches are exactly the ones that followed

Every epoch has a global plan of batches (`buckets.batch_plan`: shuffled within aspect-ratio
buckets, one bucket per batch), computed identically on every host from (seed, epoch); host k takes
the k-th contiguous slice of each global batch. The Grain dataset is a `MapDataset` over global
batch numbers, so an iterator's state is just its position and resuming is exact. Examples that fail
to load are replaced by the next loadable index (logged and counted), so a corrupt file never stops
training and never changes a batch's shape.
"""
import functools
import logging
import os
import sys
import threading

import grain
import ml_collections
import numpy as np
from absl import flags

from sana_jax.data import buckets, shapes

log = logging.getLogger(__name__)
SOURCES = ("shapes", "folder", "tfds", "cache")  # "cache": latents written by `sana_jax.preprocess`
THREAD_PRIORITIES = ("auto", "idle", "normal")
_MAX_CONSECUTIVE_FAILURES = 32


def default_data_config() -> ml_collections.ConfigDict:
  """The `data` section of a training config; defaults train on 32x32 synthetic shapes."""
  c = ml_collections.ConfigDict()
  c.name = "shapes"              # one of SOURCES
  c.path = ""                    # folder of images + captions (name="folder") or the cache (name="cache")
  c.json_caption_key = "prompt"  # caption field of a folder's .json files
  c.instance_prompt = ""         # name="folder": caption every image with this (DreamBooth, "a sks dog")
  c.tfds_name = ""               # e.g. "my_dataset" or "my_dataset/config:1.0.0" (name="tfds")
  c.tfds_data_dir = ""           # "" = TFDS's default data dir
  c.tfds_image_key = "image"
  c.tfds_caption_key = "caption"
  c.split = "train"
  c.image_size = 32              # square side, or the base size of the aspect-ratio buckets
  c.multi_scale = False          # aspect-ratio buckets (SANA's ASPECT_RATIO table scaled to image_size)
  c.size_multiple = 32           # bucket sides are multiples of this (autoencoder factor x patch size)
  c.shapes_num_examples = 100_000
  c.shapes_seed = 0              # what the shapes look like; the shuffle comes from make_dataset's seed
  c.shapes_tasks = shapes.TASKS  # tasks cycle with the index: one named twice is drawn twice as often
  c.num_epochs = ml_collections.config_dict.placeholder(int)  # None = forever
  c.num_threads = 2              # Grain read threads (batches prepared in parallel)
  c.prefetch_buffer_size = 4
  c.num_workers = 0              # > 0: Grain worker processes (mp_prefetch)
  c.thread_priority = "auto"     # the threads making batches while the training loop runs: "idle" |
                                 # "normal" | "auto" (idle when JAX computes on the CPU); DataThreads
  return c


class DataThreads:
  """The scheduling class of the threads that make batches: Grain's read threads (the pipeline's
  loader) and the training loop's prefetch thread, each of which calls `enter()` before each batch.

  The consumer that can tell whether batches come late, `training.host.Prefetcher`, sets the class
  for as long as it runs (`configure(data.thread_priority)`, then `configure("normal")`); other
  readers of the pipeline leave the threads in the normal class. With "idle" each batch thread runs
  in Linux's SCHED_IDLE class: it gets a core only when no ordinary thread wants one, and gives it
  back the moment one does. When the train step itself runs on the CPU (the default job),
  rendering and packing the next batch then fills the step's idle gaps instead of taking a core
  from XLA's threads in the middle of an op (docs/benchmarks.md, "Training-loop overhead"). "auto"
  is "idle" when JAX's default backend is the CPU and the process may leave the idle class again
  (`idle_is_reversible`: root, or an RLIMIT_NICE of 20), else "normal" (an accelerator's host has
  cores to spare). If the consumer still waits for batches (`waited`: over a second in all, e.g.
  other processes keep every core busy), the threads go back to the normal class until the next
  `configure`, with one warning. Elsewhere than Linux, and on the main thread, nothing changes.
  One per process (a thread's class is the process's business): `DATA_THREADS`.
  """

  _FALL_BACK_AFTER_S = 1.0

  def __init__(self):
    self._lock = threading.Lock()
    self._idle = False          # whether batch threads should be idle now
    self._failed = False        # the system refused a change once: stop trying
    self._waited = 0.0

  @staticmethod
  def check(priority: str) -> None:
    if priority not in THREAD_PRIORITIES:
      raise ValueError(f"data.thread_priority must be one of {THREAD_PRIORITIES}, got {priority!r}")

  @staticmethod
  def resolve(priority: str) -> str:
    """"idle" | "normal" for a data.thread_priority value (ValueError naming the choices)."""
    DataThreads.check(priority)
    if priority == "auto":
      import jax
      return "idle" if jax.default_backend() == "cpu" and idle_is_reversible() else "normal"
    return priority

  def configure(self, priority: str) -> None:
    """From now on batch threads take this class (as each next calls `enter`)."""
    idle = self.resolve(priority) == "idle" and hasattr(os, "SCHED_IDLE")
    with self._lock:
      self._idle, self._waited = idle, 0.0

  def enter(self) -> None:
    """Puts the calling (batch-making) thread in the class currently asked for (a thread a batch
    thread starts inherits its class, so each one checks its own every time: one system call)."""
    if self._failed or threading.current_thread() is threading.main_thread() or not hasattr(os, "SCHED_IDLE"):
      return
    want = os.SCHED_IDLE if self._idle else os.SCHED_OTHER
    try:
      if os.sched_getscheduler(0) != want:  # 0: the calling thread
        os.sched_setscheduler(0, want, os.sched_param(0))
    except OSError as e:  # e.g. a sandbox that forbids it: leave every thread as it is
      self._failed = True
      log.warning("data threads: cannot change their scheduling class (%s); they keep theirs", e)

  def waited(self, seconds: float) -> None:
    """The consumer waited `seconds` for a batch; past the limit, idle threads go back to normal."""
    with self._lock:
      self._waited += seconds
      if not self._idle or self._waited <= self._FALL_BACK_AFTER_S:
        return
      self._idle = False
    log.warning("the data threads at idle priority kept the step waiting %.1f s in all (the cores "
                "are busy with other work?); they run at normal priority from now on", self._waited)

  @property
  def idle(self) -> bool:
    return self._idle


@functools.lru_cache(maxsize=1)
def idle_is_reversible() -> bool:
  """Whether a thread of this process can enter SCHED_IDLE and leave it again. Leaving needs
  CAP_SYS_NICE or an RLIMIT_NICE of 20 (Linux treats SCHED_IDLE as nice 20), which root has and an
  ordinary user usually has not; without it the fall-back to normal priority could not happen, so
  "auto" stays "normal". Tried once, on a throwaway thread."""
  if not hasattr(os, "SCHED_IDLE"):
    return False
  result = []

  def probe():
    try:
      os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
      os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
      result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=probe, name="sana_jax_sched_probe")
  thread.start()
  thread.join()
  return result[0]


DATA_THREADS = DataThreads()


def build_source(cfg: ml_collections.ConfigDict):
  """The random-access source named by cfg.name (len + getitem -> {"image", "caption", ...})."""
  if cfg.name == "shapes":
    return shapes.ShapesSource(cfg.shapes_num_examples, cfg.image_size, cfg.shapes_seed, tuple(cfg.shapes_tasks))
  if cfg.name == "folder":
    from sana_jax.data.folder import FolderSource
    if not cfg.path:
      raise ValueError("data.name='folder' needs data.path, the folder of images and captions")
    return FolderSource(cfg.path, cfg.json_caption_key, cfg.get("instance_prompt", ""))
  if cfg.name == "tfds":
    from sana_jax.data.tfds_source import TfdsSource
    return TfdsSource(cfg.tfds_name, cfg.split, cfg.tfds_data_dir, cfg.tfds_image_key, cfg.tfds_caption_key)
  if cfg.name == "cache":
    from sana_jax.data.cache import CacheSource
    if not cfg.path:
      raise ValueError("data.name='cache' needs data.path, the folder written by `python -m sana_jax.preprocess`")
    return CacheSource(cfg.path)
  raise ValueError(f"unknown data.name {cfg.name!r}; choose one of {SOURCES}")


class _BatchLoader:
  """Global batch number -> this host's numpy batch. Plans are cached per epoch (thread-safe)."""

  def __init__(self, source, sizes, bucket_ids, global_batch_size, seed, shard_index, shard_count):
    self.source, self.sizes, self.bucket_ids = source, sizes, bucket_ids
    self.global_batch_size, self.seed = global_batch_size, seed
    per_host = global_batch_size // shard_count
    self.host_slice = slice(shard_index * per_host, (shard_index + 1) * per_host)
    self.skipped = 0
    self._lock = threading.Lock()
    self._plans = {}
    self.batches_per_epoch = len(self._plan(0))

  def __getstate__(self):  # worker processes get a copy without the lock or cached plans
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_plans")}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock(), _plans={})

  def _plan(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._plans:
        if len(self._plans) >= 2:
          self._plans.pop(min(self._plans))
        self._plans[epoch] = buckets.batch_plan(self.bucket_ids, self.global_batch_size, self.seed, epoch)
      return self._plans[epoch]

  def _load(self, index: int) -> tuple[int, dict]:
    """The example at index, or at the next index that loads (bad ones are logged and counted)."""
    for attempt in range(_MAX_CONSECUTIVE_FAILURES):
      candidate = (index + attempt) % len(self.source)
      try:
        return candidate, self.source[candidate]
      except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt data
        with self._lock:
          self.skipped += 1
          total = self.skipped
        log.warning("skipping unreadable example %d of %r (%s: %s); %d skipped so far",
                    candidate, self.source, type(e).__name__, e, total)
    raise RuntimeError(f"{_MAX_CONSECUTIVE_FAILURES} consecutive examples from index {index} of "
                       f"{self.source!r} failed to load; is the data readable?")

  def __call__(self, batch_number: int) -> dict:
    DATA_THREADS.enter()
    epoch, position = divmod(int(batch_number), self.batches_per_epoch)
    indices = self._plan(epoch)[position][self.host_slice]
    loaded = [self._load(int(index)) for index in indices]
    if hasattr(self.source, "collate"):  # pre-encoded records (the latent cache) are stacked as they are
      return self.source.collate(loaded)
    height, width = self.sizes[self.bucket_ids[indices[0]]]
    images, captions, used, specs = [], [], [], []
    for used_index, record in loaded:
      image = buckets.resize_center_crop(record["image"], height, width)
      images.append(image.astype(np.float32) / 127.5 - 1.0)
      captions.append(record["caption"])
      used.append(used_index)
      if "spec" in record:
        specs.append(record["spec"])
    batch = {"images": np.stack(images), "captions": np.asarray(captions), "indices": np.asarray(used, np.int64)}
    if specs:
      batch["specs"] = np.asarray(specs)
    return batch


def make_dataset(data_cfg: ml_collections.ConfigDict, global_batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1, source=None) -> grain.DatasetIterator:
  """A Grain iterator of this host's batches (see module docstring), with get_state / set_state.

  `source` overrides the one `data_cfg` names (any object with len and getitem returning
  {"image": uint8 [H, W, 3], "caption": str}; with multi_scale also `image_sizes()` -> [N, 2]).
  """
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of shard_count {shard_count}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
  DataThreads.check(data_cfg.get("thread_priority", "auto"))  # used by the loop's Prefetcher
  source = build_source(data_cfg) if source is None else source
  if hasattr(source, "bucket_ids"):  # the latent cache fixed its buckets when it was written
    keys, sizes, bucket_ids = source.bucket_keys(), source.bucket_sizes(), source.bucket_ids()
  else:
    table, bucket_ids = buckets.assign_buckets(source, data_cfg)
    keys = list(table)
    sizes = np.asarray([table[k] for k in keys], np.int64)  # [num_buckets, 2]
  loader = _BatchLoader(source, sizes, bucket_ids, global_batch_size, seed, shard_index, shard_count)
  num_batches = sys.maxsize if data_cfg.num_epochs is None else data_cfg.num_epochs * loader.batches_per_epoch
  log.info("data: %r, %d batches of %d per epoch, buckets used: %s", source, loader.batches_per_epoch,
           global_batch_size, sorted({keys[b] for b in np.unique(bucket_ids)}, key=float))
  dataset = grain.MapDataset.range(num_batches).map(loader)
  dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                                      prefetch_buffer_size=data_cfg.prefetch_buffer_size))
  if data_cfg.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app.run use defaults
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
  return iter(dataset)
