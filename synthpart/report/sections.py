"""Pieces every report shares: the settings line, images with captions, the cost figures, notes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from synthpart.curves import Document
from synthpart.report.figures import plot_accuracy_vs, plot_bytes_moved, plot_memory, plural, save
from synthpart.report.reading import memory_per_device


def image(out: Path, path: Path, caption: str) -> str:
  """A Markdown image of `path` (a PNG), relative to the report's folder `out`, with its caption
  and a link to the PDF beside it."""
  pdf = path.with_suffix(".pdf").relative_to(out).as_posix()
  return (f"![{path.stem.replace('_', ' ')}]({path.relative_to(out).as_posix()})\n\n"
          f"*{caption}* ([PDF]({pdf}))\n")


def setting_title(document: Document, label: str = "") -> str:
  """A figure title's setting: the dataset, the cuts, κ and the epochs per loop (and `label`,
  a sweep point's name, where given)."""
  c = document["config"]
  cuts = ", ".join(map(str, c["model"]["cuts"])) or "none"
  text = (f"{document['dataset']['name']}, cut after {cuts}, κ = {c['sil']['scale']:g}, "
          f"{plural(c['train']['epochs'], 'epoch')} per loop")
  return f"{text} ({label})" if label else text


def notes_section(notes: Sequence[str]) -> list[str]:
  """A "Notes" section of bullet points; nothing when there are none."""
  return ["## Notes", ""] + [f"- {n}" for n in notes] + [""] if notes else []


def settings_line(document: Document) -> str:
  """The dataset, network, SIL, training and devices of a results document, in one line."""
  c, d = document["config"], document["dataset"]
  t, r = c["train"], c["recovery"]
  segment_epochs = [s.get("epochs", t["epochs"]) for s in c.get("segments", [])]
  per_segment = f" (per segment {segment_epochs})" if segment_epochs else ""
  return (f"{d['name']} ({d['num_train']:,} train / {d['num_test']:,} test, "
          f"{d['num_classes']} classes); network {d['num_features']} → "
          f"{' → '.join(map(str, c['model']['hidden']))} → {d['num_classes']} "
          f"({c['model']['activation']}); cuts {c['model']['cuts']}; SIL {c['sil']['kind']} "
          f"κ={c['sil']['scale']:g}, {c['sil']['loss']}, noise {c['sil']['noise']:g}; "
          f"{t['optimizer']} lr {t['learning_rate']:g}, batch {t['batch_size']}, "
          f"{plural(t['epochs'], 'epoch')}{per_segment}; "
          f"recovery {plural(r['epochs'], 'epoch')} at lr {r['learning_rate']:g}; devices "
          f"{', '.join(document['devices'])} ({document.get('backend', '?')})")


def cost_figures(out: Path, documents: Sequence[Document], label: str, notes: list[str],
                 memory: bool) -> list[str]:
  """Accuracy vs FLOPs, vs wall time, bytes moved and memory, for one setting's documents."""
  figures = out / "figures"
  parts = []
  fig = plot_accuracy_vs(documents, "flops", 1e9, "cumulative training compute (GFLOP)",
                         f"Test accuracy vs training compute — {label}")
  parts.append(image(out, save(fig, figures / "accuracy_vs_flops.png"),
                     "Test accuracy against cumulative training FLOPs (analytic count: "
                     "forward 2·in·out, backward 4·in·out per example per trained layer, plus "
                     "biases, activations, optimizer; the sequential hand-over's forward pass "
                     "included)."))
  fig = plot_accuracy_vs(documents, "seconds", 1.0, "cumulative training wall time (s)",
                         f"Test accuracy vs wall time — {label}")
  parts.append(image(out, save(fig, figures / "accuracy_vs_wall_time.png"),
                     "Test accuracy against cumulative training wall time (compilation and "
                     "evaluation excluded)."))
  fig = plot_bytes_moved(documents, f"Bytes moved between devices — {label}")
  parts.append(image(out, save(fig, figures / "bytes_moved.png"),
                     "Bytes moved between devices while training, from each run's transfer "
                     "ledger (recovery's join goes through the host and is not in it)."))
  if not memory:
    notes.append("Memory figure not drawn (--no-memory).")
    return parts
  figure = memory_figure(out, documents, label, notes)
  if figure:
    parts.append(figure)
  return parts


def memory_figure(out: Path, documents: Sequence[Document], label: str,
                  notes: list[str]) -> str | None:
  """The recorded peak memory per device per method; a note for methods that recorded none."""
  memory, missing = memory_per_device(documents)
  if missing:
    notes.append(f"No memory recorded in results.json for {', '.join(missing)} (older results, "
                 "or loops that do not record it): left out of the memory figure.")
  if not memory:
    return None
  fig = plot_memory(memory, f"Peak memory per device — {label}")
  return image(out, save(fig, out / "figures" / "memory_per_device.png"),
               "Peak memory per device per method, as each run recorded it: XLA's buffer "
               "assignment of every loop it compiled (parameters, optimizer state, activations, "
               "workspace), the largest over the loops on a device, without the resident "
               "training data, which every method holds alike.")
