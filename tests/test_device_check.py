"""tools/device_check.py's report: one table of every figure, a failed step named with its error."""

import importlib.util

from tiny_maskprop import REPO_ROOT

spec = importlib.util.spec_from_file_location("device_check", REPO_ROOT / "tools" / "device_check.py")
device_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_check)


def test_the_table_holds_every_figure_and_names_failed_steps():
  report = {
      "errors": {"kernel_bench_bfloat16": "over its 300 s"},
      "kernel_agreement_float32": [dict(check="pallas vs xla", dtype="float32", what="grad x", rel_max_diff=3e-7)],
      "kernel_bench_float32": {"results": [dict(shape="ytvis", impl="pallas", fwd_ms=1.25, fwd_bwd_ms=4.5,
                                                fwd_roofline_fraction=0.41, fwd_bwd_roofline_fraction=0.33,
                                                speedup_fwd_vs_torchvision=2.0, speedup_fwd_bwd_vs_torchvision=1.5)]},
      "inference_bfloat16": dict(frames_per_second=12.5, torchvision_maskrcnn_frames_per_second=10.0,
                                 frames_per_second_ratio_to_torchvision=1.25),
      "training_step": ["devices batch compile s median ms p10 ms p90 ms clips/s step MiB/device",
                        "1 2 58.6 350.0 340.1 360.2 5.71 9000"],
  }
  table = device_check.format_report(report)
  assert "| kernels float32 | pallas vs xla, grad x | rel. max diff 3.00e-07 |" in table
  assert "fwd 1.25 ms (41% of roofline), fwd+bwd 4.5 ms (33%), 2.00x / 1.50x torchvision's speed" in table
  assert "12.5, 10, 1.25x" in table
  assert ("| training step (ytvis, bfloat16) | batch 2 on 1 device(s) | median 350.0 ms (p10 340.1, p90 360.2), "
          "5.71 clips/s, compile 58.6 s, 9000 MiB per device |") in table
  assert "| kernel_bench_bfloat16 | FAILED | over its 300 s (see its .log) |" in table


def test_the_last_json_object_of_a_steps_output_is_read():
  assert device_check._last_json('log line\n{\n  "a": 1\n}\n') == {"a": 1}
  assert device_check._last_json('{"b": 2}') == {"b": 2}
  assert device_check._last_json("no json") is None
