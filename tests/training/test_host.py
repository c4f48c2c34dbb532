"""host.Prefetcher and the scheduling class of the threads that make batches (pipeline.DATA_THREADS)."""
import logging
import os
import threading
import time

import jax
import numpy as np
import pytest

from sana_jax.data import pipeline
from sana_jax.training import host

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
reversible = pytest.mark.skipif(not pipeline.idle_is_reversible(),
                                reason="this user may enter SCHED_IDLE but not leave it (no CAP_SYS_NICE)")


class _RecordingSource:
  """A tiny image source that records the scheduling class of each thread that reads it."""

  def __init__(self, n=32):
    self.n, self.classes = n, []

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    self.classes.append((threading.current_thread() is threading.main_thread(), os.sched_getscheduler(0)))
    return {"image": np.full((8, 8, 3), index, np.uint8), "caption": f"example {index}"}


def _data_cfg():
  cfg = pipeline.default_data_config()
  cfg.update(image_size=8, size_multiple=8, num_threads=2, prefetch_buffer_size=2)
  return cfg


def _prefetch(source, priority, batches):
  prepared_in = []

  def prepare(batch):
    prepared_in.append(os.sched_getscheduler(0))
    return batch["indices"]

  data = pipeline.make_dataset(_data_cfg(), 4, seed=0, source=source)
  with host.Prefetcher(data, prepare, depth=2, thread_priority=priority) as it:
    got = [next(it)[0] for _ in range(batches)]
  return got, prepared_in


@reversible
def test_idle_priority_puts_every_batch_thread_in_sched_idle_and_leaves_the_main_thread_alone():
  source = _RecordingSource()
  got, prepared_in = _prefetch(source, "idle", batches=6)
  assert len(got) == 6
  readers = [cls for on_main, cls in source.classes if not on_main]
  assert readers and set(readers) == {os.SCHED_IDLE}, source.classes
  assert set(prepared_in) == {os.SCHED_IDLE}
  assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the main thread (the step) keeps its class
  assert not pipeline.DATA_THREADS.idle  # back to normal once the prefetcher is done

  # After the prefetcher, the same kind of reading (its own Grain threads) is in the normal class.
  plain = _RecordingSource()
  next(pipeline.make_dataset(_data_cfg(), 4, seed=0, source=plain))
  assert {cls for _, cls in plain.classes} == {os.SCHED_OTHER}


@linux_only
def test_normal_priority_changes_nothing():
  source = _RecordingSource()
  _, prepared_in = _prefetch(source, "normal", batches=4)
  assert {cls for _, cls in source.classes} == {os.SCHED_OTHER}
  assert set(prepared_in) == {os.SCHED_OTHER}


@reversible
def test_a_consumer_kept_waiting_puts_the_threads_back_in_the_normal_class_with_one_warning(caplog):
  classes = []

  def slow():  # a data source that cannot keep up: the consumer waits ~0.3 s for each batch
    for i in range(8):
      time.sleep(0.3)
      classes.append(os.sched_getscheduler(0))
      yield i

  class Iterator:
    def __init__(self):
      self.it = slow()

    def __next__(self):
      return next(self.it)

    def get_state(self):
      return {}

  with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
    with host.Prefetcher(Iterator(), lambda x: x, depth=1, thread_priority="idle") as it:
      got = [item for item, _ in it]
  assert got == list(range(8))
  # the first item is made before the thread turns idle (threads the iterator starts stay normal)
  assert classes[0] == os.SCHED_OTHER and classes[1] == os.SCHED_IDLE and classes[-1] == os.SCHED_OTHER, classes
  warnings = [r.getMessage() for r in caplog.records if "idle priority" in r.getMessage()]
  assert len(warnings) == 1 and "normal priority from now on" in warnings[0]


def test_an_unknown_priority_is_refused_in_one_line_before_any_thread_starts():
  with pytest.raises(ValueError, match=r"^data.thread_priority must be one of \('auto', 'idle', 'normal'\), got 'low'$"):
    host.Prefetcher(iter([]), lambda x: x, thread_priority="low")
  cfg = _data_cfg()
  cfg.thread_priority = "low"
  with pytest.raises(ValueError, match="data.thread_priority must be one of"):
    pipeline.make_dataset(cfg, 4, seed=0, source=_RecordingSource())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto's choice on the CPU")
def test_auto_is_idle_on_the_cpu_only_where_the_threads_could_leave_it_again():
  assert pipeline.DataThreads.resolve("auto") == ("idle" if pipeline.idle_is_reversible() else "normal")
  assert pipeline.DataThreads.resolve("normal") == "normal"


@linux_only
def test_the_reversibility_probe_agrees_with_the_process_rights():
  import resource
  cap_eff = next(int(line.split()[1], 16) for line in open("/proc/self/status") if line.startswith("CapEff:"))
  cap_sys_nice = bool(cap_eff >> 23 & 1)  # CAP_SYS_NICE is capability 23
  allowed = cap_sys_nice or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
  assert pipeline.idle_is_reversible() == allowed
