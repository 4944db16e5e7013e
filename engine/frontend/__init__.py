"""The front end: program text -> syntax tree (parser.py, grammar.lark) -> components expanded
(components.py) -> checked ir.Program (checker.py) -> strata (strata.py). ``load_program`` and
``load_program_file`` do it all."""

from dask_datalog.engine.frontend.load import load_program, load_program_file

__all__ = ["load_program", "load_program_file"]
