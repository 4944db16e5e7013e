"""``dask-datalog run``. Bad programs and fact files print ``file:line:col: error: message`` and
exit 1; every other way a run ends without its result prints one line and exits with its own
status (engine/errors.py); nothing the user wrote ends in a traceback.

By default a run goes where it is fastest (``choose_mode``): in this process on one CPU or GPU,
an embedded local Dask cluster (one worker per GPU) on several GPUs; ``--cluster``/``--workers``
start the embedded cluster anyway, ``--scheduler``/``--scheduler-file`` submit to an existing
cluster (``--tls-*``: over TLS, as ``dask worker`` takes them; without them Dask's own
configuration applies), and ``--no-cluster`` evaluates in this process without Dask."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dask_datalog.cluster import cli
from dask_datalog.cluster.api import Program, Result
from dask_datalog.cluster.cli.process import settle_collector
from dask_datalog.engine.checkpoint import Checkpoints, Manifest
from dask_datalog.engine.errors import (
    EXIT_SUSPENDED,
    EXIT_TERMINATED,
    DatalogError,
    Suspended,
    Terminated,
    human_bytes,
)
from dask_datalog.engine.functors import DEFAULT_LIBRARIES, DEFAULT_LIBRARY_DIRS
from dask_datalog.engine.memory import peak_rss
from dask_datalog.engine.plan import plan_program
from dask_datalog.spmd.options import RunOptions
from dask_datalog.spmd.progress import iteration_events


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """``dask-datalog run``: the exit status (0, or the failure's: engine/errors.py)."""
    if args.workers is not None and (args.scheduler or args.scheduler_file or args.no_cluster):
        parser.error("--workers sizes the embedded cluster; it cannot go with --scheduler, --scheduler-file or --no-cluster")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    tls_given = args.tls_ca_file or args.tls_cert or args.tls_key
    if tls_given and not (args.scheduler or args.scheduler_file):
        parser.error("--tls-ca-file, --tls-cert and --tls-key are for a cluster named by --scheduler or --scheduler-file")
    if tls_given and not (args.tls_ca_file and args.tls_cert):
        parser.error("TLS needs both --tls-ca-file and --tls-cert (and --tls-key unless the certificate file holds the key)")
    if args.format == "parquet" and args.output_dir == "-":
        parser.error("--format parquet needs an output directory, not '-'")
    if args.resume and args.checkpoint and args.resume.resolve() != args.checkpoint.resolve():
        parser.error("--resume DIR goes on checkpointing into DIR; --checkpoint cannot name another directory")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    for flag in ("timeout", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            parser.error(f"--{flag.replace('_', '-')} must be a number of seconds, 0 or more")
    memory_limit = _bytes(parser, args.memory_limit)
    mode, why = choose_mode(args)
    program = None
    suspend = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: _on_sigterm(suspend))
    # On a cluster, Ctrl-C asks the run to stop on every worker (RunOptions.stop) rather than
    # raising KeyboardInterrupt wherever the main thread is: inside distributed's client, during
    # the cluster's start or close, that hung the command (seen once under load). In process the
    # interrupt stops the work at once, as before.
    interrupt = threading.Event()
    previous_int = signal.signal(signal.SIGINT, lambda *_: _on_sigint(interrupt)) if mode != IN_PROCESS else None
    checkpoints: CheckpointDirectory | None = None
    try:
        program = Program.from_file(
            args.program,
            args.include_dir,
            _macros(args.macro),
            not args.no_preprocessor,
            libraries=args.libraries or DEFAULT_LIBRARIES,
            library_dirs=args.library_dir or DEFAULT_LIBRARY_DIRS,
        )
        if args.profile:  # before the run: a long run must not fail at its end for this
            _check_writable(args.profile, "the profile")
        # As in Soufflé, -F and -D win over the program's pragmas.
        args.fact_dir = args.fact_dir or Path(program.ir.pragma("fact-dir") or ".")
        args.output_dir = args.output_dir or program.ir.pragma("output-dir") or "."
        with ExitStack() as stack:
            checkpoints = stack.enter_context(CheckpointDirectory(args, mode))
            options = RunOptions(
                checkpoint_dir=checkpoints.directory,
                checkpoint_every=checkpoints.every,
                resume=args.resume is not None,
                retries=args.retries,
                timeout=args.timeout,
                memory_limit=memory_limit,
                suspend=suspend,
                stop=interrupt if mode != IN_PROCESS else None,
                profile=bool(args.profile or args.stats),
                keep=program.ir.shown,  # the command reads nothing else: the rest is freed once used
            )
            run = CommandRun(program, args, stack, mode, why)
            settle_collector()  # the program, the cluster's client: loaded; the work starts
            result = run.evaluate(options)
            run.note("writing the outputs")
            result.write(args.output_dir, args.format, sys.stdout, run.written)
            result.stats["mode"] = {"mode": mode, "why": why}
            if args.profile:
                _write_json(args.profile, result.profile, "the profile")
            if args.stats:
                _write_json(args.stats, _stats_document(result), "the statistics")
            summary = run.summary(result)
        summary()
    except Suspended as stopped:
        assert checkpoints is not None
        return checkpoints.resume_from(f"stopped by SIGTERM {stopped.position}; the checkpoint", argv)
    except Terminated as err:
        if interrupt.is_set():
            print("interrupted: the run was stopped on every worker", file=sys.stderr)
            return 130
        # Stopped at once (a second SIGTERM, or a worker lost meanwhile): the run's latest
        # committed checkpoint, if it has one, still resumes (commits are atomic).
        manifest = checkpoints.resumable() if checkpoints is not None else None
        if manifest is not None:
            assert checkpoints is not None
            return checkpoints.resume_from(f"stopped by SIGTERM: {err}; the latest checkpoint ({manifest.position})", argv)
        hint = (
            "no checkpoint had been written yet"
            if args.checkpoint or args.resume
            else "give --checkpoint DIR to be able to resume"
        )
        print(f"stopped by SIGTERM: {err}; {hint}", file=sys.stderr)
        return EXIT_TERMINATED
    except DatalogError as err:  # every other way a run ends without its result (engine/errors.py)
        if program is None and err.pos is None:  # the program file itself: name it first
            print(f"{args.program}: error: {err.message}", file=sys.stderr)
        else:
            print(str(err), file=sys.stderr)
        return err.exit_status
    except BrokenPipeError:  # `-D - | head`: the reader left; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("interrupted: the run was stopped on every worker", file=sys.stderr)
        return 130
    finally:
        # The exit status is decided here: a SIGTERM now (a batch system signals every process
        # of a job at once, at its time limit or on scancel) must not turn it into 143. The
        # command itself (no argv: it exits next) ignores it; a caller in this process gets its
        # handler back, unless the run was stopped by one.
        signal.signal(signal.SIGTERM, signal.SIG_IGN if suspend.is_set() or argv is None else previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
    if interrupt.is_set():  # the run had ended when Ctrl-C came: its outputs are written
        print("interrupted: after the run and its outputs", file=sys.stderr)
        return 130
    return 0


def _write_json(path: Path, document: Any, what: str) -> None:
    import json  # only --stats and --profile write JSON

    try:
        path.write_text(json.dumps(document, indent=1))
    except OSError as error:
        raise DatalogError(None, f"cannot write {what} to {path}: {error.strerror or error}") from None


def _check_writable(path: Path, what: str) -> None:
    """A DatalogError now if ``path`` cannot be written later (a directory, or a folder that
    is missing or not writable)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DatalogError(None, f"cannot write {what} to {path}: it is a directory")
    if not folder.is_dir():
        raise DatalogError(None, f"cannot write {what} to {path}: no directory {folder}")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DatalogError(None, f"cannot write {what} to {path}: permission denied")


RULES_IN_STATS = 20


def _stats_document(result: Result) -> dict[str, Any]:
    """The statistics as ``--stats`` writes them: the costliest rules instead of the whole
    profile (which ``--profile`` writes)."""
    stats = {key: value for key, value in result.stats.items() if key != "profile"}
    if result.profile is not None:
        stats["rules"] = result.profile["rules"][:RULES_IN_STATS]
    return stats


def _on_sigint(interrupt: threading.Event) -> None:
    """The first Ctrl-C stops the run on every worker at its next check (a fraction of a
    second); a second one interrupts the command where it is."""
    if interrupt.is_set():
        raise KeyboardInterrupt
    interrupt.set()


def _on_sigterm(suspend: threading.Event) -> None:
    """The first SIGTERM asks for a checkpoint at the next iteration boundary; a second one
    stops at once."""
    if suspend.is_set():
        raise Terminated("a second SIGTERM stopped the run at once")
    suspend.set()


def _bytes(parser: argparse.ArgumentParser, text: str | None) -> int | None:
    if text is None:
        return None
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError):
        parser.error(f"--memory-limit: {text!r} is not a size (e.g. 500MB, 4GiB)")
    if value <= 0:
        parser.error("--memory-limit must be more than 0 bytes")
    return value


class CheckpointDirectory:
    """Where this command checkpoints: ``--resume``/``--checkpoint`` DIR (kept), else for the
    embedded cluster or an in-process run a temporary directory (removed at the end unless the
    run stopped into it on SIGTERM; in process only SIGTERM writes one there: there is no worker
    to lose). An external cluster without ``--checkpoint`` gets none."""

    def __init__(self, args: argparse.Namespace, mode: str):
        self.args = args
        self.mode = mode
        self.every = args.checkpoint_every
        self.temporary: Path | None = None
        given = args.resume or args.checkpoint
        self.directory: str | None = str(given.resolve()) if given is not None else None
        self.before: str | None = None  # the latest checkpoint's name when the run started

    def __enter__(self) -> CheckpointDirectory:
        if self.directory is None and self.mode != CLUSTER:
            import tempfile

            self.temporary = Path(tempfile.mkdtemp(prefix="dask-datalog-checkpoint-"))
            self.directory = str(self.temporary)
            if self.mode == IN_PROCESS and self.every is None:
                self.every = float("inf")
        if self.directory is not None and self.temporary is None:  # a directory just made holds none
            self.before = Checkpoints(self.directory).latest_name()
        return self

    def resumable(self) -> Manifest | None:
        """The latest checkpoint if this run wrote it or resumed from it (not one an earlier
        run left in a ``--checkpoint`` directory)."""
        if self.directory is None:
            return None
        checkpoints = Checkpoints(self.directory)
        name = checkpoints.latest_name()
        if name is None or (name == self.before and not self.args.resume):
            return None
        return checkpoints.latest()

    def resume_from(self, stopped: str, argv: list[str] | None) -> int:
        """Says how the run stopped, where its checkpoint is and the command that continues."""
        assert self.directory is not None
        print(f"{stopped} is in {self.directory}\ncontinue with: {_resume_command(argv, self.directory)}", file=sys.stderr)
        return EXIT_SUSPENDED

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        kept = isinstance(error, Suspended) or (isinstance(error, Terminated) and self.resumable() is not None)
        if self.temporary is not None and not kept:
            import shutil

            shutil.rmtree(self.temporary, ignore_errors=True)


def _resume_command(argv: list[str] | None, directory: str) -> str:
    """The command line that continues this run: the same, with ``--resume DIR``."""
    import shlex

    words = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--resume", "--checkpoint"):
            skip = True
            continue
        if word.startswith(("--resume=", "--checkpoint=")):
            continue
        kept.append(word)
    return shlex.join(["dask-datalog", *kept, "--resume", directory])


IN_PROCESS, EMBEDDED, CLUSTER = "in process", "embedded cluster", "cluster"


def _since_start() -> float:
    """Seconds since the command's process started (``cli.command_process``: this one, or the
    command a resident process runs for): its whole wall time, interpreter and imports
    included. Linux: the process's start in clock ticks since boot (/proc/PID/stat) against
    CLOCK_BOOTTIME, exact to a tick; psutil's create_time adds the boot time, which /proc/stat
    gives in whole seconds, and was up to a second off."""
    proc = f"/proc/{cli.command_process}/stat"
    if hasattr(time, "CLOCK_BOOTTIME") and os.path.exists(proc):
        with open(proc) as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    import psutil  # comes with distributed

    return time.time() - psutil.Process().create_time()


def _macros(values: list[str]) -> dict[str, str]:
    """-M values: whitespace-separated ``NAME=VALUE`` or ``NAME`` (1, as cpp's -D)."""
    macros = {}
    for value in values:
        for word in value.split():
            name, _, text = word.partition("=")
            macros[name] = text if "=" in word else "1"
    return macros


def choose_mode(args: argparse.Namespace) -> tuple[str, str]:
    """Where the run goes, and why. One process is the fastest way on one machine with at most
    one GPU: the CPU kernels use every core, and workers would add start-up and exchange (the
    side-by-side table in docs/benchmarks.md); several GPUs get a worker each."""
    if args.no_cluster:
        return IN_PROCESS, "--no-cluster"
    if args.scheduler or args.scheduler_file:
        return CLUSTER, "--scheduler" if args.scheduler else "--scheduler-file"
    if args.workers is not None:
        return EMBEDDED, f"--workers {args.workers}"
    if args.cluster:
        return EMBEDDED, "--cluster"
    if args.backend in ("cupy", "auto"):
        from dask_datalog.engine.backend import gpu_count

        gpus = gpu_count()
        if gpus > 1:
            return EMBEDDED, f"{gpus} GPUs: one worker each"
    return IN_PROCESS, "one process is fastest on one machine"


class CommandRun:
    """One run as the command shows it: evaluated where ``mode`` says, with a live progress
    line on a terminal (loading, each stratum and iteration, writing), then one summary line."""

    def __init__(self, program: Program, args: argparse.Namespace, stack: ExitStack, mode: str, why: str):
        self.program, self.args, self.stack, self.mode, self.why = program, args, stack, mode, why
        self.display: Any = None
        self.client: Any = None
        if mode != IN_PROCESS:
            self.client = stack.enter_context(cluster_client(args))
        if not args.quiet and sys.stderr.isatty():
            from dask_datalog.cluster.cli.progress import ProgressDisplay

            strata = len(plan_program(program.ir).strata)
            dashboard = self.client.dashboard_link if self.client is not None else None
            self.display = stack.enter_context(ProgressDisplay(strata, dashboard, f"{mode} ({why})"))

    def evaluate(self, options: RunOptions) -> Result:
        args = self.args
        if self.client is None:
            on_iteration = iteration_events(0, self.display.handler) if self.display is not None else None
            return self.program.run(fact_dir=args.fact_dir, backend=args.backend, on_iteration=on_iteration, options=options)
        result = self.program.run(
            fact_dir=args.fact_dir,
            backend=args.backend,
            client=self.client,
            progress=self.display.handler if self.display is not None else None,
            replicate_below=args.replicate_below,
            options=options,
            exchange=args.exchange,
        )
        self.stack.callback(result.close)
        return result

    def note(self, text: str) -> None:
        if self.display is not None:
            self.display.handler({"note": text, "keep": True})

    def written(self, relation: str, n: int) -> None:
        """Each output's bytes as they are written (in-process runs)."""
        self.note(f"writing {relation}: {human_bytes(n)}")

    def summary(self, result: Result) -> Callable[[], None]:
        """What prints the one line on stderr: where it ran, on how many workers, how long (the
        whole command's time when it is printed: after the cluster closed), what it derived, and
        the largest process's peak memory."""
        stats = result.stats
        workers = stats.get("workers", 1)
        heads = {rule.head.relation for rule in self.program.ir.rules}
        derived = sum(n for name, n in result.sizes.items() if name in heads)  # the inputs are not derived
        peaks = [peak_rss()] + [w.get("peak_rss", 0) for w in stats.get("per_worker", [])]

        def show() -> None:
            if not self.args.quiet:
                print(
                    f"done: {self.mode} ({self.why}), {workers} worker{'s' if workers != 1 else ''}, "
                    f"{_since_start():.2f} s, {derived:,} tuples derived, peak memory {max(peaks) / 2**20:,.0f} MiB",
                    file=sys.stderr,
                )
            if self.args.profile and not self.args.quiet and result.profile is not None:
                from dask_datalog.engine.execution import profile  # only a profiled run needs it

                print(profile.table(result.profile), file=sys.stderr)

        return show


def cluster_client(args: argparse.Namespace) -> Any:
    """A client of the cluster the arguments name, or of a new embedded one (closed on exit)."""
    from dask_datalog.cluster.runtime.connect import TlsFiles, embedded_client, external_client
    from dask_datalog.cluster.runtime.worker_setup import quiet_logs

    quiet_logs()  # the command's stderr holds the run's own lines (worker_setup.py says why)
    if args.scheduler or args.scheduler_file:
        tls = TlsFiles(args.tls_ca_file, args.tls_cert, args.tls_key) if args.tls_ca_file else None
        return external_client(args.scheduler, args.scheduler_file, tls)
    return embedded_client(args.workers, args.backend)
