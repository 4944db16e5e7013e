"""The ``dask-datalog`` command line: ``main.py`` parses and dispatches, each command runs in its
module. ``command`` is the program: a resident process's run (resident.py) or ``run_to_exit``
here. Only ``os`` and ``sys`` are imported before that choice."""

import os
import sys

# The process whose start a run's time counts from (/proc/<it>/stat): this one, or the command
# a resident process's child runs for (resident.py).
command_process = "self"


def command() -> None:
    """The ``dask-datalog`` program: a ``run`` by this user's resident process where one serves
    this environment (resident.py), else ``run_to_exit`` here."""
    environment_defaults()
    if sys.argv[1:2] == ["run"]:
        try:
            from dask_datalog.cluster.cli import resident

            status = resident.run_in_resident(sys.argv[1:])
        except KeyboardInterrupt:  # before its child started: the resident process ends the child, if any
            sys.stderr.write("interrupted\n")
            os._exit(130)
        if status is not None:
            sys.stdout.flush()
            os._exit(status)
    run_to_exit()


def environment_defaults() -> None:
    """NumPy's OpenBLAS gets one thread unless the user chose: the engine makes no BLAS call,
    and starting a pool of them doubled NumPy's import (0.08 -> 0.14 s on the 2-core machine).
    The kernels' OpenMP threads sleep between parallel loops unless the user chose: libgomp's
    default spins them first, which on a busy machine took the cores the run needed (andersen
    10x beside other work: 3.0-3.3 -> 2.0-2.1 s of CPU). Its workers inherit both, and so does
    the resident process, whose environment must be the command's."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_to_exit() -> None:
    """``main.command`` in this process (a fresh one, or the resident process's child), the
    cyclic collector held off until the command has imported and loaded what it runs
    (``process.settle_collector``): the imports alone made some 150 collections, 20-40 ms of a
    0.2 s command, for no garbage. Its dataclasses' methods come compiled from the cache
    (engine/compile_cache.py), which ``main.command`` saves as it ends."""
    import gc

    gc.disable()
    try:
        from dask_datalog.engine import compile_cache

        compile_cache.install()  # before the imports that make dataclasses
        from dask_datalog.cluster.cli.process import interrupts_deferred

        with interrupts_deferred():
            from dask_datalog.cluster.cli.main import command as program
        program()
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling began (its imports): no traceback
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        os._exit(130)
