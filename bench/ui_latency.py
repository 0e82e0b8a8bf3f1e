"""Benchmark: how quickly the page shows progress, and what the UI costs on top of the engine (demo mode).

Runs ``launch.py --demo`` as a real server, drives it with Chromium (Playwright) exactly as a user would (set the
inputs, press Start), and records in the page, with ``performance.now()`` and a MutationObserver, when the first
latent preview, the first section video and the "finished" state appear. The same job is then run on the engine
alone, in this process, with warm models. Reported per run and as medians:

* Start -> first preview, Start -> first section video, Start -> finished (as seen in the browser);
* the engine's own time for that job inside the server (what the page shows as "Done: ... in X s");
* the engine alone, no UI (warm models, same request);
* UI overhead = (browser-observed finish - engine alone) / engine alone; target <= 10 %.

Reproduce (from the repository root; about 2 minutes on 2 CPU cores; needs Debian's chromium and playwright)::

    python -m bench.ui_latency                   # demo defaults: 2 s, window 9, 8 steps, resolution 128
    python -m bench.ui_latency --repeats 5 --seconds 4

The module also holds the harness the browser tests use (free port, demo server subprocess, Chromium flags,
the in-page recorder), so the tests and the benchmark measure the page the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("FRAMEPACK_CHROMIUM", "/usr/bin/chromium"))
# `playwright install` cannot download browsers here: drive the distribution's Chromium, fully offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGE = REPO / "assets" / "chelsea_landscape.jpg"

# Installed in the page before Start is pressed: notes the time of every change of the progress state, the
# preview image, the section video and the final file, relative to the click on Start.
RECORDER_JS = """
() => {
  const log = window.__fp = {t0: null, events: []};
  const seen = {};
  const read = () => {
    const progress = document.querySelector('#progress .fp-progress');
    const preview = document.querySelector('#preview img');
    const video = document.querySelector('#video video');
    const file = document.querySelector('#final-file a');
    return {state: progress && progress.dataset.state, preview: preview && preview.getAttribute('src'),
            video: video && video.getAttribute('src'), file: file && file.getAttribute('href')};
  };
  const check = () => {
    const now = performance.now();
    const current = read();
    for (const kind in current) {
      if (current[kind] !== seen[kind]) {
        seen[kind] = current[kind];  // also a removal, so the same file shown again counts as a change
        if (current[kind]) {
          log.events.push({t: log.t0 === null ? null : now - log.t0, kind, value: current[kind],
                           state: current.state});
        }
      }
    }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                      characterData: true});
  document.querySelector('#start').addEventListener('click', () => {
    // From the click on, only changes count: what the previous run left on the page is the baseline.
    log.t0 = performance.now(); log.events = []; Object.assign(seen, read());
  }, true);
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DemoServer:
    """A ``launch.py --demo`` subprocess on 127.0.0.1 (see ``start_demo_server``)."""

    url: str
    output_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


@contextlib.contextmanager
def start_demo_server(work_dir: Path, *, models_dir: Path | None = None, extra_args: tuple[str, ...] = (),
                      timeout: float = 120.0) -> Iterator[DemoServer]:
    """Start ``launch.py --demo`` on a free port, wait until it answers, stop it (SIGTERM) on exit."""
    port = free_port()
    output_dir = work_dir / "outputs"
    log_path = work_dir / f"server-{port}.log"
    command = [sys.executable, str(REPO / "launch.py"), "--demo", "--server", "127.0.0.1", "--port", str(port),
               "--output-dir", str(output_dir), *extra_args]
    if models_dir is not None:
        command += ["--models-dir", str(models_dir)]
    # Gradio's upload and cache folder per server, so parallel runs never share (or sweep) each other's files.
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work_dir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = DemoServer(f"http://127.0.0.1:{port}/", output_dir, process, log_path)
    try:
        _wait_until_up(server, timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(server: DemoServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"launch.py exited with {server.process.returncode}:\n{server.log()}")
        try:
            # The page, then the job API: launch.py mounts the API once Gradio's server is up, so the page can
            # answer a moment before /api/v1 does.
            with urllib.request.urlopen(server.url, timeout=2) as page, \
                    urllib.request.urlopen(server.url + "api/v1/openapi.json", timeout=2) as api:
                if page.status == 200 and api.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"launch.py did not answer within {timeout:.0f} s:\n{server.log()}")


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def set_number(page: Any, elem_id: str, value: float) -> None:
    """Type into the number box of a gr.Slider / gr.Number and commit it, as a user does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        # A component that has just been shown (an opened accordion) can re-render and drop the first edit.
        page.wait_for_timeout(100)
        if float(box.input_value() or "nan") == float(value):
            return
    raise AssertionError(f"#{elem_id} does not keep the value {value}: it shows {box.input_value()!r}")


def set_job_inputs(page: Any, *, image: Path | None = None, prompt: str | None = None, seconds: float | None = None,
                   steps: int | None = None, window: int | None = None, resolution: int | None = None,
                   seed: int | None = None, teacache: bool | None = None) -> None:
    """Fill the page's inputs; the Advanced ones open the accordion first."""
    if image is not None:
        page.set_input_files("#start-image input[type=file]", str(image))
        page.wait_for_selector("#start-image img")
    if prompt is not None:
        page.fill("#prompt textarea", prompt)
    for elem_id, value in (("seconds", seconds), ("steps", steps), ("seed", seed)):
        if value is not None:
            set_number(page, elem_id, value)
    if window is not None or resolution is not None or teacache is not None:
        if not page.locator("#window").is_visible():
            page.click("#advanced button.label-wrap")
            page.locator("#window input[type=number]").wait_for(state="visible")
        if window is not None:
            set_number(page, "window", window)
        if resolution is not None:
            set_number(page, "resolution", resolution)
        if teacache is not None:
            choose_option(page, "cache", CACHE_LABELS[teacache])


# What the cache dropdown shows for TeaCache on and off (app/ui/generate_tab.py CACHE_CHOICES).
CACHE_LABELS = {True: "TeaCache (the official app's)", False: "None (full model, final quality)"}


def choose_option(page: Any, elem_id: str, label: str) -> None:
    """Pick ``label`` in the Gradio dropdown ``#elem_id`` as a user does: open it, click the option."""
    page.click(f"#{elem_id} input")
    page.locator("ul[role=listbox] li", has_text=label).first.click()
    if page.locator(f"#{elem_id} input").input_value() != label:
        raise AssertionError(f"#{elem_id} shows {page.locator(f'#{elem_id} input').input_value()!r}, not {label!r}")


def page_state(page: Any) -> str | None:
    return page.locator("#progress .fp-progress").get_attribute("data-state")


def wait_for_state(page: Any, states: tuple[str, ...], timeout_s: float = 60.0) -> str:
    """Wait until the progress box says one of ``states`` (running, queued, finished, cancelled, failed ...)."""
    # The state is taken from the same look that found it, as in ``start_job``: read again a moment later, a frame
    # of a stream this tab has replaced may have drawn another job's state for an instant.
    found = page.wait_for_function(
        "(wanted) => { const p = document.querySelector('#progress .fp-progress');"
        " return p && wanted.includes(p.dataset.state) ? p.dataset.state : null; }",
        arg=list(states), timeout=timeout_s * 1000)
    return found.json_value()


def start_job(page: Any, other_than: tuple[str, ...] = ()) -> str:
    """Press Start and wait until the page follows the new job (the previous job's state may still be shown, and
    so may ``other_than``: jobs another stream of this tab drew a moment ago, which the page draws over again)."""
    before = page.locator("#progress .fp-progress").get_attribute("data-job")
    page.click("#start")
    # The id is taken from the same look that found it new: read again a moment later, a frame of a stream this
    # tab has replaced may have drawn an old job over it for an instant.
    found = page.wait_for_function(
        "(old) => { const p = document.querySelector('#progress .fp-progress');"
        " return p && p.dataset.job && !old.includes(p.dataset.job) ? p.dataset.job : null; }",
        arg=[before, *other_than])
    return found.json_value()


def recorded_events(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("() => window.__fp ? window.__fp.events : []")


# The benchmark ----------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One job on one path. Wall seconds from the start to the end as that path sees it; CPU seconds used by each
    process involved (None where unknown)."""

    wall_s: float
    engine_cpu_s: float | None = None  # the process that runs the engine (this one, or the server)
    client_cpu_s: float | None = None  # the browser, or this process acting as the API client
    first_preview_s: float | None = None
    first_section_video_s: float | None = None
    engine_in_server_s: float | None = None


def _first(events: list[dict[str, Any]], kind: str, predicate: Any = lambda e: True) -> float:
    times = [e["t"] for e in events if e["kind"] == kind and e["t"] is not None and predicate(e)]
    if not times:
        raise RuntimeError(f"no {kind} event recorded: {events}")
    return min(times) / 1000


def _engine_seconds(progress_text: str) -> float:
    """The engine's own time for the job, from the service's "Done: N frames in X s" message."""
    return float(progress_text.split("frames in ")[1].split(" s")[0])


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of one process, all threads (psutil comes with accelerate); None if unknown."""
    if pid is None:
        return None
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except (ImportError, OSError, Exception):  # noqa: BLE001 - a missing number, not a failed benchmark
        return None


def _chromium_cpu_s() -> float | None:
    """CPU seconds used so far by every Chromium process; None if unknown."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        try:
            # /usr/bin/chromium is a wrapper script; the processes are /usr/lib/chromium/chromium and its children.
            if process.info["cmdline"] and "chromium" in Path(process.info["cmdline"][0]).name:
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.Error, OSError):
            continue
    return total


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


class BrowserPath:
    """The page in Chromium, driven with the Start button; one page for all runs."""

    def __init__(self, browser: Any, url: str, job: dict[str, Any], server_pid: int | None) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1100})
        self.page = self.context.new_page()
        self.page.goto(url)
        self.page.wait_for_selector("#start")
        set_job_inputs(self.page, image=IMAGE, prompt="The cat turns its head", teacache=False, **job)
        self.page.evaluate(RECORDER_JS)
        self.server_pid = server_pid

    def run(self, seed: int) -> Run:
        page = self.page
        set_number(page, "seed", seed)  # new content, so no preview URL repeats a previous one
        server_before, browser_before = _process_cpu_s(self.server_pid), _chromium_cpu_s()
        start_job(page)
        wait_for_state(page, ("finished", "failed", "cancelled"), timeout_s=600)
        server_after, browser_after = _process_cpu_s(self.server_pid), _chromium_cpu_s()
        # The finished video loops in the player; pause it so the page is idle while the other paths run.
        page.evaluate("() => document.querySelectorAll('video').forEach(v => v.pause())")
        final = page.locator("#progress").inner_text()
        if page_state(page) != "finished":
            raise RuntimeError(f"the job did not finish: {final}")
        events = recorded_events(page)
        return Run(wall_s=_first(events, "state", lambda e: e["value"] == "finished"),
                   engine_cpu_s=_delta(server_after, server_before), client_cpu_s=_delta(browser_after, browser_before),
                   first_preview_s=_first(events, "preview"),
                   first_section_video_s=_first(events, "video", lambda e: e["state"] == "running"),
                   engine_in_server_s=_engine_seconds(final))

    def close(self) -> None:
        self.context.close()


class ClientPath:
    """The same job through the server's /generate endpoint (gradio_client, streaming status): no browser."""

    def __init__(self, url: str, job: dict[str, Any], server_pid: int | None) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.job = job
        self.server_pid = server_pid

    def run(self, seed: int) -> Run:
        from gradio_client import handle_file

        job = self.job
        server_before, own_before = _process_cpu_s(self.server_pid), _own_cpu_s()
        started = time.perf_counter()
        _, status = self.client.predict(handle_file(str(IMAGE)), "The cat turns its head", seconds=job["seconds"],
                                        steps=job["steps"], latent_window_size=job["window"],
                                        resolution=job["resolution"], seed=seed, cache="none",
                                        api_name="/generate")
        wall = time.perf_counter() - started
        if status["state"] != "finished":
            raise RuntimeError(f"the API job did not finish: {status}")
        return Run(wall_s=wall, engine_cpu_s=_delta(_process_cpu_s(self.server_pid), server_before),
                   client_cpu_s=_own_cpu_s() - own_before)


class EnginePath:
    """The same job on the engine alone, in this process (no service, no UI), warm models."""

    def __init__(self, models_dir: Path, job: dict[str, Any], work: Path) -> None:
        from framepack_core.models.devices import resolve_device_config
        from framepack_core.models.loading import ModelSource
        from framepack_core.models.store import ModelStore
        from framepack_core.pipeline.engine import FramePackEngine

        self.engine = FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))
        self.job = job
        self.work = work

    def run(self, seed: int) -> Run:
        from framepack_core.events import JobFinished
        from framepack_core.request import GenerationRequest

        job = self.job
        request = GenerationRequest(image=IMAGE, prompt="The cat turns its head", cache="none",
                                    seconds=job["seconds"], steps=job["steps"], seed=seed,
                                    latent_window_size=job["window"], resolution=job["resolution"],
                                    output=self.work / f"alone_{seed}.mp4")
        cpu_before, started = _own_cpu_s(), time.perf_counter()
        final = list(self.engine.generate(request))[-1]
        wall = time.perf_counter() - started
        if isinstance(final, JobFinished):
            return Run(wall_s=wall, engine_cpu_s=_own_cpu_s() - cpu_before)
        raise RuntimeError(f"engine run failed: {final}")


@dataclass
class Results:
    browser: list[Run]
    client: list[Run]
    alone: list[Run]


def measure(url: str | None, models_dir: Path, job: dict[str, Any], repeats: int, chromium: Any = None,
            server_pid: int | None = None) -> Results:
    """Round-robin: browser run, API run, engine-alone run, repeated; one at a time, so they never share the CPU,
    and a slow patch of a busy machine hits all three alike. The first round loads the models and is dropped.

    Without ``url`` a demo server is started (and its CPU time measured); without ``chromium`` (a Playwright
    browser) one is launched.
    """
    results = Results([], [], [])
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        if url is None:
            server = stack.enter_context(start_demo_server(Path(work), models_dir=models_dir))
            url, server_pid = server.url, server.process.pid
        if chromium is None:
            from playwright.sync_api import sync_playwright

            chromium = launch_chromium(stack.enter_context(sync_playwright()))
            stack.callback(chromium.close)
        browser = BrowserPath(chromium, url, job, server_pid)
        stack.callback(browser.close)
        client, alone = ClientPath(url, job, server_pid), EnginePath(models_dir, job, Path(work))
        for round_number in range(repeats + 1):
            seed = 1000 + round_number
            measured = browser.run(seed), client.run(seed), alone.run(seed)
            if round_number > 0:
                results.browser.append(measured[0])
                results.client.append(measured[1])
                results.alone.append(measured[2])
    return results


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(results: Results, job: dict[str, Any], repeats: int) -> str:
    alone_wall = _median([r.wall_s for r in results.alone])
    alone_cpu = _median([r.engine_cpu_s for r in results.alone])

    def row(name: str, runs: list[Run]) -> str:
        wall, cpu, client = (_median([r.wall_s for r in runs]), _median([r.engine_cpu_s for r in runs]),
                             _median([r.client_cpu_s for r in runs]))
        vs_wall = _fmt(wall / alone_wall - 1, "+.1%") if runs is not results.alone else ""
        vs_cpu = _fmt(cpu / alone_cpu - 1, "+.1%") if cpu is not None and runs is not results.alone else ""
        return (f"| {name} | {_fmt(_median([r.first_preview_s for r in runs]))} "
                f"| {_fmt(_median([r.first_section_video_s for r in runs]))} | {wall:.2f} | {vs_wall} "
                f"| {_fmt(cpu)} | {vs_cpu} | {_fmt(client) if runs is not results.alone else ''} |")

    lines = [(f"Job: {job['seconds']:g} s, window {job['window']}, {job['steps']} steps, base resolution "
              f"{job['resolution']}, TeaCache off, tiny models on CPU; medians of {repeats} rounds (browser, API, "
              "engine alone, in turn) after one warm-up round."), "",
             ("| path | Start -> first preview s | Start -> first section video s | Start -> done s | wall vs alone "
              "| engine process CPU s | CPU vs alone | browser / client CPU s |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             row("engine alone (in-process, no service, no UI)", results.alone),
             row("server via gradio_client `/generate` (no browser)", results.client),
             row("page in Chromium (Start button)", results.browser), ""]
    in_server = _median([r.engine_in_server_s for r in results.browser])
    lines.append(f"Browser runs: the engine's own time inside the server was {in_server:.2f} s (median); the page "
                 f"showed the end {_median([r.wall_s for r in results.browser]) - in_server:.2f} s after it.")
    for name, runs in (("browser", results.browser), ("client", results.client), ("alone", results.alone)):
        lines.append(f"Per run ({name}): " + "; ".join(
            f"{r.wall_s:.2f} s wall, {_fmt(r.engine_cpu_s)} CPU-s" for r in runs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--models-dir", type=Path, default=None, help="tiny model set (default: ./tiny_models)")
    parser.add_argument("--url", default=None, help="use this running demo server instead of starting one")
    args = parser.parse_args(argv)
    job = {"seconds": args.seconds, "steps": args.steps, "window": args.window, "resolution": args.resolution}

    from framepack_core.models.tiny import build_tiny_models

    models_dir = build_tiny_models(args.models_dir or REPO / "tiny_models")
    print(report(measure(args.url, models_dir, job, args.repeats), job, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
