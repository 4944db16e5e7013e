"""The public API of dask-datalog: ``from dask_datalog.cluster import Program``.

Its names load on first use (PEP 562): the command line is in this package too, and building its
parser (``--help``, ``job``) needs no engine."""

# typing.TYPE_CHECKING's value without importing typing (every command imports this package
# first); type checkers treat the name alike.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from dask_datalog.cluster.api import Program, Result

__all__ = ["Program", "Result"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from dask_datalog.cluster import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
