"""The ``dask-datalog`` command line: ``main.py`` parses and dispatches, each command runs in its
module. ``command`` is the program; the collector's policy for its one process lives here."""

import gc
import os

# Young objects a collection waits for once the command runs (Python's default: 700). The run's
# loops make few Python objects and rarely a cycle; a collection every 700 of them cost doop's
# 170 iterations over 60 strata tens of milliseconds.
RUN_THRESHOLD = 20_000


def command() -> None:
    """The ``dask-datalog`` program (``main.command``), the cyclic collector held off until the
    command has imported and loaded what it runs (``settle_collector``): the imports alone made
    some 150 collections, 20-40 ms of a 0.2 s command, for no garbage. NumPy's OpenBLAS gets one
    thread unless the user chose: the engine makes no BLAS call, and starting a pool of them
    doubled NumPy's import (0.08 -> 0.14 s on the 2-core machine). The kernels' OpenMP threads
    sleep between parallel loops unless the user chose: libgomp's default spins them first,
    which on a busy machine took the cores the run needed (andersen 10x beside other work:
    3.0-3.3 -> 2.0-2.1 s of CPU). Its workers inherit both."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    gc.disable()
    from dask_datalog.cluster.cli.main import command as program

    program()


def settle_collector() -> None:
    """Where a command starts its work: what was imported and loaded is frozen (never scanned
    again) and the collector runs from here, every RUN_THRESHOLD young objects. Only in the
    process ``command`` started (the collector is off): a caller of ``main`` keeps its own."""
    if not gc.isenabled():
        gc.freeze()
        gc.set_threshold(RUN_THRESHOLD)
        gc.enable()
