"""SanaPipeline.warmup compiles what later calls at those sizes run: they compile nothing."""
import jax

CALL = dict(num_inference_steps=3, use_resolution_binning=False, max_sequence_length=16)


def test_calls_after_warmup_compile_nothing(tiny_pipe):
  seconds = tiny_pipe.warmup(resolutions=[(32, 32)], batch_sizes=[1, 2], **CALL)
  assert set(seconds) == {(32, 32, 1), (32, 32, 2)}
  compiles = []

  def listener(event, seconds, **kwargs):
    if event.endswith("backend_compile_duration"):
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    tiny_pipe(["a red square", "a blue circle"], height=32, width=32, output_type="np", **CALL)
    tiny_pipe("a green dot", height=32, width=32, output_type="np", **CALL)
    assert compiles == []
    tiny_pipe("a green dot", height=32, width=64, output_type="np", **CALL)  # a new size compiles
    assert compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
