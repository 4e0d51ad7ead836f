"""``python -m harness run | list | report | export | new-method | new-tuner | new-task``: bad input is one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError, error_line, os_error_message
from harness.run.executor_names import EXECUTORS

if TYPE_CHECKING:
    from harness.run.grid import GridSpec
    from harness.run.runner import RunSummary

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a program ended by SIGPIPE (`harness list | head -1`)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise HarnessError(f"{self.prog}: {message} (see --help)")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Benchmark data-free quantization methods for vision transformers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a grid of cells (resumable)",
                              description="Run methods x tasks x models x bits x seeds; finished cells are skipped. "
                                          "Unset flags take the --grid file's values, then the defaults: noise, "
                                          "real, psaq, psaq_v2, spdfq as published, and their images calibrated by "
                                          "repq, x digits x w4a4,w4a3 x seed 0 (docs/miniature.md, The default grid).")
    run.add_argument("--grid", type=Path, help="YAML file with the same settings as the flags (keys: methods, bits, ...)")
    run.add_argument("--methods", help="comma-separated method names")
    run.add_argument("--tasks", help="comma-separated task names")
    run.add_argument("--models", help="comma-separated model names (default: all of each task)")
    run.add_argument("--bits", help="bit specs: wXaY, fp, mpX[aY]")
    run.add_argument("--seeds", help="calibration seeds, e.g. 0,1,2")
    run.add_argument("--data", help="generators in place of each method's own, comma-separated (own: the method's own "
                                    "too); with --calib and no --methods, every generator x calibrator pair is a row "
                                    "(--data psaq,noise --calib minmax,repq)")
    run.add_argument("--calib", help="calibrators in place of each method's own, comma-separated (own: the method's "
                                     "own too: --methods psaq,spdfq --calib own,repq)")
    run.add_argument("--tune", help="fine-tune after calibration with these tuners, comma-separated; none: calibration "
                                    "only (default: each method's own protocol; docs/methods.md, Fine-tuning)")
    run.add_argument("--gen-opt", action="append", metavar="KEY=VALUE",
                     help="generator option (GENERATOR.KEY=VALUE for one generator only); repeatable")
    run.add_argument("--calib-opt", action="append", metavar="KEY=VALUE", help="calibrator option; repeatable")
    run.add_argument("--task-opt", action="append", metavar="KEY=VALUE", help="task option; repeatable")
    run.add_argument("--tune-opt", action="append", metavar="KEY=VALUE",
                     help="tuner option (TUNER.KEY=VALUE for one tuner only); repeatable")
    run.add_argument("--data-root", help="dataset root for tasks that read one from disk")
    run.add_argument("--checkpoint", help="local weights file for the model")
    run.add_argument("--batch-size", type=int, help="evaluation batch size (results do not depend on it)")
    run.add_argument("--profile", help="quantizer profile: standard (default) or psaq (docs/quantizer.md)")
    run.add_argument("--attn-quantizer", help="post-softmax quantizer: uniform (default), log2 or log_sqrt2")
    run.add_argument("--keep-first-last-fp", action="store_true", default=None,
                     help="leave patch embedding and head in FP")
    run.add_argument("--limit", type=int, help="evaluate on the first N images only")
    run.add_argument("--deploy", help="also export each quantized cell and measure it in this runtime: "
                                      "onnxruntime (accuracy, latency, size; docs/deploy.md)")
    run.add_argument("--results", type=Path, help="results directory, as for `report` (default: results)")
    run.add_argument("--out", type=Path, help="deprecated spelling of --results")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: one per available core)")
    run.add_argument("--executor", default="local", choices=EXECUTORS,
                     help="where cells run: here (local), one process per cell (isolated), Ray, Slurm via submitit")
    run.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="backend option, e.g. slurm_partition=gpu (submitit) or address=auto (ray); repeatable")
    run.add_argument("--force", action="store_true",
                     help="recompute cells that already have a record, with their calibration sets and FP metrics")
    run.add_argument("--recompute-stale", action="store_true",
                     help="recompute records, calibration sets and FP metrics made by other code than this checkout")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--no-report", action="store_true", help="do not rewrite OUT/report at the end of the grid")
    run.add_argument("--skip-unsupported", action="store_true",
                     help="skip the cells a task cannot support (see `list support`) instead of refusing the grid")
    run.add_argument("--dry-run", action="store_true",
                     help="print the cells, what OUT already holds and the time the rest should take; run nothing")
    run.add_argument("--workers-estimate", type=int, default=1, metavar="K",
                     help="with --dry-run: also the total time on K workers (e.g. K Ray GPUs)")

    listing = commands.add_parser("list", help="list methods, generators, calibrators, tasks, models, bit specs")
    listing.add_argument("what", nargs="?", default="all",
                         choices=["all", "methods", "generators", "calibrators", "tuners", "tasks", "models", "bits",
                                  "support"])

    report = commands.add_parser("report", help="write the report (Markdown and HTML) from all records")
    report.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    report.add_argument("--out", type=Path, help="where to write (default: RESULTS/report)")
    report.add_argument("--format", type=_csv, default=("html", "md"),
                        help="comma-separated output formats: html (one self-contained page), md (default: html,md)")

    export = commands.add_parser("export", help="export a finished cell's calibrated model to ONNX with Q/DQ pairs",
                                 description="Recalibrate a cell from its record (reusing the cached calibration "
                                             "set) and write it with QuantizeLinear/DequantizeLinear pairs; "
                                             "placements without an integer form are refused (docs/deploy.md).")
    export.add_argument("out", type=Path, help="the ONNX file to write")
    export.add_argument("--cell", required=True, help="cell id (the name of its record, records/<id>.json)")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    export.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    export.add_argument("--threads", type=int, help="torch CPU threads (default: one per available core)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")

    method = commands.add_parser("new-method", help="write a method plugin folder (and its test) from the template",
                                 description="Scaffold a working method: a generator and a calibrator called NAME, "
                                             "the MethodSpec pairing them, and a test running the conformance kit.")
    method.add_argument("name", help="method name, a lowercase Python identifier not yet registered")
    half = method.add_mutually_exclusive_group()
    half.add_argument("--generator-only", action="store_true", help="only a generator, paired with minmax ranges")
    half.add_argument("--calibrator-only", action="store_true", help="only a calibrator, paired with real images")
    method.add_argument("--dest", type=Path, help="parent folder (default: the repository's methods/; "
                                                  "elsewhere the plugin is not discovered, see docs/plugins.md)")
    method.add_argument("--template", choices=["plain", "synthesis"], default="plain",
                        help="the generator: plain uniform pixels (default), or noise optimized by the shared "
                             "pixel-synthesis loop (docs/methods.md, Pixel synthesis)")

    tuner = commands.add_parser("new-tuner", help="write a tuner plugin folder (and its test) from the template",
                                description="Scaffold a working tuner: the calibrated step sizes trained to the FP "
                                            "model's outputs, run after any pair with --tune NAME "
                                            "(docs/methods.md, Fine-tuning), and a test running the conformance kit.")
    tuner.add_argument("name", help="tuner name, a lowercase Python identifier not yet registered")
    tuner.add_argument("--dest", type=Path, help="parent folder (default: the repository's methods/; "
                                                 "elsewhere the plugin is not discovered, see docs/plugins.md)")

    task = commands.add_parser("new-task", help="write a task plugin folder (and its test) from the template",
                               description="Scaffold a working offline task: scikit-learn's 8x8 digits, a tiny ViT "
                                           "trained and cached at first use, and a test running the conformance kit.")
    task.add_argument("name", help="task name, a lowercase Python identifier not yet registered")
    task.add_argument("--dest", type=Path, help="parent folder (default: the repository's tasks/; "
                                                "elsewhere the plugin is not discovered, see docs/plugins.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from harness.entry.listing import keep_cache_current

        keep_cache_current()  # whatever loads the plugins brings `list`'s cache up to date
        args.argv = list(sys.argv[1:] if argv is None else argv)
        code = {"run": command_run, "list": command_list, "report": command_report, "export": command_export,
                "new-method": command_new_method, "new-tuner": command_new_tuner,
                "new-task": command_new_task}[args.command](args)
        sys.stdout.flush()  # a reader gone before the last line is seen here, not at interpreter exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # last resort behind the up-front checks: the path and what the system said
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as error:  # never a bare traceback for a user; DFQ_DEBUG=1 shows it
        if os.environ.get("DFQ_DEBUG"):
            raise
        print(f"internal error: {type(error).__name__}: {error} (set DFQ_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _discard_stdout() -> None:
    """The reader of our output went away (``| head``): that is its choice, not an error. What is still
    buffered goes to /dev/null, so the interpreter's final flush cannot fail again with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (tests capture it)
        pass


def set_threads(threads: int | None) -> None:
    """One torch thread per available core unless told: oversubscription was measured 15x slower here."""
    import torch

    if threads is not None and threads < 1:
        raise HarnessError(f"--threads must be a positive number, got {threads}")
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


def command_run(args: argparse.Namespace) -> int:
    from harness.plugin.options import parse_assignments
    from harness.run.gridfile import GRID_KEYS, load_grid_file, spec_from_settings
    from reports.aggregate import leaderboard, primary_metric, records_frame
    from reports.headline import closure_table, gap_closures

    results = _results_folder(args)
    set_threads(args.threads)
    settings = load_grid_file(args.grid) if args.grid else {}
    settings.update({key: getattr(args, key) for key in GRID_KEYS if getattr(args, key, None) is not None})
    spec = spec_from_settings(settings)
    if args.dry_run:
        from harness.run.plan import format_plan, plan_grid

        plan = plan_grid(spec, results, force=args.force, recompute_stale=args.recompute_stale)
        print(format_plan(plan, args.workers_estimate))
        return 0
    summary = run_grid(spec, results, device=args.device, executor=args.executor,
                       executor_options=parse_assignments(args.executor_opt, "executor"), force=args.force,
                       recompute_stale=args.recompute_stale, skip_unsupported=args.skip_unsupported,
                       progress=not args.no_progress)
    print_summary(summary, results, f"python -m harness {shlex.join(args.argv)} --recompute-stale")
    frame = records_frame(summary.records)
    if not frame.empty:
        for task, task_frame in frame.groupby("task"):
            metric = primary_metric(task_frame.dropna(axis=1, how="all"))
            print(f"\n{task} ({metric.removeprefix('metric.')}, mean ± std over seeds (n))")
            print(leaderboard(task_frame, metric).to_string())
            closures = gap_closures(task_frame.dropna(axis=1, how="all"), metric.removeprefix("metric."))
            if closures:
                print("\nwhat it shows: share of the gap from noise to real images closed, and the difference to real "
                      "images (* beyond seed noise, ≈ within it, ? one seed; docs/results.md, What the run shows)")
                print(closure_table(closures).to_string())
    if not args.no_report:
        report_after_run(results)
    return 1 if summary.failed else 0


def run_grid(spec: GridSpec, results: Path, *, device: str = "cpu", executor: str = "local",
             executor_options: dict | None = None, force: bool = False, recompute_stale: bool = False,
             skip_unsupported: bool = False, progress: bool = True) -> RunSummary:
    """Run a grid into ``results`` as ``run`` does (``harness.benchmark`` too): the device checked, what
    interrupted writes left removed, then every cell settled; the :class:`harness.run.runner.RunSummary`."""
    from harness.progress import set_progress
    from harness.run.runner import GridRunner
    from harness.store.io import clean_interrupted_writes

    _check_device(device)
    clean_interrupted_writes(results)
    set_progress(progress)
    runner = GridRunner(results, device=device, force=force, recompute_stale=recompute_stale)
    return runner.run(spec, executor=executor, executor_options=executor_options or {},
                      skip_unsupported=skip_unsupported)


def print_summary(summary: RunSummary, results: Path, recompute: str) -> None:
    """What ``run`` says after its grid: counts, then on stderr what was skipped, reused from other code
    (with ``recompute``, the call that recomputes it), invalid or failed."""
    from harness.store.records import ResultStore

    if summary.unsupported:
        print(f"skipped as unsupported: {' | '.join(summary.unsupported)}", file=sys.stderr)
    print(f"{summary.computed} cells computed, {summary.skipped} already finished, {summary.failed} failed; "
          f"records in {ResultStore(results).records_dir}")
    _warn_stale(summary.stale, recompute)
    _warn_invalid(summary.invalid)
    for record in summary.records:
        if record["status"] != "ok":
            kept = f" (the finished record is kept: {record['kept_finished_record']})" if "kept_finished_record" in record else ""
            print(f"  failed: {record['label']} {record['model']} {record['bits']} seed {record['seed']}: {record['error']}{kept}")


def _results_folder(args: argparse.Namespace) -> Path:
    """``--results``; ``run --out`` still works, with a line saying it is now ``--results``."""
    if args.out is not None:
        if args.results is not None and args.results != args.out:
            raise HarnessError(f"run got --results {args.results} and --out {args.out}; give --results only")
        print("warning: `run --out` is now `run --results` (the same name as in `report`); --out still works",
              file=sys.stderr)
    return args.results or args.out or Path("results")


def _warn_stale(stale: list, recompute: str) -> None:
    """Name what other code made and was reused, and the command that recomputes it."""
    if not stale:
        return
    print(f"warning: reused {len(stale)} result(s) made by other code than this checkout:", file=sys.stderr)
    for entry in stale:
        print(f"  {entry.kind} {entry.path} ({entry.what}): {'; '.join(entry.differences)}", file=sys.stderr)
    print(f"to recompute them: {recompute}", file=sys.stderr)


def _warn_invalid(invalid: list) -> None:
    """Invalid records are named, never counted as finished; their cells were recomputed if in the grid."""
    if not invalid:
        return
    print(f"warning: {len(invalid)} invalid record(s), not counted as finished (a recomputed cell sets its "
          "invalid record aside under invalid/):", file=sys.stderr)
    for entry in invalid:
        print(f"  {entry.path}: {entry.problem}", file=sys.stderr)


def report_after_run(results: Path) -> None:
    """The records are already on disk: a report that fails to render costs one line, never the run."""
    try:
        from reports.render import write_report

        pages = write_report(results, results / "report")
    except Exception as error:
        print(f"report not written ({error_line(error)}); retry with `python -m harness report --results {results}`",
              file=sys.stderr)
        return
    print(f"report: {', '.join(str(page) for page in pages)}")


DEVICE_TYPES = ("cpu", "cuda", "mps")  # devices a cell can compute on; meta tensors hold no values


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in DEVICE_TYPES:
        raise HarnessError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N, mps")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise HarnessError(f"device {device!r} is not usable here ({str(error).splitlines()[0]}); try --device cpu") from None


def command_list(args: argparse.Namespace) -> int:
    """From the listing cache when it matches the checkout (no plugin imported: harness.entry.listing), else from
    the registries."""
    from harness.entry.listing import SECTIONS, SUPPORT, listing
    from harness.plugin.discovery import check_sibling_packages

    check_sibling_packages()  # the cold path refuses a shadowing package; so does the cached one
    content = listing()
    for name in SECTIONS:
        if args.what not in ("all", name):
            continue
        rows = content[name]
        print(f"{name}:")
        width = max((len(row[0]) for row in rows), default=0)
        for key, text in rows:
            print(f"  {key.ljust(width)}  {text}")
    if args.what in ("all", SUPPORT):
        print("support (method x task; `run` checks its grid before the first cell):")
        print("\n".join(f"  {line}" for line in content[SUPPORT]))
    return 0


def command_report(args: argparse.Namespace) -> int:
    from harness.plugin.discovery import discover_plugins
    from harness.store.paths import check_writable_folder
    from harness.store.records import ResultStore
    from reports.render import FORMATS, write_report

    if not args.format or set(args.format) - set(FORMATS):
        raise HarnessError(f"--format accepts {', '.join(FORMATS)}; got {','.join(args.format) or 'nothing'}")
    store = ResultStore(args.results)
    if not store.records_dir.is_dir():
        raise HarnessError(f"no records in {store.records_dir}: run `python -m harness run --results {args.results}` first")
    discover_plugins()  # a broken plugin is refused by name, as by list and run, not reported as "other code"
    out = args.out or args.results / "report"
    check_writable_folder(out.resolve().parent, f"report folder {out}")  # the report is staged beside it
    for page in write_report(args.results, out, args.format):
        print(f"written: {page}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    from harness.deploy.cell_export import export_cell

    set_threads(args.threads)
    print(f"written: {export_cell(args.results, args.cell, args.out, overwrite=args.overwrite)}")
    return 0


def command_new_method(args: argparse.Namespace) -> int:
    from harness.entry.scaffold import new_method

    parts = "generator" if args.generator_only else "calibrator" if args.calibrator_only else "both"
    return _print_scaffold(new_method(args.name, args.dest, parts, args.template))


def command_new_tuner(args: argparse.Namespace) -> int:
    from harness.entry.scaffold import new_tuner

    return _print_scaffold(new_tuner(args.name, args.dest))


def command_new_task(args: argparse.Namespace) -> int:
    from harness.entry.scaffold import new_task

    return _print_scaffold(new_task(args.name, args.dest))


def _print_scaffold(scaffold) -> int:
    for path in scaffold.files:
        print(f"written: {path}")
    for step in scaffold.next_steps:
        print(step)
    return 0
