// The job service's pages: the job list and one job's page, both filled from the REST API.
// The bearer token is entered once and kept in this tab's sessionStorage; every request sends
// it as the Authorization header (no cookie: another site's request never carries it). Every
// value from the service is put in the page as text (textContent, attributes), never as HTML.
"use strict";

(() => {
  const TOKEN = "dask-datalog-token";
  const SVG = "http://www.w3.org/2000/svg";
  const LIST_EVERY_MS = 2000;
  const JOB_EVERY_MS = 1000;
  const root = document.body.dataset.root;
  const byId = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  let timer = null;
  let generation = 0; // the newest poll's: an older one still waiting for its answer ends there

  class Unauthorized extends Error {}

  async function api(path, method = "GET") {
    const token = sessionStorage.getItem(TOKEN);
    if (!token) throw new Unauthorized("");
    const response = await fetch(root + "api/" + path, {
      method,
      headers: { Authorization: "Bearer " + token },
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized("the service refused this token");
    showContent();
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${response.status}: ${typeof body.detail === "string" ? body.detail : response.statusText}`);
    }
    return response.json();
  }

  function setText(element, value) {
    element.textContent = value === null || value === undefined ? "" : String(value);
  }

  function addCell(row, value, numeric = false) {
    const cell = row.insertCell();
    setText(cell, value);
    if (numeric) cell.className = "number";
    return cell;
  }

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    parent.appendChild(element);
    return element;
  }

  function elapsed(job) {
    if (!job.started) return 0;
    return (job.ended ?? Date.now() / 1000) - job.started;
  }

  function rate(job) {
    const seconds = elapsed(job);
    return seconds > 0 ? job.tuples / seconds : 0;
  }

  function duration(seconds) {
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const minutes = Math.floor(seconds / 60);
    return minutes < 60 ? `${minutes} min ${Math.round(seconds % 60)} s` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let k = 0;
    while (n >= 1024 && k < units.length - 1) {
      n /= 1024;
      k += 1;
    }
    return (k ? n.toFixed(1) : String(n)) + " " + units[k];
  }

  function showContent() {
    byId("login").hidden = true;
    byId("content").hidden = false;
    byId("forget").hidden = false;
  }

  function showLogin(message) {
    clearTimeout(timer);
    byId("content").hidden = true;
    byId("forget").hidden = true;
    byId("login").hidden = false;
    setText(byId("login-error"), message);
    byId("token").focus();
  }

  // Runs ``step`` now and again every ``ms`` while it returns true; a refused token asks for another.
  async function poll(step, ms) {
    const mine = ++generation;
    clearTimeout(timer);
    let again = true;
    try {
      again = await step();
      if (mine !== generation) return;
      setText(byId("status"), "");
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof Unauthorized) return showLogin(error.message);
      setText(byId("status"), error.message);
    }
    if (again) timer = setTimeout(() => poll(step, ms), ms);
  }

  async function showCluster() {
    const cluster = await api("cluster");
    setText(byId("cluster"), `${cluster.workers} worker${cluster.workers === 1 ? "" : "s"}`);
    const link = byId("dashboard");
    if (link && cluster.dashboard && /^https?:\/\//.test(cluster.dashboard)) {
      link.href = cluster.dashboard;
      link.hidden = false;
    }
  }

  // -- the job list --------------------------------------------------------------------------------

  async function listJobs() {
    const jobs = await api("jobs");
    const body = byId("jobs").tBodies[0];
    body.replaceChildren();
    for (const job of jobs.reverse()) {
      const row = body.insertRow();
      row.dataset.job = job.id;
      const link = document.createElement("a");
      link.href = root + "jobs/" + encodeURIComponent(job.id);
      setText(link, job.id);
      row.insertCell().appendChild(link);
      addCell(row, job.state).classList.add("state", job.state);
      addCell(row, job.program_name);
      addCell(row, job.owner);
      addCell(row, numbers.format(job.iterations), true);
      addCell(row, numbers.format(job.tuples), true);
      addCell(row, numbers.format(rate(job)), true);
      addCell(row, duration(elapsed(job)), true);
    }
    byId("empty").hidden = jobs.length > 0;
    return true;
  }

  // -- one job -------------------------------------------------------------------------------------

  const jobId = decodeURIComponent(location.pathname.split("/").pop());
  let logOffset = 0;

  function showFacts(job, figures) {
    setText(byId("program"), job.program_name);
    const state = byId("state");
    setText(state, job.state);
    state.className = "state " + job.state;
    document.title = `${job.state} ${job.program_name} (dask-datalog job ${job.id})`;
    byId("stop").disabled = ["STOPPED", "SUCCEEDED", "FAILED"].includes(job.state);
    const facts = [
      ["job", job.id],
      ["owner", job.owner],
      ["submitted", new Date(job.submitted * 1000).toLocaleString()],
      ["elapsed", duration(elapsed(job))],
      ["iterations", numbers.format(job.iterations)],
      ["tuples", numbers.format(job.tuples)],
      ["tuples/s", numbers.format(rate(job))],
    ];
    if (figures.bytes_exchanged !== null) facts.push(["exchanged", bytes(figures.bytes_exchanged)]);
    if (job.error) facts.push(["error", job.error]);
    const list = byId("facts");
    list.replaceChildren();
    for (const [name, value] of facts) {
      setText(list.appendChild(document.createElement("dt")), name);
      const dd = list.appendChild(document.createElement("dd"));
      dd.id = "fact-" + name.replace("/", "-");
      setText(dd, value);
    }
    setText(byId("span"), "span " + figures.span);
  }

  // Each point's place on the x axis: the run's iterations in order, strata one after another.
  // The points of a running job are the iterations its workers reported (at most a few a second),
  // so they may skip some; a SUCCEEDED job's are all of them.
  function places(points) {
    let base = 0;
    let last = -1;
    return points.map((p, i) => {
      if (i && p.stratum !== points[i - 1].stratum) base += last + 1;
      last = p.iteration;
      return base + p.iteration;
    });
  }

  // The deltas as a line over the iterations (dashed lines between strata; y: new tuples, from 0
  // to the largest).
  function plot(points) {
    const area = byId("plot");
    area.replaceChildren();
    area.dataset.points = String(points.length);
    const [width, height, left, right, top, bottom] = [640, 240, 64, 12, 12, 28];
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }, area);
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }, area);
    if (!points.length) {
      setText(svg("text", { x: left + 12, y: height / 2 }, area), "no iteration yet");
      return;
    }
    const most = points.reduce((m, p) => Math.max(m, p.delta), 1);
    const at = places(points);
    const span = at[at.length - 1] - at[0];
    const x = (i) => left + (span ? ((at[i] - at[0]) * (width - left - right)) / span : (width - left - right) / 2);
    const y = (delta) => height - bottom - (delta / most) * (height - top - bottom);
    setText(svg("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, area), numbers.format(most));
    setText(svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, area), "0");
    setText(svg("text", { x: left, y: height - 8 }, area), String(at[0] + 1));
    setText(svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, area), `iteration ${at[at.length - 1] + 1}`);
    points.forEach((p, i) => {
      if (i && p.stratum !== points[i - 1].stratum) {
        const between = (x(i - 1) + x(i)) / 2;
        svg("line", { class: "stratum", x1: between, y1: top, x2: between, y2: height - bottom }, area);
      }
    });
    svg("polyline", { class: "series", points: points.map((p, i) => `${x(i)},${y(p.delta)}`).join(" ") }, area);
    if (points.length <= 100) points.forEach((p, i) => svg("circle", { cx: x(i), cy: y(p.delta), r: 3 }, area));
  }

  function showWorkers(workers) {
    byId("workers").hidden = !workers.length;
    byId("no-workers").hidden = workers.length > 0;
    const body = byId("workers").tBodies[0];
    body.replaceChildren();
    for (const worker of workers) {
      const row = body.insertRow();
      const phases = worker.phases;
      const exchange = worker.exchange;
      for (const value of [
        worker.rank,
        worker.total_s.toFixed(3),
        worker.load_s.toFixed(3),
        ...["join", "dedup", "difference", "merge"].map((p) => (phases[p] ?? 0).toFixed(3)),
        bytes(exchange.bytes_sent),
        bytes(exchange.bytes_received),
        (exchange.send_s ?? 0).toFixed(3),
        (exchange.wait_s ?? 0).toFixed(3),
      ]) {
        addCell(row, value, true);
      }
    }
  }

  async function readLog() {
    const log = byId("log");
    for (;;) {
      const page = await api(`jobs/${encodeURIComponent(jobId)}/logs?offset=${logOffset}&limit=1000`);
      if (page.lines.length) {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.appendChild(document.createTextNode(page.lines.join("\n") + "\n"));
        if (atEnd) log.scrollTop = log.scrollHeight;
      }
      logOffset = page.next;
      if (page.lines.length < 1000) return page.final;
    }
  }

  async function showJob() {
    const job = await api(`jobs/${encodeURIComponent(jobId)}`);
    const figures = await api(`jobs/${encodeURIComponent(jobId)}/figures`);
    showFacts(job, figures);
    plot(figures.iterations);
    showWorkers(figures.workers);
    const logDone = await readLog();
    // The job's record was read first: once it is final, these figures and lines are its last.
    return !(["STOPPED", "SUCCEEDED", "FAILED"].includes(job.state) && logDone);
  }

  async function stopJob() {
    byId("stop").disabled = true;
    try {
      await api(`jobs/${encodeURIComponent(jobId)}/stop`, "POST");
    } catch (error) {
      if (error instanceof Unauthorized) return showLogin(error.message);
      setText(byId("status"), error.message);
    }
    poll(showJob, JOB_EVERY_MS);
  }

  // -- start ---------------------------------------------------------------------------------------

  function start() {
    showCluster().catch(() => {}); // a refused token shows in the poll's own request
    if (document.body.dataset.page === "job") poll(showJob, JOB_EVERY_MS);
    else poll(listJobs, LIST_EVERY_MS);
  }

  byId("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN, byId("token").value.trim());
    byId("token").value = "";
    start();
  });
  byId("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN);
    showLogin("");
  });
  const stop = byId("stop");
  if (stop) stop.addEventListener("click", stopJob);
  if (sessionStorage.getItem(TOKEN)) start();
  else showLogin("");
})();
