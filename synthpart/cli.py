"""The `synthpart` command.

  synthpart compare [CONFIG] [flags] --out DIR   every method on one config, one table
  synthpart train   [CONFIG] [flags] --out DIR   one configuration
  synthpart launch  [CONFIG] [flags] --out DIR   one configuration, one process per segment
                                                 group (jax.distributed; --local N to test)
  synthpart sweep   SWEEP.toml --out DIR         a grid of configurations, resumable
  synthpart budget  BUDGET.toml --out DIR        compute to a target accuracy, per method, over
                                                 grids of per-loop budgets and seeds, resumable
  synthpart report  DIR                          report.md and figures of a run or a sweep
  synthpart data list | verify NAME              the datasets and where they are
  synthpart bench   SUITE [flags] --out DIR      throughput, FLOP/s, compile time, memory
  synthpart export  RUN_DIR --method M --out DIR one trained network, for `synthpart.load_model`

Settings come from the TOML file, then the flags, then `--set KEY=VALUE` (any dotted setting).

`synthpart --debug COMMAND ...` (or any command with `--debug`, or SYNTHPART_DEBUG=1 in the
environment) prints the full traceback above an error's one line: for code of one's own that
raised (a `model.factory` function, a `--metrics-writer` factory or writer), the traceback of the
exception it raised.

Exit status: 0 done; 2 a user error (a bad setting or file, a run directory in use by another
process, too little memory or disk), printed as one line; 3 (`train` and `compare`) a method
diverged: its loss or parameters stopped being finite, its loss stayed at chance level, or it
blew up past 1000 times its reference or its first step's loss (see `synthpart.train.driver`);
every method's results are still written, with "status": "diverged" for that one; 130
interrupted; `launch` also 128 + the signal that stopped it (143 for SIGTERM, 129 for SIGHUP),
having stopped its processes.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import jax

from synthpart import __version__, metrics, rundir
from synthpart import experiment as exp
from synthpart.bench import add_bench_command
from synthpart.budget import add_budget_command
from synthpart.config import Config
from synthpart.data.command import add_data_commands
from synthpart.distributed import add_launch_command
from synthpart.errors import ConfigError, DiskFullError, ResourceError, SynthpartError
from synthpart.export import export_model
from synthpart.files import is_disk_full, read_user_text
from synthpart.prepare import add_run_arguments, load_config, prepare_fingerprinted, select_devices
from synthpart.records import divergence_reason
from synthpart.report import add_report_commands
from synthpart.results import format_table
from synthpart.runner import RunOptions, run_experiment
from synthpart.sweep import add_sweep_commands
from synthpart.train.divergence import is_out_of_memory
from synthpart.train.problem import Problem

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
DEBUG_HELP = ("print the full traceback above an error's one line (a function of one's own "
              "that raised: its exception's); also SYNTHPART_DEBUG=1 (default: off)")


def _out_dir(args: argparse.Namespace) -> Path:
  out = Path(args.out or f"runs/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}")
  if args.resume and args.overwrite:
    raise ConfigError("--resume and --overwrite exclude each other")
  if args.resume and not args.out:
    raise ConfigError("--resume needs --out DIR, the run to continue")
  rundir.check_out_path(out)  # a file, a symbolic link to nothing
  return out


def _metrics_options(args: argparse.Namespace) -> metrics.MetricsOptions:
  return metrics.MetricsOptions(tensorboard=args.tensorboard, wandb=args.wandb,
                                wandb_project=args.wandb_project,
                                factories=tuple(args.metrics_writer))


def _run(args: argparse.Namespace, experiment: exp.Experiment) -> int:
  """Trains into the run directory `--out`, which it claims (`rundir.claim`: locked throughout,
  refused where another command wrote it).

  Returns 0, or `EXIT_DIVERGED` where a method diverged (its results are kept all the same).
  """
  config = load_config(args)
  if args.command == "compare":
    exp.check_compare(config)
  out = _out_dir(args)
  with rundir.claim(out, "run"):
    try:
      return _run_locked(args, experiment, config, out)
    except DiskFullError as e:
      raise DiskFullError(f"{e}; free some space, then --resume continues from the last "
                          "complete checkpoint") from None
    except SynthpartError:
      raise
    except OSError as e:
      if is_disk_full(e):  # appending to log.txt
        raise DiskFullError(f"no space left on the device writing {e.filename or out}; free "
                            "some space, then --resume continues from the last complete "
                            "checkpoint") from None
      raise
    except Exception as e:
      if is_out_of_memory(e):  # outside any loop: initialising or evaluating a network
        raise ResourceError(f"out of memory: the network of {config.model.num_segments} "
                            f"segments does not fit on {jax.default_backend()} "
                            f"({_first_line(e)}); try smaller model.hidden (or model.layers) "
                            "or train.batch_size") from None
      raise


def _run_locked(args: argparse.Namespace, experiment: exp.Experiment, config: Config,
                out: Path) -> int:
  # Checked before any work: a run directory holding another run is never touched, and no run
  # trains for a metric writer whose package is missing. config.json records what the run
  # trains (the command and its method set): --resume refuses another.
  trains = {"command": args.command,
            "with_model_parallel": bool(getattr(args, "with_model_parallel", False))}
  rundir.prepare_run_dir(out, config.to_dict(), resume=args.resume,
                         overwrite=args.overwrite, dry_run=True, trains=trains)
  options = _metrics_options(args)
  metrics.check(options)
  # One device per segment by default; segment groups need the sum of their sizes.
  devices = select_devices(args.devices, config.num_devices)
  dataset, fingerprint = prepare_fingerprinted(config, progress=not args.quiet)

  def prepare(problem: Problem) -> None:
    # Again, now that the data are loaded: --resume refuses data other than the run's.
    rundir.prepare_run_dir(out, config.to_dict(), resume=args.resume,
                           overwrite=args.overwrite, fingerprint=fingerprint, trains=trains)

  def announce(problem: Problem) -> None:
    if not args.quiet:
      print(f"dataset {dataset.name} from {dataset.source}: {len(problem.train_y)} train, "
            f"{len(problem.test_y)} test, {problem.num_classes} classes; devices "
            f"{', '.join(f'{d.platform}:{d.id}' for d in problem.devices)}", file=sys.stderr)

  runs = run_experiment(config, dataset, out, experiment, devices,
                        RunOptions(args.command, quiet=args.quiet, metrics=options),
                        fingerprint=fingerprint, on_problem=prepare, on_start=announce)
  print(format_table(runs))
  print(f"results: {out / 'results.json'}")
  if dataset.name == "digits" and not args.quiet:
    print("This ran on the bundled 8x8 digits (scikit-learn), a small offline default. The "
          "paper's experiment: synthpart compare experiments/emnist_balanced.toml --download",
          file=sys.stderr)
  diverged = [r for r in runs if r.diverged]
  for r in diverged:  # quiet or not: a diverged method must not pass for a result
    print(f"synthpart: {r.method} diverged ({divergence_reason(r)}); kept in results.json with "
          f"status \"diverged\"", file=sys.stderr)
  return EXIT_DIVERGED if diverged else 0


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
  """The live metric writers beside --tensorboard (`synthpart.metrics`)."""
  parser.add_argument("--wandb", action="store_true",
                      help="also log to Weights & Biases (pip install wandb; WANDB_MODE=offline "
                           "keeps it local) (default: off)")
  parser.add_argument("--wandb-project", default="synthpart", metavar="NAME",
                      help="the Weights & Biases project (default: %(default)s)")
  parser.add_argument("--metrics-writer", action="append", default=[],
                      metavar="MODULE:FUNCTION",
                      help="a writer of your own: FUNCTION(run_dir, hparams) returns an object "
                           "with write_scalars, write_hparams, flush and close (repeatable; "
                           "default: none)")


def _shown_default(action: argparse.Action) -> str:
  """An option's default as --help states it: a flag is off; nothing given is "none"."""
  if action.nargs == 0:  # store_true, store_false, count: the flag is not given
    return "off"
  if action.default is None or action.default == []:
    return "none"
  return str(action.default)


def state_defaults(parser: argparse.ArgumentParser) -> None:
  """Appends "(default: ...)" to every option's help that does not state it yet, in `parser`
  and every subcommand's parser."""
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for sub in dict.fromkeys(action.choices.values()):
        state_defaults(sub)
    elif (action.option_strings and action.help != argparse.SUPPRESS
          and not action.required and "default" not in (action.help or "")
          and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
      action.help = f"{action.help or ''} (default: {_shown_default(action)})".strip()


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="synthpart",
      description="Partitioned neural network training with synthetic intermediate labels.")
  parser.add_argument("--version", action="version", version=f"synthpart {__version__}")
  parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = sub.add_parser("compare", help="conventional vs partitioned (every schedule, with and "
                     "without recovery) on one config")
  add_run_arguments(p)
  add_metrics_arguments(p)
  p.add_argument("--with-model-parallel", action="store_true",
                 help="also train model-parallel backprop (segments on their devices, "
                      "activations and gradients crossing every step, one compiled program "
                      "per epoch)")
  p.set_defaults(func=lambda a: _run(a, functools.partial(
      exp.compare, with_model_parallel=a.with_model_parallel)))
  p = sub.add_parser("train", help="train one configuration")
  add_run_arguments(p)
  add_metrics_arguments(p)
  p.set_defaults(func=lambda a: _run(a, exp.train_one))
  p = sub.add_parser("export", help="write a trained method's composed network (parameters and "
                     "a jax.export function of the raw inputs) for `synthpart.load_model`")
  p.add_argument("run", metavar="RUN_DIR", help="a finished run directory (train or compare)")
  p.add_argument("--method", required=True, help="the method to export, e.g. conventional or "
                 "pnn-sequential+recovery")
  p.add_argument("--out", required=True, metavar="DIR",
                 help="directory to write the model to: new or empty")
  p.add_argument("--overwrite", action="store_true",
                 help="replace the model exported in --out earlier, once the new one is "
                      "complete (a directory of anything else is refused)")
  p.set_defaults(func=lambda a: print(
      f"model: {export_model(a.run, a.method, a.out, overwrite=a.overwrite)}") or 0)
  add_data_commands(sub)
  add_sweep_commands(sub)
  add_budget_command(sub)
  add_report_commands(sub)
  add_bench_command(sub)
  add_launch_command(sub)
  for command in dict.fromkeys(sub.choices.values()):  # also after the command's name
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=DEBUG_HELP)
  state_defaults(parser)
  return parser


def _read_text(path: Path, what: str) -> str | None:
  """The text of a file a command is about to read, or None where it does not exist (the command
  says so itself); `ConfigError` where it is a directory, unreadable or not UTF-8."""
  try:
    if not path.exists():
      return None
  except OSError:
    pass  # a name too long, say: read_user_text names it
  return read_user_text(path, f"{what} {path}", ConfigError)


def _check_inputs(args: argparse.Namespace) -> None:
  """Checks the file `sweep` or `budget` reads before it reads it, so that a directory or a
  binary file is one line, not a traceback (`report` checks every file it reads itself:
  `synthpart.report.reading.check_directory`)."""
  if args.command in ("sweep", "budget"):
    _read_text(Path(args.file), f"{args.command} file")


def debugging(args: argparse.Namespace) -> bool:
  """Whether errors show their traceback: `--debug`, or SYNTHPART_DEBUG set (not to 0)."""
  return bool(getattr(args, "debug", False)) or os.environ.get("SYNTHPART_DEBUG", "0") not in (
      "", "0")


def one_line(message: str) -> str:
  """`message` on one line: a line break in it (a path or value the user gave may hold one) is
  written as the escape a shell would read back, so an error is always one line."""
  return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    _check_inputs(args)
    return args.func(args)
  except SynthpartError as e:
    if debugging(args):
      traceback.print_exception(e, file=sys.stderr)
    print(f"synthpart: error: {one_line(str(e))}", file=sys.stderr)
    return EXIT_USER_ERROR
  except KeyboardInterrupt:
    print("synthpart: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
