"""`synthpart bench SUITE`: throughput, FLOP/s, compile time and memory of every training loop.

For one suite (a network, dtype, batch and cut), it compiles and times each loop a method runs:

  conventional              the whole network, end to end (recovery epochs run the same loop)
  sequential segment i      segment i on the previous segment's features (pixels for the first)
  parallel segment i        segment i on SIL vectors plus noise (pixels for the first)
  model-parallel            end-to-end backprop across the segments' devices, one compiled
                            program per epoch (activations and gradients cross every step)
  model-parallel-stepwise   the same backprop dispatched step by step (what dispatching costs)

and reports samples/s, analytic TFLOP/s (`synthpart.flops`), compile seconds, XLA's memory
analysis of the compiled loop and, on GPUs, the device's own memory counters. The data is random,
of the right shapes (offline), unless `--dataset` names a real one. Timing starts after a warm-up
epoch and covers `--repeats` epochs of `--steps` steps each, dispatched back to back.

Modules: `loops` (the suites, and each loop compiled, timed and measured), `stepwise` (the
step-by-step model-parallel reference), `compiled` (every method's memory per device from its
loops compiled on abstract arguments, the `--memory-report` table), `command` (the command line,
bench.json and bench.md).
"""

from __future__ import annotations

from synthpart.bench.command import add_bench_command, format_markdown
from synthpart.bench.compiled import format_memory, memory_ratios, memory_report
from synthpart.bench.loops import (
    LOOP_KINDS,
    SUITES,
    Size,
    Suite,
    bench_model_parallel,
    bench_model_parallel_stepwise,
    bench_segment_loop,
    run_suite,
    suite_config,
    synthetic_dataset,
)

__all__ = [
    "LOOP_KINDS", "SUITES", "Size", "Suite", "add_bench_command", "bench_model_parallel",
    "bench_model_parallel_stepwise", "bench_segment_loop", "format_markdown", "format_memory",
    "memory_ratios", "memory_report", "run_suite", "suite_config", "synthetic_dataset",
]
