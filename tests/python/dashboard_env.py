"""What the dashboard's browser tests and scripts/dashboard-screenshots share:
a gateway with customers, teams, keys, budgets and an alert channel, the
mock upstream, traffic through the official openai SDK, and headless
Chromium driven by Selenium (Debian's chromium and chromedriver: Selenium
Manager never downloads anything).

Prices make the in-process mock's requests cost a known amount: "hi" with
max_tokens=10 is 7 prompt tokens and 10 completion tokens at $1 / $2 per
million: $0.000027.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import openai
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BURSAR_BIN_DIR", ROOT / "target" / "debug"))
ADMIN = "dash-admin-secret"
KEYS = {
    "search-prod": "sk-dash-search-prod",
    "search-dev": "sk-dash-search-dev",
    "ml-batch": "sk-dash-ml-batch",
    "tiny": "sk-dash-tiny",
    "prepaid": "sk-dash-prepaid",
}
REQUEST_COST = "0.000027"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def config(mock_upstream: str, hook_url: str) -> str:
    return f"""
[server]
workers = 2

[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock_upstream}"
api_key = "sk-upstream-secret"
models = ["gpt-4o-mini", "gpt-4o"]

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[[customers]]
name = "acme"
budget = {{ limit_usd = "25", reset = "1M" }}

[[customers]]
name = "globex"
budget = {{ limit_usd = "10", reset = "1M" }}

[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "5", reset = "1d" }}

[[teams]]
name = "ml"
customer = "globex"

[[virtual_keys]]
name = "search-prod"
key = "{KEYS['search-prod']}"
team = "search"
budget = {{ limit_usd = "2", reset = "1d" }}

[[virtual_keys]]
name = "search-dev"
key = "{KEYS['search-dev']}"
team = "search"

[[virtual_keys]]
name = "ml-batch"
key = "{KEYS['ml-batch']}"
team = "ml"
budget = {{ limit_usd = "1", reset = "1w" }}

[[virtual_keys]]
name = "tiny"
key = "{KEYS['tiny']}"
customer = "globex"
budget = {{ limit_usd = "0.00027", reset = "1d", mode = "soft" }}

[[virtual_keys]]
name = "prepaid"
key = "{KEYS['prepaid']}"
customer = "globex"
budget = {{ limit_usd = "0.5" }}

[[model_budgets]]
model = "gpt-4o"
budget = {{ limit_usd = "3", reset = "1d" }}

[admin]
token = "{ADMIN}"

[[alerts.channels]]
name = "hook"
kind = "webhook"
url = "{hook_url}"
secret = "{WEBHOOK_SECRET}"
allow_private = true
rate_limit_per_minute = 10000

[[alerts.rules]]
name = "key-budgets"
scope = "keys"
thresholds = [50, 80, 100]
channels = ["hook"]
"""


class Gateway:
    """`bursar serve` on its own state directory, ports chosen by itself."""

    def __init__(self, tmp: Path, text: str):
        self.tmp = Path(tmp)
        cfg = self.tmp / "bursar.toml"
        cfg.write_text(text)
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "bursar"), "serve", "--config", str(cfg),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--state-dir", str(self.tmp / "state")],
            cwd=self.tmp, env={**os.environ, "BURSAR_LOG": "warn"},
            stdout=subprocess.PIPE, text=True)
        words = self.proc.stdout.readline().split()
        if words[:3] != ["bursar", "listening", "on"]:
            raise RuntimeError(f"bursar did not start: {words!r}")
        self.base = f"http://{words[3]}/v1"
        self.url = f"http://{words[5]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def admin(self, method: str, path: str, body=None, query: dict | None = None):
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path: str, **query):
        status, body = self.admin("GET", path, query=query or None)
        assert status == 200, (path, query, status, body)
        return body

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base, api_key=KEYS.get(key, key), max_retries=0)

    def chat(self, key: str, model: str = "mock-model", tags: str | None = None,
             max_tokens: int = 10) -> int:
        """One chat request; its HTTP status (200, or the refusal's)."""
        headers = {"x-bursar-tags": tags} if tags else None
        try:
            self.client(key).chat.completions.create(
                model=model, max_tokens=max_tokens, extra_headers=headers,
                messages=[{"role": "user", "content": "hi"}])
            return 200
        except openai.APIStatusError as e:
            return e.status_code

    def logged(self) -> int:
        """Rows in the request log (every page followed)."""
        n, before = 0, None
        while True:
            q = {"limit": 1000}
            if before:
                q["before"] = before
            page = self.get("/admin/logs", **q)
            n += len(page["data"])
            before = page.get("next")
            if not before:
                return n

    def wait_logged(self, n: int, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while self.logged() < n:
            if time.time() > deadline:
                raise AssertionError(f"the request log has {self.logged()} rows, expected {n}")
            time.sleep(0.2)


def traffic(gw: Gateway) -> int:
    """A morning's mixed traffic; returns how many requests were sent."""
    sent = 0
    plan = [
        ("search-prod", "mock-model", "feature=search", 24),
        ("search-prod", "gpt-4o-mini", "feature=search", 16),
        ("search-prod", "gpt-4o", "feature=rerank", 12),
        ("search-dev", "mock-model", "feature=search", 9),
        ("search-dev", "gpt-4o-mini", "env=dev", 6),
        ("ml-batch", "gpt-4o", "feature=embeddings", 10),
        ("ml-batch", "mock-model", None, 8),
        ("prepaid", "gpt-4o-mini", "feature=chat", 5),
    ]
    for key, model, tags, n in plan:
        for _ in range(n):
            gw.chat(key, model, tags, max_tokens=40 if model != "mock-model" else 10)
            sent += 1
    # Some errors: a model nobody serves (404 or 400) and a bad request.
    for _ in range(3):
        gw.chat("search-dev", "no-such-model")
        sent += 1
    return sent


def browser(width: int = 1280, height: int = 800) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
              "--lang=en-US", "--no-first-run", "--disable-extensions"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    # The window's size includes what headless Chromium keeps for its
    # (invisible) frame: make the viewport itself width x height.
    d.set_window_size(width, height)
    inner = d.execute_script("return [window.innerWidth, window.innerHeight]")
    d.set_window_size(width + (width - inner[0]), height + (height - inner[1]))
    return d


def tid(testid: str) -> str:
    """A CSS selector for a data-testid."""
    return '[data-testid="%s"]' % testid.replace("\\", "\\\\").replace('"', '\\"')


def find(d, testid: str, within=None):
    return (within or d).find_element(By.CSS_SELECTOR, tid(testid))


def find_all(d, testid: str, within=None):
    return (within or d).find_elements(By.CSS_SELECTOR, tid(testid))


def wait(d, cond, timeout: float = 15, message: str = ""):
    """Until cond(d) is truthy; an element found by it that the page
    re-rendered meanwhile (stale) or not yet rendered is tried again."""
    return WebDriverWait(d, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                         ).until(lambda drv: cond(drv), message)


def wait_testid(d, testid: str, timeout: float = 15):
    return wait(d, lambda drv: (drv.find_elements(By.CSS_SELECTOR, tid(testid)) or [None])[0],
                timeout, f"no element {testid}")


def login(d, gw: Gateway, token: str = ADMIN) -> None:
    d.get(gw.url + "/")
    form = wait_testid(d, "login-form")
    wait(d, lambda drv: form.is_displayed())
    box = form.find_element(By.NAME, "token")
    box.clear()
    box.send_keys(token)
    form.submit()
    if token == ADMIN:
        wait(d, lambda drv: drv.find_element(By.ID, "app").is_displayed(), message="not signed in")


def goto(d, gw: Gateway, hash_: str) -> None:
    """Shows a page by its hash; waits until the page has rendered. The
    page shown before is let finish loading first, so admin_calls() counts
    only the new page's calls."""
    try:
        settle(d, timeout=10)
    except Exception:  # noqa: BLE001 - a page that never settles is the test's to find
        pass
    d.execute_script("performance.clearResourceTimings(); location.hash = arguments[0];", hash_)
    page = hash_.lstrip("#/").split("/")[0].split("?")[0]
    wait(d, lambda drv: drv.find_element(By.ID, "page").get_attribute("data-page") == page)


def settle(d, timeout: float = 15) -> None:
    """Waits until no "Loading…" is left on the page."""
    wait(d, lambda drv: not drv.find_elements(By.CSS_SELECTOR, "#page .loading"), timeout,
         "the page is still loading")


def admin_calls(d) -> list[str]:
    """The admin API URLs the page fetched since the last goto()."""
    return d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes('/admin/'))")


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"
            and "favicon" not in e["message"]]
