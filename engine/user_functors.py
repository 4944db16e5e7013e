"""User-defined functors (``.functor f(a: T, ...): R``, called ``@f(...)``) bound to what computes
them: ``bind``, where a program is loaded, gives each called functor its implementation (a Python
function from the API, else a C function of a shared library found as Soufflé's interpreter finds
it, ``-L DIR``/``-l NAME``); ``implementations``, on every shard, turns the bound declarations
into the callables the evaluator calls once per distinct row of arguments, a whole column at a
time: a C function through the compiled loop ``call_functor`` (kernels.c), a Python function on
NumPy arrays. The C types are Soufflé's with its default 32-bit domain (souffle/RamTypes.h):
number ``int32_t``, unsigned ``uint32_t``, float ``float``, symbol ``const char *``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine import texts as tx
from dask_datalog.engine.errors import DatalogError
from dask_datalog.engine.functors import (
    DEFAULT_LIBRARIES,
    DEFAULT_LIBRARY_DIRS,
    USER_PREFIX,
    Context,
    UserFunctor,
    decode_float,
    decode_int,
    encode_float,
    encode_int,
)

# A Python functor's arrays, by parameter or result type; symbols are NumPy strings.
DTYPES: dict[str, Any] = {"number": np.int32, "unsigned": np.uint32, "float": np.float32, "symbol": np.dtypes.StringDType()}
# One call at a time in a process (shards may be threads of one): a functor need not be
# reentrant, as Soufflé's interpreter assumes (a C functor may return a static buffer).
_CALLING = threading.Lock()


def library_paths(library: str, dirs: Sequence[str]) -> list[str]:
    """Where Soufflé's interpreter looks for ``-l library``: ``DIR/lib<library>.so`` for each
    ``-L DIR`` in order, then ``lib<library>.so`` wherever the dynamic loader finds it; a name
    with a ``/`` only the last way."""
    prefixes = [] if "/" in library else [d if d.endswith("/") else d + "/" for d in dirs]
    return [f"{prefix}lib{library}.so" for prefix in (*prefixes, "")]


def bind(
    program: ir.Program,
    python: Mapping[str, Callable[..., Any]] | None = None,
    libraries: Sequence[str] = DEFAULT_LIBRARIES,
    library_dirs: Sequence[str] = DEFAULT_LIBRARY_DIRS,
) -> ir.Program:
    """``program`` with each user functor its rules call bound: to ``python[name]``, else to the
    C function ``name`` of the first of ``libraries`` that has it (libraries are opened only when
    a functor needs one). DatalogError, at the ``.functor``, for a functor nothing implements,
    naming where it was looked for; for a name in ``python`` that no ``.functor`` declares."""
    python = dict(python or {})
    declared = {f.name: f for f in program.functors}
    for name, function in python.items():
        if name not in declared:
            raise DatalogError(
                None, f"functors: no .functor declares {name}" + (f" (declared: {', '.join(declared)})" if declared else "")
            )
        if not callable(function):
            raise DatalogError(declared[name].pos, f"functors: {name} is given {type(function).__name__}, not a function")
    called = {c.name.removeprefix(USER_PREFIX) for c in ir.calls(program.rules) if c.name.startswith(USER_PREFIX)}
    opened: list[tuple[str, ctypes.CDLL]] | None = None
    missing: list[str] = []
    bound = []
    for f in program.functors:
        if f.name in python:
            bound.append(replace(f, function=python[f.name]))
            continue
        if f.name not in called:
            bound.append(f)
            continue
        if opened is None:
            opened, missing = _open_libraries(libraries, library_dirs)
        library = next((path for path, handle in opened if hasattr(handle, f.name)), None)
        if library is None:
            raise DatalogError(f.pos, _not_found(f.name, opened, missing))
        _check_registers(f)
        bound.append(replace(f, library=library))
    return replace(program, functors=tuple(bound))


def _open_libraries(libraries: Sequence[str], dirs: Sequence[str]) -> tuple[list[tuple[str, ctypes.CDLL]], list[str]]:
    """(each library found, as loaded from where: a relative directory made absolute, so that a
    worker elsewhere loads the same file; each library not found, with where it was looked for
    and why a file there did not load)."""
    opened, missing = [], []
    for library in libraries:
        if not library:  # Soufflé skips an empty name
            continue
        paths = library_paths(library, dirs)
        broken = ""  # why a file that is there did not load (another architecture, ...)
        for path in paths:
            where = os.path.abspath(path) if "/" in path else path
            try:
                opened.append((where, _load(where)))
                break
            except OSError as e:
                broken = f": {e}" if os.path.exists(where) else broken
        else:
            missing.append(f"lib{library}.so (looked for {', '.join(paths)}){broken}")
    return opened, missing


def _not_found(name: str, opened: list[tuple[str, ctypes.CDLL]], missing: list[str]) -> str:
    searched = [f"not in {path}" for path, _ in opened] + [f"no {m}" for m in missing]
    return f"user-defined functor {name}: no function {name} to call: {'; '.join(searched) or 'no library given (-l)'}"


def _check_registers(f: ir.Functor) -> None:
    """A C functor must take its arguments in registers (kernels.c says why)."""
    from dask_datalog.engine.storage import cpu_kernels

    floats = sum(t == "float" for t in f.params)
    if not cpu_kernels.FUNCTOR_CALLS:
        raise DatalogError(f.pos, f"user-defined functor {f.name}: C functors are called on x86-64 and AArch64 only")
    if len(f.params) - floats > cpu_kernels.FUNCTOR_INTS or floats > cpu_kernels.FUNCTOR_FLOATS:
        raise DatalogError(
            f.pos,
            f"unsupported: C functor {f.name} with more than {cpu_kernels.FUNCTOR_INTS} number, unsigned or symbol "
            f"parameters or more than {cpu_kernels.FUNCTOR_FLOATS} float ones (a Python functor takes any number)",
        )


@functools.cache
def _load(path: str) -> ctypes.CDLL:
    """A shared library, opened once per process (dlopen, as Soufflé does)."""
    return ctypes.CDLL(path)


def implementations(functors: Sequence[ir.Functor]) -> dict[str, UserFunctor]:
    """The callables of the bound functors, by their name as called (``@name``); a library is
    opened in this process if it was not yet."""
    out: dict[str, UserFunctor] = {}
    for f in functors:
        if f.function is not None:
            out[USER_PREFIX + f.name] = PythonFunctor(f.function)
        elif f.library is not None:
            address = ctypes.cast(getattr(_load(f.library), f.name), ctypes.c_void_p).value
            assert address is not None
            out[USER_PREFIX + f.name] = CFunctor(address)
    return out


@dataclass(frozen=True)
class CFunctor:
    """A C function called over columns by the compiled loop (no Python per row): numbers
    sign-extended, texts passed as NUL-terminated copies of the symbols' bytes."""

    address: int

    def __call__(self, call: ir.Call, args: list[np.ndarray], n: int, ctx: Context) -> np.ndarray | list[str]:
        from dask_datalog.engine.storage import cpu_kernels

        ints, floats, held = [], [], []
        for column, kind in zip(args, call.params):
            if kind == "float":
                floats.append(decode_float(column, np))
            elif kind == "symbol":
                strings, starts = _nul_terminated(ctx.symbols.texts_of(column))
                held.append(strings)  # alive until the call returns: the function reads them
                ints.append(starts + strings.ctypes.data)
            else:
                ints.append(decode_int(column, kind, np).astype(np.int64))
        try:
            with _CALLING:
                result = cpu_kernels.call_functor(self.address, call.type, n, ints, floats)
        except cpu_kernels.FunctorReturnedNull:
            raise DatalogError(call.pos, f"user-defined functor {call.name} returned NULL, not a text") from None
        if call.type == "symbol":
            data, offsets = result
            return tx.strings(tx.Texts(data, offsets))
        return _encoded(result, call.type)


def _nul_terminated(column: tx.Texts) -> tuple[np.ndarray, np.ndarray]:
    """The texts side by side, each followed by a NUL byte (what C functions read), and where
    each starts."""
    sizes = column.sizes()
    starts = np.zeros(len(column) + 1, dtype=np.int64)
    np.cumsum(sizes + 1, out=starts[1:])
    out = np.zeros(int(starts[-1]), dtype=np.uint8)
    out[np.arange(column.nbytes) + np.repeat(np.arange(len(column)), sizes)] = column.data[column.offsets[0] : column.offsets[-1]]
    return out, starts[:-1]


@dataclass(frozen=True)
class PythonFunctor:
    """A Python function called once per batch of distinct argument rows: one NumPy array per
    argument (``DTYPES``), one array of the result type back, as long."""

    function: Callable[..., Any]

    def __call__(self, call: ir.Call, args: list[np.ndarray], n: int, ctx: Context) -> np.ndarray | list[str]:
        arrays = []
        for column, kind in zip(args, call.params):
            if kind == "symbol":
                arrays.append(np.array(tx.strings(ctx.symbols.texts_of(column)), dtype=DTYPES["symbol"]))
            elif kind == "float":
                arrays.append(decode_float(column, np))
            else:
                arrays.append(decode_int(column, kind, np).astype(DTYPES[kind]))
        with _CALLING:
            result = self.function(*arrays)
        want = DTYPES[call.type]
        strings = call.type == "symbol" and isinstance(result, np.ndarray) and result.dtype.kind in "TU"
        if not isinstance(result, np.ndarray) or not (strings or result.dtype == want):
            got = f"an array of {result.dtype}" if isinstance(result, np.ndarray) else type(result).__name__
            wanted = "NumPy strings (StringDType or str_)" if call.type == "symbol" else f"a NumPy array of {np.dtype(want)}"
            raise DatalogError(
                call.pos, f"user-defined functor {call.name} returned {got}; its {call.type} result needs {wanted}"
            )
        if result.shape != (n,):
            raise DatalogError(
                call.pos, f"user-defined functor {call.name} returned shape {result.shape} for {n} rows; it needs ({n},)"
            )
        if call.type == "symbol":
            return list(result.tolist())
        return _encoded(result, call.type)


def _encoded(values: np.ndarray, kind: str) -> np.ndarray:
    """int32 (number or unsigned bits) or float32 results -> encoded uint32."""
    if kind == "float":
        return encode_float(values, np)
    if kind == "unsigned":
        return values.view(np.uint32)
    return encode_int(values.astype(np.int64), "number", np)
