"""Debian's headless Chromium, driven through its chromedriver (WebDriver, via ``selenium``): the
one way the screens' tests and ``simulations.screenshots`` open a browser.  Nothing is downloaded:
the browser and its driver come from apt (``chromium``, ``chromium-driver``; .ci/run installs
them), and the flags keep it off the network it would otherwise call home on.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def chromium_missing() -> str | None:
    """Why no browser can be started here, or ``None``."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    return f"Debian's chromium and chromium-driver are not installed ({CHROMIUM}, {CHROMEDRIVER})"


def headless_chromium(width: int = 1280, height: int = 800) -> Any:
    """A WebDriver session on a new headless Chromium; the caller quits it.  Its console is kept
    (``get_log("browser")``) so a test can fail on a script error."""
    from selenium import webdriver  # noqa: PLC0415 - the test extra
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
