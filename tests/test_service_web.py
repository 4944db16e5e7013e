"""The job service's web page in a real headless Chromium (tests/chromium.py: its DevTools
protocol on a pipe) against a real ``dask-datalog serve`` on loopback, and its ``/metrics``
parsed with prometheus_client's own parser. The page's figures are compared with the API's
records and with an in-process run of the same program; screenshots are checked by their
pixels. Without Chromium (Debian: ``apt-get install chromium``) the browser tests skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import BrowserError, Chromium, executable
from distributed import Client
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_service import BAD, COUNT, EXAMPLES, Served, until

from dask_datalog.cluster.api import Program
from dask_datalog.cluster.service.app import create_app
from dask_datalog.cluster.service.auth import Roots, Tokens
from dask_datalog.cluster.service.client import FINAL, ServiceClient
from dask_datalog.cluster.service.jobs import JobService

SERIES = (0x1F, 0x6F, 0xD1)  # the plot's line and points (style.css)
WIDTH, HEIGHT = 1200, 1000  # the browser's viewport, so its screenshots' size
XSS = '<img src=x onerror="window.__xss = 1">bad.dl'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service, two workers (so a run's workers exchange bytes), for every test here."""
    folder = tmp_path_factory.mktemp("web")
    (folder / "roots").mkdir()
    # Every job on the cluster: the page's figures and the metrics are of workers.
    service = Served(folder / "state", folder / "roots", "--workers", "2", "--in-process-below", "0")
    yield service
    service.kill()


@pytest.fixture(scope="module")
def jobs(served: Served) -> Iterator[ServiceClient]:
    client = ServiceClient(served.address, "alice-token")
    yield client
    client.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    binary = executable()
    if binary is None:
        pytest.skip("no Chromium to drive (Debian: apt-get install chromium)")
    try:
        chromium = Chromium(binary, tmp_path / "profile", WIDTH, HEIGHT)
    except (BrowserError, OSError) as error:
        pytest.skip(f"Chromium ({binary}) did not start: {error}")
    yield chromium
    chromium.close()


def log_in(browser: Chromium, url: str, token: str) -> None:
    browser.open(url)
    browser.until("!document.getElementById('login').hidden", "the token form")
    browser.evaluate(f"document.getElementById('token').value = {token!r}; document.querySelector('#login button').click()")


def text(browser: Chromium, selector: str) -> str:
    return str(browser.evaluate(f"document.querySelector({selector!r}).textContent"))


def drawn(screenshot: Path, box: dict[str, float]) -> int:
    """Pixels of the plot's colour inside ``box`` (CSS pixels, scale 1) of the screenshot."""
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    area = image.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
    return sum(n for n, colour in area.getcolors(1 << 20) or [] if max(abs(c - s) for c, s in zip(colour, SERIES)) < 24)


def colours(screenshot: Path) -> int:
    return len(Image.open(screenshot).convert("RGB").getcolors(1 << 20) or [])


def plot_box(browser: Chromium) -> dict[str, float]:
    browser.evaluate("document.getElementById('plot').scrollIntoView()")
    return dict(
        browser.evaluate(
            "(({x, y, width, height}) => ({x, y, width, height}))(document.getElementById('plot').getBoundingClientRect())"
        )
    )


def test_the_list_shows_a_job_and_its_page_plots_every_iteration(
    served: Served, jobs: ServiceClient, browser: Chromium, tmp_path: Path
) -> None:
    program = (EXAMPLES / "sg.dl").read_text()
    job = jobs.submit(EXAMPLES / "sg.dl", facts=EXAMPLES / "facts" / "sg")
    done = jobs.wait(job, timeout=120)
    assert done["state"] == "SUCCEEDED"

    log_in(browser, f"{served.address}/", "wrong-token")
    assert browser.until("document.getElementById('login-error').textContent", "the refusal") == "the service refused this token"
    log_in(browser, f"{served.address}/", "alice-token")
    row = f"#jobs tr[data-job='{job}']"
    browser.until(f"!!document.querySelector({row!r})", "the job in the list")
    cells = browser.evaluate(f"[...document.querySelector({row!r}).cells].map(c => c.textContent)")
    assert cells[:5] == [job, "SUCCEEDED", str(EXAMPLES / "sg.dl"), "alice", str(done["iterations"])]
    assert cells[5] == f"{done['tuples']:,}"
    listed = browser.screenshot(tmp_path / "list.png")
    assert colours(listed) > 8  # not blank: text, the table's lines, the state's badge

    link = browser.evaluate(f"document.querySelector({row + ' a'!r}).href")
    assert link == f"{served.address}/jobs/{job}"
    browser.open(link)
    browser.until("document.getElementById('state').textContent === 'SUCCEEDED'", "the job's page")
    points = int(
        browser.until(
            "document.getElementById('workers').rows.length > 1 && document.getElementById('plot').dataset.points", "the plot"
        )
    )
    assert points == done["iterations"] == browser.evaluate("document.querySelector('#plot polyline').points.numberOfItems")
    assert browser.evaluate("document.querySelectorAll('#plot circle').length") == points
    # The plotted deltas are the run's: the same program run here gives them iteration by iteration.
    expected = [
        sum(it["delta"].values())
        for s in Program(program).run(fact_dir=EXAMPLES / "facts" / "sg").stats["strata"]
        for it in s["iterations"]
    ]
    figures = httpx.get(f"{served.address}/api/jobs/{job}/figures", headers={"Authorization": "Bearer alice-token"}).json()
    assert [p["delta"] for p in figures["iterations"]] == expected and sum(expected) == done["tuples"]
    assert browser.evaluate("document.getElementById('workers').tBodies[0].rows.length") == 2
    sent = sum(w["exchange"]["bytes_sent"] for w in figures["workers"])
    assert sent == figures["bytes_exchanged"] > 0 and text(browser, "#fact-exchanged").endswith("B")
    browser.until("document.getElementById('log').textContent.includes('\\nSUCCEEDED in ')", "the log's end")
    # The dashboard link is the cluster's, and the cluster's spans hold the job's tasks.
    with Client(served.scheduler) as client:
        assert browser.evaluate("document.getElementById('dashboard').href") == client.dashboard_link
        spans = client.run_on_scheduler(
            lambda dask_scheduler: [s.name for s in dask_scheduler.extensions["spans"].spans.values()]
        )
    assert (f"datalog-job-{job}",) in spans and text(browser, "#span") == f"span datalog-job-{job}"
    page = browser.screenshot(tmp_path / "job.png")
    assert colours(page) > 8 and drawn(page, plot_box(browser)) > 300  # the line and its points were drawn
    assert drawn(browser.screenshot(tmp_path / "top.png"), {"x": 0, "y": 0, "width": WIDTH, "height": 40}) == 0  # and only there


def test_the_stop_button_stops_a_running_job_whose_plot_grows_meanwhile(
    served: Served, jobs: ServiceClient, browser: Chromium, tmp_path: Path
) -> None:
    job = jobs.submit(_program(tmp_path, COUNT))
    until(lambda: jobs.status(job)["iterations"] >= 5, "the job to run", 120)
    log_in(browser, f"{served.address}/jobs/{job}", "alice-token")
    first = int(browser.until("Number(document.getElementById('plot').dataset.points)", "the live plot"))
    browser.until(f"Number(document.getElementById('plot').dataset.points) > {first}", "the plot to grow")
    assert browser.evaluate("document.getElementById('stop').disabled") is False
    browser.evaluate("document.getElementById('stop').click()")
    browser.until("document.getElementById('state').textContent === 'STOPPED'", "the page to say STOPPED")
    stopped = jobs.status(job)
    assert stopped["state"] == "STOPPED" and stopped["error"] == "stopped on request"
    assert browser.evaluate("document.getElementById('stop').disabled") is True
    assert text(browser, "#fact-error") == "stopped on request"
    browser.until("document.getElementById('log').textContent.endsWith('STOPPED: stopped on request\\n')", "the log's end")
    page = browser.screenshot(tmp_path / "stopped.png")
    assert drawn(page, plot_box(browser)) > 100


def test_a_program_name_and_error_with_markup_are_shown_as_text(
    served: Served, jobs: ServiceClient, browser: Chromium, tmp_path: Path
) -> None:
    posted = httpx.post(
        f"{served.address}/api/jobs", json={"program": BAD, "program_name": XSS}, headers={"Authorization": "Bearer alice-token"}
    )
    job = posted.json()["id"]
    failed = jobs.wait(job, timeout=120)
    assert failed["state"] == "FAILED" and failed["error"] == f"{XSS}:3:9: error: undeclared relation b"
    log_in(browser, f"{served.address}/", "alice-token")
    browser.until(f"!!document.querySelector(\"#jobs tr[data-job='{job}']\")", "the job in the list")
    assert browser.evaluate(f"document.querySelector(\"#jobs tr[data-job='{job}']\").cells[2].textContent") == XSS
    browser.open(f"{served.address}/jobs/{job}")
    browser.until("document.getElementById('state').textContent === 'FAILED'", "the job's page")
    browser.until("document.getElementById('log').textContent.includes('FAILED:')", "the log")
    assert text(browser, "#program") == XSS and text(browser, "#fact-error") == failed["error"]
    assert f"submitted by alice: {XSS}" in text(browser, "#log")
    assert browser.evaluate("document.title").endswith(f"{XSS} (dask-datalog job {job})")
    assert browser.evaluate("document.querySelectorAll('img').length") == 0  # no element was made of it
    assert browser.evaluate("window.__xss") is None
    assert colours(browser.screenshot(tmp_path / "xss.png")) > 8


def test_metrics_count_the_jobs_run(served: Served, jobs: ServiceClient, tmp_path: Path) -> None:
    admin = httpx.Client(base_url=served.address, headers={"Authorization": "Bearer root-token"})
    assert httpx.get(f"{served.address}/metrics").status_code == 401  # a token, as for the API
    for _ in range(2):
        assert (
            jobs.wait(jobs.submit(EXAMPLES / "reach.dl", facts=EXAMPLES / "facts" / "reach"), timeout=120)["state"] == "SUCCEEDED"
        )
    assert jobs.wait(jobs.submit(_program(tmp_path, BAD)), timeout=120)["state"] == "FAILED"
    running = jobs.submit(_program(tmp_path, COUNT))
    until(lambda: jobs.status(running)["state"] == "RUNNING", "the job to run", 120)
    assert metrics(admin)["datalog_jobs_running"][()] == 1
    jobs.stop(running)
    until(lambda: all(j["state"] in FINAL for j in admin.get("/api/jobs").json()), "every job to end", 120)

    found = metrics(admin)
    records = admin.get("/api/jobs").json()
    for state in ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"):
        assert found["datalog_jobs"][(("state", state),)] == sum(r["state"] == state for r in records), state
    assert found["datalog_jobs_running"][()] == found["datalog_queue_length"][()] == 0
    assert found["datalog_iterations_total"][()] == sum(r["iterations"] for r in records) > 0
    assert found["datalog_tuples_derived_total"][()] == sum(r["tuples"] for r in records) > 0
    exchanged = [
        admin.get(f"/api/jobs/{r['id']}/figures").json()["bytes_exchanged"] for r in records if r["state"] == "SUCCEEDED"
    ]
    assert found["datalog_bytes_exchanged_total"][()] == sum(exchanged) > 0
    latencies = [r["ended"] - r["submitted"] for r in records]
    histogram = found["datalog_job_latency_seconds_bucket"]
    for (label,), count in histogram.items():
        assert count == sum(s <= float(label[1]) for s in latencies), label
    assert found["datalog_job_latency_seconds_count"][()] == len(records) >= 4
    assert found["datalog_job_latency_seconds_sum"][()] == pytest.approx(sum(latencies))
    admin.close()


def test_metrics_may_be_served_without_a_token(tmp_path: Path) -> None:
    service = JobService(tmp_path, None, 1, Roots([]))  # no job runs: no cluster needed
    tokens = Tokens({"t": "alice"}, set())
    try:
        assert TestClient(create_app(service, tokens, 2**20)).get("/metrics").status_code == 401
        opened = TestClient(create_app(service, tokens, 2**20, open_metrics=True)).get("/metrics")
        assert opened.status_code == 200 and "datalog_queue_length 0.0" in opened.text
    finally:
        service.close()


def metrics(http: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The scrape's samples, by name and then by their labels."""
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=")
    found: dict[str, dict[Any, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _program(folder: Path, text: str) -> Path:
    path = folder / "program.dl"
    path.write_text(text)
    return path
