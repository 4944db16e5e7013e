"""The benchmark scripts' own logic, where a mistake would bias a table rather than fail a run."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SOUFFLE = BENCH.parent.parent / "shared" / "peers" / "souffle-2.5" / "bin" / "souffle"
FLOWLOG = BENCH.parent.parent / "flowlog-bench" / "programs" / "oracle" / "souffle"


@pytest.fixture(scope="module")
def scripts() -> Iterator[dict[str, ModuleType]]:
    """The bench scripts as modules (they are scripts, not a package), gone after this file."""
    sys.path.insert(0, str(BENCH))  # the scripts import their sibling common.py
    loaded: dict[str, ModuleType] = {}
    try:
        for name in ("common", "programs"):
            spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # its dataclasses look their module up there
            spec.loader.exec_module(module)
            loaded[name] = module
        yield loaded
    finally:
        sys.path.remove(str(BENCH))
        for name in ("common", "programs"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def common(scripts: dict[str, ModuleType]) -> ModuleType:
    return scripts["common"]


@pytest.fixture(scope="module")
def programs(scripts: dict[str, ModuleType]) -> ModuleType:
    return scripts["programs"]


def test_a_command_of_a_few_milliseconds_is_seen_running(common: ModuleType) -> None:
    """measure's first polls come 1, 2, 4 ... ms apart: a command that ends within the 20 ms
    of a fixed interval (Soufflé on a small input) still has a peak RSS (polling can catch it
    just after its exec, below its true peak: a clean clone's run saw 188 KiB)."""
    for _ in range(5):
        m = common.measure([sys.executable, "-S", "-c", "import time; time.sleep(0.03)"], timeout_s=30)
        assert m.returncode == 0 and m.peak_rss is not None and m.peak_rss > 0, m


def test_cpu_time_is_the_commands_own(common: ModuleType) -> None:
    """measure's CPU time is what the command itself spent (os.wait4), not its wall time:
    a command that sleeps 0.3 s spends little, one that spins 0.3 s spends about that; the
    table's CPU cell is their median."""
    sleep = common.measure([sys.executable, "-S", "-c", "import time; time.sleep(0.3)"], timeout_s=30)
    spin = common.measure(
        [sys.executable, "-S", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
        timeout_s=30,
    )
    assert sleep.cpu_s is not None and spin.cpu_s is not None
    assert sleep.wall_s >= 0.3 and sleep.cpu_s < 0.2, sleep
    assert 0.3 <= spin.cpu_s <= spin.wall_s + 0.05, spin
    outcome = common.Outcome(status="ok", walls=[sleep.wall_s, spin.wall_s], cpus=[1.0, 2.0, 4.0])
    assert outcome.cpu_cell() == common.fmt_seconds(2.0)
    assert common.Outcome(status="timeout").cpu_cell() == "-"


def test_a_command_no_poll_saw_has_no_peak(common: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that ended before any poll read it (a loaded make test's 13 ms python -S
    read 0 MiB) has no peak, which the tables leave out: never a peak of 0."""
    monkeypatch.setattr(common, "_hwm", lambda pid: 0)
    monkeypatch.setattr(common, "_tree_rss", lambda pid, with_root=True: 0)
    m = common.measure([sys.executable, "-S", "-c", "pass"], timeout_s=30)
    assert m.returncode == 0 and m.peak_rss is None, m
    outcome = common.Outcome(status="ok", walls=[m.wall_s])  # what programs.py keeps of it: no rss
    assert outcome.peak_rss is None and outcome.rss_cell() == "-"


@pytest.mark.parametrize("engines", [2, 3, 4, 5])
def test_each_engine_follows_each_other_equally_often_within_rounds(common: ModuleType, engines: int) -> None:
    """A fixed or merely rotated order keeps one engine right after Soufflé in most rounds
    (seen: up to 10% slower, always the same engine)."""
    names = [f"e{i}" for i in range(engines)]
    follows: Counter[tuple[str, str]] = Counter()
    for r in range(2 * engines):
        order = common.round_order(names, r)
        assert sorted(order) == names  # every engine once a round
        follows.update(itertools.pairwise(order))
    assert set(follows) == {(a, b) for a in names for b in names if a != b}
    assert len(set(follows.values())) == 1, follows


# --------------------------------------------------------------------------------------------
# bench/programs.py


def outcome(common: ModuleType, *walls: float, status: str = "ok") -> object:
    return common.Outcome(status=status, walls=list(walls), rss=[2**20] * len(walls))


def test_table_has_ratio_of_medians_and_their_geomean(common: ModuleType, programs: ModuleType) -> None:
    slow = programs.Result("cspa", 1000, 2**20, outcome(common, 4.0, 1.0, 3.0), outcome(common, 1.0, 1.5, 2.0), compared=True)
    fast = programs.Result("andersen", 1000, 2**20, outcome(common, 1.0), outcome(common, 4.0), compared=True)
    failed = programs.Result("z3", 10, None, outcome(common, status="error"), outcome(common, 1.0))
    rows = programs.table_rows([slow, fast, failed])
    assert [r[5] for r in rows[:3]] == ["2.00x", "0.25x", "-"]  # medians 3.0 / 1.5, 1 / 4
    assert rows[2][3] == "error"
    assert rows[-1][0] == "geomean" and rows[-1][5] == "0.71x (n=2)"  # sqrt(2 * 0.25)
    assert [r[10] for r in rows[:3]] == ["yes", "yes", "-"]
    assert len(rows[-1]) == len(programs.HEADERS) == len(rows[0])


def test_resident_runs_add_their_columns_and_their_geomean(common: ModuleType, programs: ModuleType) -> None:
    """--resident: the resident engine's time, ratio to Soufflé and memory before the last
    column, its own geometric mean; the table keeps its shape otherwise."""
    a = programs.Result(
        "cspa", 1000, 2**20, outcome(common, 4.0), outcome(common, 2.0), resident=outcome(common, 1.0), compared=True
    )
    b = programs.Result(
        "z3", 10, 2**20, outcome(common, 1.0), outcome(common, 1.0), resident=outcome(common, 0.25), compared=True
    )
    rows = programs.table_rows([a, b])
    names = programs.headers([a, b])
    assert names[-4:] == [*programs.RESIDENT_HEADERS, "outputs equal"] and len(names) == len(programs.HEADERS) + 3
    at = names.index("resident/Soufflé")
    assert [r[at] for r in rows] == ["0.50x", "0.25x", "0.35x (n=2)"]  # sqrt(0.5 * 0.25)
    assert rows[-1][5] == "1.41x (n=2)" and all(len(r) == len(names) for r in rows)
    assert programs.headers([programs.Result("z3", 10)]) == programs.HEADERS


def test_compare_outputs_finds_the_differing_rows(programs: ModuleType, tmp_path: Path) -> None:
    ours, souffle = tmp_path / "ours", tmp_path / "souffle"
    ours.mkdir()
    souffle.mkdir()
    (ours / "Same.csv").write_text("2\t1\n1\t2\n1\t2\n")  # order and duplicates: the same set
    (souffle / "Same.csv").write_text("1\t2\n2\t1")
    (ours / "Diff.csv").write_text("1\t2\n1\t3\n7\t7\n")
    (souffle / "Diff.csv").write_text("1\t2\n1\t03\n")  # text, not value: 03 is not 3
    (souffle / "Gone.csv").write_text("")
    found = programs.compare_outputs(ours, souffle, ["Same", "Diff", "Gone"], tmp_path / "scratch")
    assert [d.relation for d in found] == ["Diff", "Gone"]
    diff, gone = found
    assert (diff.only_ours, diff.only_souffle) == (2, 1)
    assert diff.ours_sample == ["1\t3", "7\t7"] and diff.souffle_sample == ["1\t03"]
    assert "'7\\t7'" in diff.describe() and gone.missing == "ours"


def test_printed_relations_are_written_and_commented_ones_are_not(programs: ModuleType) -> None:
    text = ".decl A(x: number)\n.output A\n.printsize A\n.printsize B, C\n// .printsize D\n/* .printsize E */\n"
    run, relations = programs.checked_program(text)
    assert relations == ["A", "B", "C"]
    assert run.startswith(text) and run.count(".output A") == 1 and ".output B\n.output C\n" in run


def test_cache_keys_change_with_each_thing_they_depend_on(common: ModuleType, programs: ModuleType) -> None:
    base = ("andersen", 1000, 0, "P(1).", "v1")
    variants = [("cspa", 1000, 0, "P(1).", "v1"), ("andersen", 999, 0, "P(1).", "v1"), ("andersen", 1000, 1, "P(1).", "v1")]
    variants += [("andersen", 1000, 0, "P(2).", "v1"), ("andersen", 1000, 0, "P(1).", "v2")]
    keys = {programs.input_key(*v) for v in [base, *variants]}
    assert len(keys) == 6 and programs.input_key(*base) == programs.input_key(*base)
    souffle = {
        common.souffle_cache_key(t, v, f) for t, v, f in [("P.", "a", ["-j2"]), ("Q.", "a", ["-j2"]), ("P.", "b", ["-j2"])]
    }
    assert len(souffle | {common.souffle_cache_key("P.", "a", [])}) == 4


def test_crossover_says_where_the_ratio_crosses_one(programs: ModuleType) -> None:
    said = programs.crossover([(1000, 3.0), (3000, None), (10000, 1.5), (30000, 0.8), (100000, 1.2)])
    assert said.startswith("crosses 1 between size 10,000 (1.50x) and 30,000 (0.80x): ours faster above")
    assert programs.crossover([(1000, 2.0), (3000, 1.1)]).startswith("no crossing: Soufflé faster")
    assert programs.crossover([(1000, None)]) == "no size measured both ways"


def test_sizes_per_program_and_for_all(programs: ModuleType) -> None:
    sizes = programs.parse_sizes(["500,1_000", "cspa=7"], ["andersen", "cspa"])
    assert sizes == {"andersen": [500, 1000], "cspa": [7]}
    for bad in ("x", "doop=", "nope=5", "0"):
        with pytest.raises(ValueError, match="bad --sizes"):
            programs.parse_sizes([bad], ["andersen"])


def test_absent_programs_say_where_to_get_them(programs: ModuleType, tmp_path: Path) -> None:
    said = programs.missing_programs_message(tmp_path / "nowhere", ["andersen"])
    assert said is not None and "git clone https://github.com/flowlog-rs/flowlog-bench" in said
    (tmp_path / "andersen.dl").write_text("")
    assert programs.missing_programs_message(tmp_path, ["andersen"]) is None
    assert "cspa.dl not in" in (programs.missing_programs_message(tmp_path, ["andersen", "cspa"]) or "")


@pytest.mark.skipif(not SOUFFLE.is_file(), reason=f"Soufflé 2.5 is not at {SOUFFLE}")
@pytest.mark.skipif(not (FLOWLOG / "andersen.dl").is_file(), reason=f"flowlog-bench's programs are not at {FLOWLOG}")
def test_andersen_measured_both_ways_with_equal_outputs(programs: ModuleType, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    size = 300
    table = tmp_path / "rows.csv"
    argv = ["--only", "andersen", "--sizes", str(size), "--rounds", "2", "--cache", str(cache), "--csv", str(table)]
    argv += ["--programs", str(FLOWLOG), "--peers", str(SOUFFLE.parent.parent)]
    assert programs.main(argv) == 0
    (row,) = list(csv.DictReader(table.read_text().splitlines()))
    assert (row["program"], row["size"], row["outputs_equal"]) == ("andersen", str(size), "yes")
    assert row["ours_status"] == row["souffle_status"] == "ok"
    assert float(row["ratio"]) == pytest.approx(float(row["ours_s"]) / float(row["souffle_s"]))
    assert int(row["input_bytes"]) > 0 and int(row["ours_peak_bytes"]) > 0 and int(row["souffle_peak_bytes"]) > 0
    assert os.listdir(cache / "souffle")  # compiled once, kept


@pytest.mark.skipif(not (FLOWLOG / "andersen.dl").is_file(), reason=f"flowlog-bench's programs are not at {FLOWLOG}")
def test_a_peer_that_disagrees_fails_the_run_loudly(
    programs: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in Soufflé whose 'compiled program' writes one wrong PointsTo row."""
    bin_dir = tmp_path / "peers" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "wrong").write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -D ] && out=$2; shift; done\nprintf \'1\\t999999\\n\' > "$out/PointsTo.csv"\n'
    )
    (bin_dir / "souffle").write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\ncp "$(dirname "$0")/wrong" "$2"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    cache, size = tmp_path / "cache", 50
    argv = ["--only", "andersen", "--sizes", str(size), "--rounds", "1", "--cache", str(cache), "--peers", str(bin_dir.parent)]
    assert programs.main([*argv, "--programs", str(FLOWLOG)]) == 1
    printed = capsys.readouterr().out
    assert "!!MISMATCH PointsTo" in printed
    assert "!!! andersen 50: PointsTo: " in printed and "only in Soufflé's" in printed and "'1\\t999999'" in printed


def test_default_sizes_and_the_crossover_ladder(programs: ModuleType) -> None:
    """Without --sizes each program gets its own default (inputs of about 2 MiB), and
    --crossover the ladder of multiples of it."""
    assert programs.parse_sizes([], ["doop", "z3"]) == {"doop": [1200], "z3": [15000]}
    assert programs.parse_sizes([], ["doop"], crossover=True) == {"doop": [120, 360, 1200, 3600, 12000]}
    assert set(programs.DEFAULT_SIZES) == set(programs.PROGRAMS)
