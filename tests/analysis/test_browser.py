"""The report in a real browser: headless Chromium (Debian's `chromium`, which `make test`
installs) at the widths people read it at. Every image loads, nothing overflows the window or
overlaps, every table's header sits over its columns; a screenshot is kept as an artefact."""

import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

CHECK = Path(__file__).with_name("check_page.js")
WIDTHS = (1280, 1440)


def chromium() -> str:
    """The browser's path; a missing browser fails the test (CI installs it), never skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found: `make test` installs it (apt-get install chromium)")
    return found


def run_chromium(*args: str) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _result(dom: str) -> str:
    """The check script's JSON from the page's DOM."""
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run"
    return found.group(1)


@pytest.fixture(scope="module")
def report(demo_report) -> Path:
    """The demo-sized report, with the check script added to a copy of its page."""
    script = f"<script>{CHECK.read_text()}</script></body>"
    page = (demo_report / "index.html").read_text()
    (demo_report / "checked.html").write_text(page.replace("</body>", script))
    return demo_report


@pytest.mark.parametrize("width", WIDTHS)
def test_the_report_renders_in_chromium(report, width):
    start = time.perf_counter()
    page = (report / "checked.html").as_uri()
    dom = run_chromium(f"--window-size={width},1000", "--dump-dom", page)
    check = json.loads(html.unescape(_result(dom)))
    assert check["images"] >= 10 and check["tables"] >= 4
    assert check["problems"] == []
    print(f"chromium check at {width}px: {time.perf_counter() - start:.1f} s")


def test_a_screenshot_of_the_first_screen_is_kept(report):
    shot = report / "first_screen.png"
    page = (report / "index.html").as_uri()
    run_chromium("--window-size=1300,1000", f"--screenshot={shot}", page)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
    if os.environ.get("SCALING_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["SCALING_SCREENSHOT_DIR"]) / shot.name)


def test_the_check_catches_a_broken_page(tmp_path):
    broken = (
        "<!doctype html><html><body><img src='missing.png'><div style='width:3000px'>wide</div>"
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td><td>3</td></tr></table>"
        f"<script>{CHECK.read_text()}</script></body></html>"
    )
    page = tmp_path / "broken.html"
    page.write_text(broken)
    dom = run_chromium("--window-size=1300,1000", "--dump-dom", page.as_uri())
    problems = " | ".join(json.loads(html.unescape(_result(dom)))["problems"])
    assert "image missing.png did not load" in problems
    assert "page is 3" in problems and "div  overflows" in problems
    assert "a row of 3 cells under a header of 2" in problems
