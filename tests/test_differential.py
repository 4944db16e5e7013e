"""Randomised differential tests: random valid programs, engine against the reference.

Each case (tests/program_gen.py) is built as IR, printed as Soufflé text, and evaluated by
the reference evaluator on that IR (``case.expected``). Then:

- the front end must parse the text into IR that *means* the same (the reference gives
  the same model on the parsed IR; structural equality would be too strict, fresh names
  and literal order may differ);
- the engine, through the public API with the NumPy backend, must produce exactly the
  expected tuples for every relation.

Seeds are fixed so a failure reproduces; every assertion message carries the program text
and the facts. The Hypothesis variant explores beyond the fixed seeds.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Set
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from program_gen import GeneratedCase, generate_case, generate_from_rng
from reference import evaluate

from dask_datalog.cluster import Program
from dask_datalog.engine import ir
from dask_datalog.engine.backend import Backend
from dask_datalog.engine.frontend import load_program

SEEDS = range(150)


@functools.cache
def case_for(seed: int) -> GeneratedCase:
    return generate_case(seed)


def _show(tuples: Set[tuple[Any, ...]], limit: int = 20) -> str:
    items = sorted(tuples, key=repr)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return repr(items[:limit]) + more


def diff_message(
    who: str,
    name: str,
    got: Set[tuple[Any, ...]],
    want: Set[tuple[Any, ...]],
    case: GeneratedCase,
) -> str:
    return (
        f"{who}: relation {name!r} differs from the reference "
        f"({len(got)} tuples, expected {len(want)})\n"
        f"  missing: {_show(want - got)}\n"
        f"  extra:   {_show(got - want)}\n"
        f"{case.describe()}"
    )


def check_frontend(case: GeneratedCase) -> None:
    """The parsed IR must declare the same relations and give the same model."""
    assert load_program is not None
    try:
        parsed: ir.Program = load_program(case.text, f"<{case.label}>")
    except Exception as exc:
        pytest.fail(f"front end rejected a valid program: {exc}\n{case.describe()}")
    declared = {n: r.types for n, r in parsed.relations.items()}
    intended = {n: r.types for n, r in case.program.relations.items()}
    assert declared == intended, f"front end: relations {declared} != {intended}\n{case.describe()}"
    model = evaluate(parsed, case.reference_facts())
    for name, want in case.expected.items():
        assert model[name] == want, diff_message("reference on the parsed IR", name, model[name], want, case)


def check_engine(case: GeneratedCase, backend: str | Backend, chunk_rows: int | None = None) -> None:
    """Program(text).run(facts=..., backend=backend) gives the expected tuples and sizes,
    as plain Python values."""
    try:
        result = Program(case.text, filename=f"<{case.label}>").run(
            facts=case.api_facts(), backend=backend, chunk_rows=chunk_rows
        )
    except Exception as exc:
        pytest.fail(f"engine raised {exc!r}\n{case.describe()}")
    for name, want in case.expected.items():
        got = result.tuples(name)
        assert got == want, diff_message("engine", name, got, want, case)
        assert result.sizes[name] == len(want), (
            f"engine: sizes[{name!r}] = {result.sizes[name]}, expected {len(want)}\n{case.describe()}"
        )
        odd = [v for t in got for v in t if type(v) not in (int, float, str)]
        assert not odd, (
            f"engine: tuples({name!r}) holds non-Python values such as {odd[0]!r} "
            f"({type(odd[0]).__name__}); the contract says decoded Python values\n"
            f"{case.describe()}"
        )


# --------------------------------------------------------------------------- fixed seeds


def test_generator_is_deterministic_and_varied() -> None:
    """Runs without front end or engine: every seed yields a finite, evaluable program,
    the same one each time, and together the seeds cover what the generator promises."""
    assert generate_case(3).text == generate_case(3).text
    features: set[str] = set()
    for seed in SEEDS:
        case = case_for(seed)
        assert "$" not in case.text, case.describe()  # internal names never leak
        assert set(case.expected) == set(case.program.relations)
        features |= case.features
    wanted = {
        "recursion",
        "mutual_recursion",
        "nonlinear",
        "negation",
        "repeated_var",
        "wildcard",
        "body_const",
        "head_const",
        "arith_head",
        "arith_filter",
        "division",
        "binding_eq",
        "body_expr",
        "guarded_recursive_arith",
        "symbol",
        "unsigned",
        "alias_type",
        "program_facts",
        "duplicate_facts",
        "empty_edb",
        "extreme_value",
        "negative_value",
        "big_constant",
        "shuffled_body",
        "inline_agg",
        "agg_count",
        "agg_sum",
        "agg_min",
        "agg_max",
        "agg_grouped",
        "agg_ungrouped",
        "agg_filter",
        "agg_negation",
        "agg_target_expr",
        "agg_two_atoms",
        "no_base_rule",
        "empty_output",
        "float",
        "float_arith",
        "agg_mean",
        "range",
        "conversion",
        *(f"cmp{op}" for op in ("=", "!=", "<", "<=", ">", ">=")),
    }
    assert wanted <= features, f"never generated: {sorted(wanted - features)}"


@pytest.mark.parametrize("seed", SEEDS)
def test_frontend_preserves_meaning(seed: int) -> None:
    check_frontend(case_for(seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_engine_matches_reference(seed: int, backend: str) -> None:
    check_engine(case_for(seed), backend)


@pytest.mark.parametrize("seed", SEEDS[::4])
def test_chunked_joins_match_reference(seed: int, backend: str) -> None:
    """Join output materialised a few rows at a time (the path large joins take)."""
    check_engine(case_for(seed), backend, chunk_rows=3)


@pytest.mark.parametrize("seed", SEEDS[::3])
def test_array_api_path_matches_reference(seed: int) -> None:
    """The array-API code path (what CuPy runs) on NumPy, so CPU-only CI covers it."""
    check_engine(case_for(seed), "numpy-xp")


# --------------------------------------------------------------------------- hypothesis


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rng=st.randoms(use_true_random=False))
def test_random_programs_hypothesis(rng: random.Random, backend: str) -> None:
    case = generate_from_rng(rng, "hypothesis")
    check_frontend(case)
    check_engine(case, backend)
