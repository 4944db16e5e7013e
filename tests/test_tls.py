"""Secured clusters: a scheduler and workers that require TLS, with certificates made here
(``Security.temporary``: one self-signed certificate for every role, written to files for the
command line). The job runs through the API and the CLI; its worker-to-worker rounds take the
Dask RPC path (encrypted by the cluster's comm), never the plain-TCP mesh."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

pytest.importorskip("cryptography")  # what Security.temporary needs

from distributed.security import Security
from test_cli import summary

from dask_datalog.cluster import Program
from dask_datalog.cluster.cli.main import main
from dask_datalog.engine.errors import DatalogError

ROOT = Path(__file__).resolve().parent.parent
SG = ROOT / "examples" / "sg.dl"
FACTS = ROOT / "examples" / "facts" / "sg"


@pytest.fixture(scope="module")
def security() -> Security:
    return Security.temporary()


@pytest.fixture(scope="module")
def pem_files(security: Security, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The temporary certificate (its own CA) and key as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    files = {"ca": security.tls_ca_file, "cert": security.tls_client_cert, "key": security.tls_client_key}
    paths = {}
    for name, pem in files.items():
        paths[name] = folder / f"{name}.pem"
        paths[name].write_text(pem)
    return paths


def tls_args(pem: dict[str, Path]) -> list[str]:
    return ["--tls-ca-file", str(pem["ca"]), "--tls-cert", str(pem["cert"]), "--tls-key", str(pem["key"])]


@pytest.fixture(scope="module")
def tls_cluster(security: Security) -> LocalCluster:
    """Two worker processes and a scheduler that speak TLS only."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        protocol="tls://",
        security=security,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", str(SG), "-F", str(FACTS), "-D", str(out), "--no-cluster"]) == 0
    return (out / "sg.csv").read_bytes()


def test_api_on_a_tls_cluster(tls_cluster: LocalCluster, security: Security) -> None:
    assert tls_cluster.scheduler_address.startswith("tls://")
    expected = Program.from_file(SG).run(fact_dir=FACTS, backend="numpy").tuples("sg")
    with Client(tls_cluster, security=security, set_as_default=False) as client:
        assert all(w.startswith("tls://") for w in client.ncores())
        result = Program.from_file(SG).run(fact_dir=FACTS, backend="numpy", client=client)
        assert result.stats["workers"] == 2
        assert result.tuples("sg") == expected
        assert result.stats["bytes_exchanged"] > 0
        result.close()


def test_cli_with_tls_flags(tls_cluster: LocalCluster, pem_files: dict[str, Path], tmp_path: Path, reference: bytes) -> None:
    address = tls_cluster.scheduler_address
    assert main(["run", str(SG), "-F", str(FACTS), "-D", str(tmp_path / "a"), "--scheduler", address, *tls_args(pem_files)]) == 0
    assert (tmp_path / "a" / "sg.csv").read_bytes() == reference
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(f'{{"address": "{address}"}}')
    code = main(
        [
            "run",
            str(SG),
            "-F",
            str(FACTS),
            "-D",
            str(tmp_path / "b"),
            "--scheduler-file",
            str(scheduler_file),
            *tls_args(pem_files),
        ]
    )
    assert code == 0
    assert (tmp_path / "b" / "sg.csv").read_bytes() == reference


def test_cli_with_another_ca_is_one_line(tls_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = Security.temporary()
    pem = {"ca": other.tls_ca_file, "cert": other.tls_client_cert, "key": other.tls_client_key}
    files = {}
    for name, text in pem.items():
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    code = main(
        ["run", str(SG), "-F", str(FACTS), "-D", str(tmp_path), "--scheduler", tls_cluster.scheduler_address, *tls_args(files)]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: cannot reach the Dask scheduler at tls://")
        and "TLS certificate does not match" in err
        and err.count("\n") == 1
    ), err


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "dask_datalog.cluster.cli", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run.returncode, run.stderr, time.monotonic() - start


def _env_without_tls() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}


def test_cli_takes_dasks_tls_configuration(
    tls_cluster: LocalCluster, pem_files: dict[str, Path], tmp_path: Path, reference: bytes
) -> None:
    """No flags: the environment's DASK_DISTRIBUTED__COMM__TLS__* settings apply, as for any client."""
    env = _env_without_tls()
    env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] = str(pem_files["ca"])
    env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] = str(pem_files["cert"])
    env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] = str(pem_files["key"])
    code, err, _ = _cli(
        [str(SG), "-F", str(FACTS), "-D", str(tmp_path), "--scheduler", tls_cluster.scheduler_address], env, tmp_path
    )
    assert code == 0 and re.fullmatch(summary("cluster"), err), err
    assert (tmp_path / "sg.csv").read_bytes() == reference


def test_cli_without_credentials_is_one_line(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    address = tls_cluster.scheduler_address
    code, err, elapsed = _cli(
        [str(SG), "-F", str(FACTS), "-D", str(tmp_path), "--scheduler", address], _env_without_tls(), tmp_path
    )
    assert code == 1, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"error: the scheduler {address} requires TLS"), err
    assert elapsed < 30, "no connection attempt to wait for"
    assert not list(tmp_path.iterdir())


def test_tls_flags_need_a_scheduler(capsys: pytest.CaptureFixture[str], pem_files: dict[str, Path], tmp_path: Path) -> None:
    for where in (["--no-cluster"], ["--workers", "2"], []):
        with pytest.raises(SystemExit) as stop:
            main(["run", str(SG), "-F", str(FACTS), "-D", str(tmp_path), *where, *tls_args(pem_files)])
        assert stop.value.code == 2
        assert "--scheduler" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a certificate without its CA
        main(["run", str(SG), "--scheduler", "tls://127.0.0.1:1", "--tls-cert", str(pem_files["cert"])])
    assert "--tls-ca-file" in capsys.readouterr().err
    code = main(["run", str(SG), "--scheduler", "tcp://127.0.0.1:1", *tls_args(pem_files)])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: --tls-ca-file, --tls-cert and --tls-key need a tls:// scheduler address")
    missing = tmp_path / "nope.pem"
    code = main(
        ["run", str(SG), "--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", str(missing), "--tls-cert", str(pem_files["cert"])]
    )
    assert code == 1
    assert capsys.readouterr().err == f"error: TLS file {missing} does not exist\n"


def test_each_protocol_takes_its_transport(security: Security) -> None:
    """On tls:// the workers exchange over Dask's comms, encrypted (a socket mesh would be plain
    TCP); on tcp:// over the mesh, or over the comms when asked; a mesh asked for on tls:// is
    refused in one line."""
    expected = Program.from_file(SG).run(fact_dir=FACTS, backend="numpy").tuples("sg")
    for protocol, kwargs, exchange, transport in (
        ("tls://", {"security": security}, "auto", "comm"),
        ("tcp://", {}, "auto", "mesh"),
        ("tcp://", {}, "comm", "comm"),
    ):
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=False, protocol=protocol, dashboard_address=":0", **kwargs
            ) as cluster,
            Client(cluster, set_as_default=False, **kwargs) as client,
        ):
            result = Program.from_file(SG).run(fact_dir=FACTS, backend="numpy", client=client, exchange=exchange)
            assert result.tuples("sg") == expected
            used = {w["exchange"]["transport"] for w in result.stats["per_worker"]}
            rounds = [w["exchange"]["rounds"] for w in result.stats["per_worker"]]
            result.close()
            assert used == {transport} and min(rounds) > 1, (protocol, exchange, used)
            if protocol == "tls://":
                with pytest.raises(DatalogError, match="--exchange mesh needs a tcp:// cluster"):
                    Program.from_file(SG).run(fact_dir=FACTS, backend="numpy", client=client, exchange="mesh")
