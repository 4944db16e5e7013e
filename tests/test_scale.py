"""`dask-datalog scale`: strong and weak scaling end to end on tiny inputs (runs.csv, its
efficiency, the plots, the table), an existing cluster, and arguments that fail in one line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import sys
from pathlib import Path

import pytest
from distributed import LocalCluster

from dask_datalog.cluster import Program
from dask_datalog.cluster.cli.main import main
from dask_datalog.cluster.experiments.scaling import Run, efficiency, inconsistent, summarize

ROOT = Path(__file__).resolve().parent.parent
REACH = ROOT / "examples" / "reach.dl"
FACTS = ROOT / "examples" / "facts" / "reach"
COLUMNS = [
    "program",
    "input",
    "scaling",
    "mode",
    "workers",
    "backend",
    "device",
    "repeat",
    "wall_s",
    "eval_s",
    "load_s",
    "iterations",
    "tuples",
    "bytes_exchanged",
    "join_s",
    "dedup_s",
    "difference_s",
    "merge_s",
    "send_s",
    "wait_s",
    "coordination_s",
    "efficiency",
]
PLOTS = ("time_vs_workers.png", "efficiency_vs_workers.png", "phases_by_workers.png")


def read_runs(out: Path) -> list[dict[str, str]]:
    with open(out / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def strong(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """In process, 1 and 2 workers, two timed runs each, with plots (about 5 s)."""
    out = tmp_path_factory.mktemp("strong")
    with contextlib.redirect_stdout(io.StringIO()) as table:
        code = main(
            [
                "scale",
                str(REACH),
                "-F",
                str(FACTS),
                "--workers",
                "2,0,1",
                "--repeat",
                "2",
                "--backend",
                "numpy",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    return out, table.getvalue()


def test_strong_scaling_rows(strong: tuple[Path, str]) -> None:
    out, _ = strong
    rows = read_runs(out)
    assert [(r["workers"], r["mode"], r["repeat"]) for r in rows] == [
        ("0", "in process", "0"),
        ("0", "in process", "1"),
        ("1", "embedded", "0"),
        ("1", "embedded", "1"),
        ("2", "embedded", "0"),
        ("2", "embedded", "1"),
    ]
    expected = sum(Program.from_file(REACH).run(fact_dir=FACTS, backend="numpy").sizes.values())
    for r in rows:
        assert (r["program"], r["input"], r["scaling"], r["backend"]) == (str(REACH), str(FACTS), "strong", "numpy")
        assert int(r["tuples"]) == expected and int(r["iterations"]) > 0 and r["device"]
        assert float(r["wall_s"]) >= float(r["eval_s"]) > 0
        assert all(float(r[c]) >= 0 for c in COLUMNS if c.endswith("_s"))
    assert {int(r["bytes_exchanged"]) > 0 for r in rows if r["workers"] == "2"} == {True}
    assert {int(r["bytes_exchanged"]) for r in rows if r["workers"] != "2"} == {0}


def test_strong_efficiency_from_the_wall_times(strong: tuple[Path, str]) -> None:
    rows = read_runs(strong[0])
    t1 = statistics.median(float(r["wall_s"]) for r in rows if r["workers"] == "1")
    for r in rows:
        n = int(r["workers"])
        if n == 0:
            assert r["efficiency"] == ""
        else:
            assert float(r["efficiency"]) == pytest.approx(t1 / (n * float(r["wall_s"])), rel=1e-4)


def test_strong_scaling_table_and_plots(strong: tuple[Path, str]) -> None:
    out, table = strong
    lines = table.splitlines()
    assert lines[0].startswith("strong scaling: reach.dl on ")
    assert "wall median (s)" in lines[1] and "min-max (s)" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert lines[3].split()[4] == "1.00", "the baseline's efficiency by its median"
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (the test extra installs it)")
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert not list(out.glob(".inputs-*")), "no scratch left behind"


def test_weak_scaling_grows_the_generated_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--gen", "chain", "--gen-args", "length=20", "--weak", "--workers", "1,2", "--repeat", "1", "--no-plots"]
    assert main(["scale", str(REACH), *args, "--backend", "numpy", "--out", str(tmp_path)]) == 0
    rows = read_runs(tmp_path)
    assert [(r["workers"], r["input"], r["scaling"]) for r in rows] == [
        ("1", "chain length=20 seed=0", "weak"),
        ("2", "chain length=40 seed=0", "weak"),
    ]
    # reach.dl on a chain of n edges: n edges and n(n+1)/2 paths
    assert [int(r["tuples"]) for r in rows] == [20 + 210, 40 + 820]
    t1 = float(rows[0]["wall_s"])
    assert [float(r["efficiency"]) for r in rows] == pytest.approx([1.0, t1 / float(rows[1]["wall_s"])], rel=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv"], "no plots, no scratch left"
    assert "weak scaling: reach.dl on chain length=20 seed=0 ... chain length=40 seed=0" in capsys.readouterr().out


def test_generated_input_goes_where_the_program_reads_it(tmp_path: Path) -> None:
    """--gen writes each relation to the file and delimiter the program's .input declares."""
    program = tmp_path / "p.dl"
    program.write_text(
        '.decl Arc(x: number, y: number, l: number)\n.input Arc(filename="arcs.txt", delimiter=",")\n'
        ".decl D(x: number, y: number)\nD(x, y) :- Arc(x, y, _).\n.printsize D\n"
    )
    args = ["--gen", "dyck", "--gen-args", "size=50", "--workers", "0", "--repeat", "1", "--no-plots"]
    assert main(["scale", str(program), *args, "--backend", "numpy", "--out", str(tmp_path / "out")]) == 0
    rows = read_runs(tmp_path / "out")
    assert rows[0]["input"] == "dyck size=50 seed=0" and int(rows[0]["tuples"]) > 100, "Arc read, D derived"


def test_existing_cluster_is_measured_at_its_size(tmp_path: Path) -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        scheduler_file = tmp_path / "scheduler.json"
        scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}))
        args = ["-F", str(FACTS), "--scheduler-file", str(scheduler_file), "--repeat", "1", "--no-plots"]
        assert main(["scale", str(REACH), *args, "--backend", "numpy", "--out", str(tmp_path / "out")]) == 0
    rows = read_runs(tmp_path / "out")
    assert [(r["workers"], r["mode"], r["efficiency"]) for r in rows] == [("2", "cluster", "1.0")]


def run(workers: int, wall: float, scaling: str = "strong", tuples: int = 10, input: str = "in") -> Run:
    zero = dict.fromkeys(
        ("eval_s", "load_s", "join_s", "dedup_s", "difference_s", "merge_s", "send_s", "wait_s", "coordination_s"), 0.0
    )
    return Run(
        program="p.dl",
        input=input,
        scaling=scaling,
        mode="embedded",
        workers=workers,
        backend="numpy",
        device="cpu",
        repeat=0,
        wall_s=wall,
        iterations=1,
        tuples=tuples,
        bytes_exchanged=0,
        **zero,
    )


def test_efficiency_against_the_smallest_count() -> None:
    strong = [run(2, 4.0), run(2, 6.0), run(4, 3.0), run(8, 2.0)]
    assert [s.efficiency for s in summarize(strong)] == pytest.approx([1.0, 2 * 5.0 / (4 * 3.0), 2 * 5.0 / (8 * 2.0)])
    weak = [run(1, 2.0, "weak"), run(4, 4.0, "weak")]
    assert [s.efficiency for s in summarize(weak)] == [1.0, 0.5]
    assert efficiency(0, 1.0, (1, 2.0), "strong") is None
    summary = summarize(strong)[0]
    assert (summary.median_s, summary.min_s, summary.max_s, summary.runs) == (5.0, 4.0, 6.0, 2)
    assert summary.phases["other"] == 5.0


def test_disagreeing_runs_are_reported() -> None:
    assert inconsistent([run(1, 1.0), run(2, 1.0)]) == []
    assert inconsistent([run(1, 1.0), run(2, 1.0, tuples=11)]) == ["in: 10, 11 tuples"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-F", str(FACTS), "--workers", "1,x"], "--workers '1,x': expected worker counts"),
        (["-F", str(FACTS), "--workers", "-1"], "expected worker counts"),
        (["-F", str(FACTS), "--repeat", "0"], "--repeat must be at least 1"),
        (["-F", str(FACTS / "none")], "no such directory"),
        (["-F", str(FACTS), "--weak"], "--weak and --gen-args need --gen"),
        (["--gen", "rmat", "--weak", "--workers", "1,3"], "3 workers is not a power of two"),
        (["--gen", "rmat", "--gen-args", "scale=x"], "rmat scale: 'x' is not an integer"),
        (["--gen", "chain", "--gen-args", "width=3"], "chain has no parameter 'width'"),
        (["--gen", "chain", "-F", str(FACTS)], "not allowed with argument"),
        (["--gen", "chain", "--scheduler-file", "s.json", "--workers", "2"], "--workers cannot go with --scheduler-file"),
        ([], "one of the arguments -F/--fact-dir --gen is required"),
    ],
)
def test_bad_arguments_are_one_error_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["scale", str(REACH), *args, "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("dask-datalog scale: error: ") and message in err.splitlines()[-1]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "edge.facts").write_text("1\t2\n3\tx\n")
    assert main(["scale", str(REACH), "-F", str(tmp_path), "--workers", "0", "--out", str(tmp_path / "out"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"{tmp_path / 'edge.facts'}:2:") and "Traceback" not in err


def test_missing_matplotlib_says_how_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main(["scale", str(REACH), "-F", str(FACTS), "--workers", "0", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "error: the plots need matplotlib: pip install 'dask-datalog[scale]' (or give --no-plots)\n"
    assert not list(tmp_path.iterdir()), "nothing ran"
