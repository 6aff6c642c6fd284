"""`synthpart report DIR`: a self-contained Markdown report of a run or a sweep, with figures.

Output: ``report.md`` plus figures in ``figures/`` beside it (in DIR, or in --out), each as a
PNG (shown in the report) and a PDF (for papers), drawn with matplotlib outside pyplot. Titles
name the dataset and the settings; every method has its own colour, line style and marker and is
labelled at its line's end; a method with recovery is drawn from where the same method without
it ends, so neither hides the other; panels that are compared share their y axis; compute is in
GFLOP, as in the tables.

- A run directory holds results.json (`synthpart compare` / `train`).
- A sweep directory holds sweep.json and one results.json per point and seed (`synthpart sweep`).

A report reads those files and nothing else: it trains, compiles and measures nothing.

Figures: test accuracy per epoch round of each method; accuracy against cumulative training FLOPs
(`synthpart.flops`: forward 2·in·out and backward 4·in·out per example per trained layer, plus
biases, activations and optimizer updates) and against training wall time; for a sweep,
accuracy (mean ± std over seeds) against each axis; bytes moved between devices per method (from
the runs' transfer ledgers); and peak memory per device per method (what every loop recorded
when it compiled, `segments[i]["memory"]`; methods whose runs recorded none are left out, with a
note).

Modules, top-down: `reading` (the files, and what the runs recorded), `figures` (matplotlib),
`sections` (pieces every report shares), `markdown` (the run and sweep reports), `command`.
"""

from __future__ import annotations

from synthpart.report.command import add_report_commands
from synthpart.report.figures import METHOD_STYLE, axis_position
from synthpart.report.markdown import MATCH_POINTS, run_report, sweep_report, write_report
from synthpart.report.reading import memory_per_device, run_peaks

__all__ = [
    "MATCH_POINTS", "METHOD_STYLE", "add_report_commands", "axis_position", "memory_per_device",
    "run_peaks", "run_report", "sweep_report", "write_report",
]
