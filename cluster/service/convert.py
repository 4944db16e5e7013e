"""A job's output relation in the other format than the one it was written in, converted on
the service with pyarrow: the CSV file read with the relation's declared types and its
``.output`` dialect (delimiter, header, gzip), or the Parquet dataset written as that CSV.
Columns follow the run's Parquet writer (``relation_output.write_parquet_part``): named by
attribute, int32 numbers, uint32 unsigned, float32 floats, strings for symbols and records."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np

from dask_datalog.engine import ir
from dask_datalog.engine.values import format_float


class Unconvertible(Exception):
    """An output this conversion cannot read back unambiguously (why, in one line)."""


def to_parquet(path: Path, relation: ir.Relation, spec: ir.OutputSpec) -> bytes:
    """The CSV file ``path`` as one Parquet file, as a ``format: parquet`` job would write it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    _check(spec)
    types = _arrow_types()
    if relation.arity == 0:  # "()" when the tuple holds; the writer's column is ``holds``
        table = pa.table({"holds": pa.array(np.ones(int(_read(path).strip() == b"()"), dtype=bool))})
    else:
        names = [a.name for a in relation.attributes]
        try:
            table = pacsv.read_csv(
                io.BytesIO(_read(path)),
                pacsv.ReadOptions(column_names=names, skip_rows=int(spec.headers)),
                pacsv.ParseOptions(
                    delimiter=spec.delimiter,
                    quote_char=False,
                    escape_char=False,
                    newlines_in_values=False,
                    ignore_empty_lines=False,  # the line of a symbol relation's empty string
                ),
                pacsv.ConvertOptions(
                    column_types={a.name: types[a.type] if a.record is None else pa.string() for a in relation.attributes},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    null_values=[],
                ),
            )
        except pa.ArrowInvalid as error:
            raise Unconvertible(f"{path} does not read back as {relation.name}'s columns: {error}") from None
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def to_csv(path: Path, relation: ir.Relation, spec: ir.OutputSpec) -> bytes:
    """The Parquet dataset ``path`` as the CSV file a ``format: csv`` job would write."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _check(spec)
    table = pq.read_table(path)
    header = f"{spec.header_line(relation)}\n".encode() if spec.headers else b""
    if relation.arity == 0:
        text = b"()\n" * min(table.num_rows, 1)
    elif table.num_rows == 0:
        text = b""
    else:
        fields = [_text(table.column(a.name).combine_chunks(), a) for a in relation.attributes]
        delimiter, empty, newline = (pa.scalar(t, pa.large_string()) for t in (spec.delimiter, "", "\n"))
        lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, delimiter), empty, newline)  # + "\n"
        # The lines are back to back in the array's data: its bytes from the first offset to the last.
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=lines.offset * 8)
        text = lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]
    data = header + text
    return gzip.compress(data) if spec.compress else data


def _text(column: Any, attribute: ir.Attribute) -> Any:
    """A column's values as the run's CSV writer prints them (large strings: the text of a whole
    relation may pass 2 GiB): floats as Soufflé does (%.9g), each distinct value formatted once."""
    import pyarrow as pa

    if attribute.record is not None or attribute.type != "float":
        return column.cast(pa.large_string())
    values = column.to_numpy(zero_copy_only=False).astype(np.float32)
    distinct, inverse = np.unique(values.view(np.uint32), return_inverse=True)
    texts = np.array([format_float(int(bits)) for bits in distinct.tolist()], dtype=object)
    return pa.array(texts[inverse.reshape(-1)], type=pa.large_string())


def _check(spec: ir.OutputSpec) -> None:
    if spec.rfc4180:
        raise Unconvertible("its CSV quotes symbols (rfc4180): submit the job with the format wanted")
    if len(spec.delimiter.encode()) != 1 or spec.delimiter in ('"', "\n", "\r"):
        raise Unconvertible(f"its CSV delimiter {spec.delimiter!r} is not one plain byte: submit the job with the format wanted")


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    return {"number": pa.int32(), "unsigned": pa.uint32(), "float": pa.float32(), "symbol": pa.string()}
