"""The `synthpart` command.

  synthpart compare [CONFIG] [flags] --out DIR   every method on one config, one table
  synthpart train   [CONFIG] [flags] --out DIR   one configuration
  synthpart launch  [CONFIG] [flags] --out DIR   one configuration, one process per segment
                                                 group (jax.distributed; --local N to test)
  synthpart data list | verify NAME              the datasets and where they are
  synthpart bench   SUITE [flags] --out DIR      throughput, FLOP/s, compile time, memory

Settings come from the TOML file, then the flags, then `--set KEY=VALUE` (any dotted setting).
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from synthpart import config as config_lib
from synthpart.errors import ConfigError, SynthpartError

# flag -> (dotted setting, help)
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--dataset": ("data.name", "dataset name (see `synthpart data list`); default digits"),
    "--data-dir": ("data.data_dir", "directory holding the dataset's files"),
    "--validation-size": ("data.validation_size", "examples held out of training and "
                          "evaluated on instead of the test set"),
    "--hidden": ("model.hidden", "hidden widths, comma separated (default 5 x 512)"),
    "--activation": ("model.activation", "relu | gelu | tanh | sigmoid | silu"),
    "--cuts": ("model.cuts", "cut after these dense layers, comma separated (default 3)"),
    "--dtype": ("model.dtype", "compute dtype: float32 | bfloat16 | float16"),
    "--param-dtype": ("model.param_dtype", "parameter dtype"),
    "--sil-kind": ("sil.kind", "uniform | gaussian | orthogonal"),
    "--kappa": ("sil.scale", "SIL scale kappa (> 0)"),
    "--noise": ("sil.noise", "std of the noise on SIL inputs in the parallel schedule"),
    "--sil-loss": ("sil.loss", "mse | l1 | cosine"),
    "--schedule": ("schedule", "sequential | parallel"),
    "--optimizer": ("train.optimizer", "adam | adamw | sgd | momentum | rmsprop | lamb"),
    "--lr": ("train.learning_rate", "learning rate of every loop"),
    "--batch-size": ("train.batch_size", "batch size of every loop"),
    "--epochs": ("train.epochs", "epochs of every segment and of the baseline"),
    "--recovery-epochs": ("recovery.epochs", "end-to-end epochs after composing (0: none)"),
    "--recovery-lr": ("recovery.learning_rate", "learning rate of the recovery epochs"),
    "--seed": ("seed", "seed of the run's PRNG key"),
    "--group-sizes": ("placement.groups", "devices of each segment, comma separated; a segment "
                      "trains data-parallel on its group (default one device each)"),
}


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("config", nargs="?", help="TOML config file (optional)")
  group = parser.add_argument_group("settings (override the config file)")
  for flag, (_, text) in SETTING_FLAGS.items():
    group.add_argument(flag, dest=flag[2:].replace("-", "_"), metavar="V", help=text)
  group.add_argument("--download", action="store_true", help="download the dataset if missing")
  group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any setting by its dotted name, e.g. segments.1.epochs=5 (repeatable)")
  parser.add_argument("--out", default=None, metavar="DIR",
                      help="run directory for results.json (default runs/<command>-<time>)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the earlier run in --out")
  parser.add_argument("--resume", action="store_true",
                      help="continue the interrupted run in --out from its checkpoints")
  parser.add_argument("--devices", type=int, default=0, metavar="N",
                      help="devices to spread segments over (default: one per segment, "
                           "simulated on CPU)")
  parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
  parser.add_argument("--tensorboard", action="store_true",
                      help="also write TensorBoard event files under DIR/tensorboard")


def load_config(args: argparse.Namespace) -> config_lib.Config:
  """The TOML file, then the flags, then --set, as one validated `Config`."""
  overrides: dict[str, Any] = {}
  for flag, (dotted, _) in SETTING_FLAGS.items():
    value = getattr(args, flag[2:].replace("-", "_"))
    if value is not None:
      overrides[dotted] = value
  if args.download:
    overrides["data.download"] = True
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. train.epochs=5")
    overrides[key.strip()] = value.strip()
  return config_lib.load(args.config, overrides)


def select_devices(count: int, num_segments: int) -> list[Any]:
  """Up to `count` devices (0: one per segment). On CPU, that many devices are simulated."""
  import jax
  wanted = count or num_segments
  if count < 0:
    raise ConfigError(f"--devices must be >= 0, got {count}")
  try:
    jax.config.update("jax_num_cpu_devices", max(wanted, 1))
  except RuntimeError:
    pass  # the backend is already up (an embedding program chose): use the devices it has
  devices = jax.devices()
  return devices[:wanted] if wanted <= len(devices) else devices


def _out_dir(args: argparse.Namespace) -> Path:
  out = Path(args.out or f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
  if args.resume and args.overwrite:
    raise ConfigError("--resume and --overwrite exclude each other")
  if args.resume and not args.out:
    raise ConfigError("--resume needs --out DIR, the run to continue")
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out {out} exists and is not a directory")
  return out


def _run(args: argparse.Namespace, experiment: Callable[..., list]) -> int:
  from synthpart import experiment as exp
  from synthpart.data import load_dataset, split_validation
  from synthpart.progress import Progress
  from synthpart.train.schedules import make_problem

  from synthpart import checkpoint

  config = load_config(args)
  out = _out_dir(args)
  # Checked before any work: a run directory holding another run is never touched.
  checkpoint.prepare_run_dir(out, config.to_dict(), resume=args.resume,
                             overwrite=args.overwrite, dry_run=True)
  # One device per segment by default; segment groups need the sum of their sizes.
  devices = select_devices(args.devices, config.num_devices)
  dataset = load_dataset(config.data.name, config.data.data_dir, download=config.data.download,
                         progress=not args.quiet)
  if config.data.validation_size:
    dataset, held_out = split_validation(dataset, config.data.validation_size, config.seed)
    dataset = dataclasses.replace(dataset, test_images=held_out.test_images,
                                  test_labels=held_out.test_labels)
  problem = make_problem(config, dataset, devices)
  checkpoint.prepare_run_dir(out, config.to_dict(), resume=args.resume,
                             overwrite=args.overwrite)
  progress = Progress(quiet=args.quiet, log_path=out / "log.txt")
  policy = checkpoint.Policy(out, config.checkpoint.every, config.checkpoint.keep)

  def keep_results(runs: list) -> None:
    exp.write_json_atomic(out / "results.json",
                          exp.results_document(args.command, problem, dataset.source, runs))

  if not args.quiet:
    print(f"dataset {dataset.name} from {dataset.source}: {len(problem.train_y)} train, "
          f"{len(problem.test_y)} test, {problem.num_classes} classes; devices "
          f"{', '.join(f'{d.platform}:{d.id}' for d in problem.devices)}", file=sys.stderr)
  runs = experiment(problem, progress, checkpoints=policy, on_result=keep_results)
  keep_results(runs)
  document = exp.results_document(args.command, problem, dataset.source, runs)
  if getattr(args, "tensorboard", False):
    from synthpart.tblog import write_tensorboard
    write_tensorboard(document, out / "tensorboard")
  print(exp.format_table(runs))
  print(f"results: {out / 'results.json'}")
  if dataset.name == "digits" and not args.quiet:
    print("This ran on the bundled 8x8 digits (scikit-learn), a small offline default. The "
          "paper's experiment: synthpart compare experiments/emnist_balanced.toml --download",
          file=sys.stderr)
  return 0


def build_parser() -> argparse.ArgumentParser:
  from synthpart.experiment import compare, train_one
  parser = argparse.ArgumentParser(
      prog="synthpart",
      description="Partitioned neural network training with synthetic intermediate labels.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = sub.add_parser("compare", help="conventional vs partitioned (both schedules, with and "
                     "without recovery) on one config")
  _add_run_arguments(p)
  p.add_argument("--with-model-parallel", action="store_true",
                 help="also train model-parallel backprop (segments on their devices, "
                      "activations and gradients crossing every step); slow: one dispatch per "
                      "segment per step")
  p.set_defaults(func=lambda a: _run(a, functools.partial(
      compare, with_model_parallel=a.with_model_parallel)))
  p = sub.add_parser("train", help="train one configuration")
  _add_run_arguments(p)
  p.set_defaults(func=lambda a: _run(a, train_one))
  try:
    from synthpart.data.cli import add_data_commands
  except ImportError:
    pass
  else:
    add_data_commands(sub)
  from synthpart.report import add_report_commands
  from synthpart.sweep import add_sweep_commands
  add_sweep_commands(sub)
  add_report_commands(sub)
  from synthpart.bench import add_bench_command
  add_bench_command(sub)
  from synthpart.distributed import add_launch_command
  add_launch_command(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except SynthpartError as e:
    print(f"synthpart: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("synthpart: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
