"""The command's process: when its cyclic collector runs, and Ctrl-C while it imports. Kept out
of the package's ``__init__``, which every command imports first (the resident process's
client, cluster/cli/resident.py, starts in milliseconds: it imports neither this nor
``contextlib`` and ``threading``)."""

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator

# Young objects a collection waits for once the command runs (Python's default: 700). The run's
# loops make few Python objects and rarely a cycle; a collection every 700 of them cost doop's
# 170 iterations over 60 strata tens of milliseconds.
RUN_THRESHOLD = 20_000


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C while the block runs (the command's imports) is acted on when it ends, as a
    KeyboardInterrupt there: an import cut short can fail as something else (NumPy's C
    extension then reports an ImportError) and print its traceback. Only in the main thread,
    the one signals reach."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: noted.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        raise KeyboardInterrupt


def settle_collector() -> None:
    """Where a command starts its work: what was imported and loaded is frozen (never scanned
    again) and the collector runs from here, every RUN_THRESHOLD young objects. Only in the
    process ``command`` started (the collector is off): a caller of ``main`` keeps its own."""
    if not gc.isenabled():
        gc.freeze()
        gc.set_threshold(RUN_THRESHOLD)
        gc.enable()
