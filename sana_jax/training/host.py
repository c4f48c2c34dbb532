"""Host-side pieces of the training loop: batch prefetching, stop signals, multi-process agreement.

  with Prefetcher(data, prepare, depth=2) as batches:
    batch, data_state = next(batches)   # prepared (encoded, sharded) on a background thread

Every decision that changes control flow (stop now, an error on process 0) must be the same on
all processes of a multi-host job, or the next collective hangs: `distributed.any_process` and
`on_main` make those decisions together. On one process they cost nothing.
"""
import queue
import signal
import threading
import time

import jax
import numpy as np

from sana_jax.data.pipeline import DATA_THREADS

_END = object()


class Prefetcher:
  """Runs `prepare(next(iterator))` on a background thread, `depth` batches ahead (maxdiffusion's
  data loading: the host encodes and shards batch k+1 while the device runs step k).

  Yields (prepared batch, iterator state after that batch), so a checkpoint records the position
  of the batches actually consumed, not of those prefetched. While it runs, the batch-making
  threads (this one and the pipeline's) are in the scheduling class `thread_priority` names
  (`pipeline.DATA_THREADS`: "idle" | "normal" | "auto", the config's `data.thread_priority`), and
  the time the consumer waits for a batch, after the first, is reported there.
  """

  def __init__(self, iterator, prepare, depth: int = 2, thread_priority: str = "normal"):
    DATA_THREADS.check(thread_priority)  # a bad name is refused before the thread starts
    self._iterator, self._prepare, self._priority = iterator, prepare, thread_priority
    self._queue = queue.Queue(maxsize=max(1, depth))
    self._served = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="sana_jax_prefetch", daemon=True)

  def _run(self):
    try:
      while not self._stop.is_set():
        try:
          item = next(self._iterator)
        except StopIteration:
          self._put(_END)
          return
        # After the first next(): threads the iterator starts then inherit the normal class.
        DATA_THREADS.enter()
        self._put((self._prepare(item), self._iterator.get_state()))
    except BaseException as e:  # noqa: BLE001 - re-raised in the consuming thread
      self._put(e)

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __enter__(self):
    DATA_THREADS.configure(self._priority)
    self._thread.start()
    return self

  def __iter__(self):
    return self

  def __next__(self):
    try:
      item = self._queue.get_nowait()
    except queue.Empty:
      start = time.perf_counter()
      item = self._queue.get()
      if self._served:  # the first batch is always waited for
        DATA_THREADS.waited(time.perf_counter() - start)
    self._served += 1
    if item is _END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join(timeout=30)
    DATA_THREADS.configure("normal")


class StopSignals:
  """SIGTERM (preemption) or a first Ctrl-C request a stop between two steps; a second Ctrl-C
  interrupts at once (KeyboardInterrupt)."""

  def __init__(self):
    self.requested = None  # the signal's name once one arrived

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print("\nCtrl-C: stopping after this step with a checkpoint (press again to stop at once)",
            flush=True)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def on_main(fn, error_type=RuntimeError):
  """Runs `fn()` on process 0 only; if it raises, every process raises (process 0 its own error,
  the others `error_type` pointing at process 0's log). -> fn's result on process 0, else None."""
  result, failure = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the others learn of it
      failure = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(failure is not None)))
    if failed and failure is None:
      raise error_type("process 0 stopped the run; its log says why")
  if failure is not None:
    raise failure
  return result
