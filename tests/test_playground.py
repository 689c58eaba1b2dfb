"""The playground page in a real browser: Debian's chromium driven by Playwright against the live gunicorn server.

Every test records every request the page makes and fails if one leaves the server's origin. The screenshots in
docs/img/ are taken here (docs/playground.md shows them): into a temporary directory on an ordinary run, so the
suite leaves the tree clean (the curl box shows the server's random port), and into docs/img/ only with
GRADSVC_UPDATE_SCREENSHOTS=1 (CONTRIBUTING.md).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from playwright.sync_api import sync_playwright

from conftest import ROOT, require_binary

pytestmark = [pytest.mark.live, pytest.mark.slow]
# Quiet flags: without them chromium contacts outside hosts (updates, sync, field trials) on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UPDATE_SCREENSHOTS = os.environ.get("GRADSVC_UPDATE_SCREENSHOTS") == "1"
NEURON_URL = "/?model=neuron&x=6.7&y=0&w=1&b=0"
FORMULA_URL = "/?formula=sin(x**2)&x=3"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser():
    chromium = require_binary("chromium", package="chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A fresh browser page on `origin`, recording every request URL and every script error."""

    def __init__(self, browser, origin: str, width: int = 1280, height: int = 900) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport={"width": width, "height": height}, service_workers="block")
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str):
        self.page.goto(self.origin + path)
        self.page.wait_for_selector("#graph svg g.node")
        return self.page

    def check_origin(self) -> None:
        host = urlsplit(self.origin)
        outside = [u for u in self.requests if not u.startswith("data:") and urlsplit(u)[:2] != host[:2]]
        assert outside == [], f"requests left the origin: {outside}"
        assert self.errors == []


@pytest.fixture()
def page_at(browser, live_server):
    opened: list[Page] = []

    def make(origin: str | None = None, **size) -> Page:
        opened.append(Page(browser, origin or live_server.url, **size))
        return opened[-1]

    yield make
    try:
        for p in opened:
            p.check_origin()
    finally:
        for p in opened:
            p.context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """Where screenshots go: docs/img/ with GRADSVC_UPDATE_SCREENSHOTS=1, else a temporary directory."""
    return ROOT / "docs" / "img" if UPDATE_SCREENSHOTS else tmp_path_factory.mktemp("screenshots")


def element(page, element_id: str):
    """Ids such as err-model.formula contain a dot, which a CSS #id selector would read as a class."""
    return page.locator(f'[id="{element_id}"]')


def gradient_cell(page, name: str):
    return page.locator(f"#gradients tr[data-input={name}] td")


def svg_node_text(page, label: str) -> str:
    """The text of the graph node whose second line (the label) is `label`."""
    nodes = page.evaluate(
        "[...document.querySelectorAll('#graph g.node')]"
        ".map(g => [...g.querySelectorAll('text')].map(t => t.textContent))"
    )
    for lines in nodes:
        if len(lines) > 1 and lines[1] == label:
            return "\n".join(lines)
    raise AssertionError(f"no node labelled {label!r}")


def test_neuron_url_opens_computed(page_at, screenshots):
    p = page_at()
    page = p.open(NEURON_URL)
    assert page.locator("#loss-value").inner_text() == "6.7012"
    assert gradient_cell(page, "w").inner_text() == "6.6918"
    assert gradient_cell(page, "b").inner_text() == "0.9988"
    assert "grad 6.691762" in svg_node_text(page, "w") and "grad 0.9987705" in svg_node_text(page, "b")
    page.locator("#node-8").click()  # w: the chain rule back from the clamped y_pred, every step a graph node
    chain = page.locator("#node-chain").inner_text()
    assert "dL/dw = dL/d(clamp(y_pred)) × ∂(clamp(y_pred))/∂y_pred × ∂y_pred/∂z × ∂z/∂(w*x) × ∂(w*x)/∂w" in chain, chain
    assert "= 813.3619 × 1 × 0.001228 × 1 × 6.7" in chain and chain.count("6.6918") == 1, chain
    page.screenshot(path=screenshots / "playground-neuron.png", full_page=True)


def test_formula_url_opens_computed_and_edits_recompute(page_at, screenshots):
    p = page_at()
    page = p.open(FORMULA_URL)
    assert gradient_cell(page, "x").inner_text() == "\u22125.4668"
    assert [row.split("\t")[0] for row in page.locator("#gradients tbody tr").all_inner_texts()] == ["x"]
    assert "grad -5.4667816" in svg_node_text(page, "x")
    page.locator("#node-2").click()  # x: SinBackward0 is node 0, PowBackward0 node 1
    assert "= 1 × \u22120.9111 × 6" in page.locator("#node-chain").inner_text()
    page.screenshot(path=screenshots / "playground-formula.png", full_page=True)

    element(page, "input-x").fill("2")  # d/dx sin(x**2) = 2x cos(x**2): -2.6146 at 2
    expected = f"{2 * 2 * math.cos(4):.4f}".replace("-", "\u2212")
    page.wait_for_function(
        "t => document.querySelector('#gradients tr[data-input=x] td')?.textContent === t", arg=expected
    )
    assert "grad -2.614574" in svg_node_text(page, "x")
    assert page.url.endswith("?formula=sin%28x**2%29&x=2")


def test_invalid_formula_shows_the_detail_next_to_the_field(page_at, screenshots, live_server):
    p = page_at()
    page = p.open(FORMULA_URL)
    page.locator("#formula").fill("sin(x**")
    slot = element(page, "err-model.formula")
    slot.wait_for(state="visible")
    problem = requests.post(
        live_server.url + "/v1/gradients",
        timeout=10,
        json={"model": {"kind": "expression", "formula": "sin(x**"}, "inputs": {"x": 3}},
    ).json()
    assert slot.inner_text() == problem["detail"]
    assert page.locator("#formula").get_attribute("aria-invalid") == "true"
    page.screenshot(path=screenshots / "playground-error.png", full_page=True)


def test_validation_errors_name_their_field(page_at):
    page = page_at().open(NEURON_URL)
    element(page, "input-w").fill("one")
    slot = element(page, "err-inputs.w")
    slot.wait_for(state="visible")
    assert "Tensor elements must be numbers" in slot.inner_text()
    assert element(page, "err-general").inner_text() == ""


@pytest.mark.parametrize("path", [NEURON_URL, FORMULA_URL])
def test_curl_box_repeats_the_pages_request(page_at, path):
    require_binary("curl", package="curl")
    page = page_at().open(path)
    command = page.locator("#curl").input_value()
    done = subprocess.run(shlex.split(command), capture_output=True, timeout=30, check=True)
    body = json.loads(done.stdout)
    shown = {row.split("\t")[0]: row.split("\t")[1] for row in page.locator("#gradients tbody tr").all_inner_texts()}
    assert {name: page_number(grad) for name, grad in body["gradients"].items()} == shown
    assert page_number(body["loss"]) == page.locator("#loss-value").inner_text()


def page_number(value: float) -> str:
    """The page's number format for the values used here (4 decimals from 1 up, 4 significant digits below)."""
    text = f"{value:.4f}" if abs(value) >= 1 else f"{value:.4g}"
    return text.rstrip("0").rstrip(".").replace("-", "\u2212")


def test_check_tab_grades_with_the_services_messages(page_at, screenshots, live_server):
    page = page_at().open(NEURON_URL)
    page.locator("#tab-check").click()
    element(page, "answer-grad-w").fill("6.5")
    element(page, "answer-grad-b").fill("0.9988")
    element(page, "answer-formula-w").fill("x*sigmoid(w*x+b)")
    page.locator("#grade").click()
    page.locator(".verdict").first.wait_for()
    command = shlex.split(page.locator("#curl").input_value())
    assert command[2].endswith("/v1/check")
    direct = requests.post(command[2], data=command[-1], headers={"Content-Type": "application/json"}, timeout=10)
    direct = direct.json()
    shown = page.locator(".verdict .message").all_inner_texts()
    assert shown == [check["message"] for check in direct["checks"]]
    assert [c["passed"] for c in direct["checks"]] == [False, True, True]
    assert "chain rule: dL/dw = dL/dy_pred" in shown[0]
    assert page.locator(".score").inner_text().startswith("Score 2 / 3")
    assert "tab=check" in page.url
    page.screenshot(path=screenshots / "playground-check.png", full_page=True)


def test_keyboard_only(page_at):
    page = page_at().open(FORMULA_URL)
    page.locator("#tab-compute").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-check"
    assert page.locator("#panel-check").is_visible()
    page.keyboard.press("ArrowLeft")
    leaf = page.locator("#node-2")
    leaf.focus()
    page.keyboard.press("Enter")
    assert page.locator("#node-title").inner_text() == "x — AccumulateGrad"


def test_readable_at_375_px(page_at):
    page = page_at(width=375, height=800).open(NEURON_URL)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # only the graph box scrolls sideways
    assert gradient_cell(page, "w").is_visible()


def test_under_the_gateway_prefix(page_at, live_server, tmp_path):
    from test_gateway import Gateway, upstream  # the real nginx gateway, as in tests/test_gateway.py

    gateway = Gateway(tmp_path / "nginx", [upstream(live_server)], rate="1000r/s", burst=1000)
    try:
        p = page_at(gateway.url.removesuffix("/grad"))
        page = p.open("/grad" + NEURON_URL)
        assert gradient_cell(page, "w").inner_text() == "6.6918"
        assert page.locator("#curl").input_value().startswith(f"curl -s '{gateway.url}/v1/gradients'")
        assert all(urlsplit(u).path.startswith("/grad/") for u in p.requests if not u.startswith("data:"))
        assert urlsplit(page.url).path == "/grad/"
    finally:
        gateway.stop()


# --- failures, links and odd inputs (audit findings P1-P6) -----------------------------------------------------------


def wait_status(page, selector: str = "#status", busy: str = "computing…") -> str:
    """The status once a request round has ended (done, failed, error N)."""
    page.wait_for_function(
        "([sel, busy]) => { const s = document.querySelector(sel).textContent; return s && s !== busy; }",
        arg=[selector, busy],
    )
    return page.locator(selector).inner_text()


def recompute(page, name: str, value: str) -> str:
    element(page, f"input-{name}").fill(value)
    element(page, f"input-{name}").press("Enter")
    return wait_status(page)


def assert_no_result(page) -> None:
    """Nothing of an earlier answer is left next to the new inputs."""
    assert page.locator("#loss-value").inner_text() == "—"
    assert page.locator("#gradients tbody tr").count() == 0
    assert page.locator("#graph svg").count() == 0


def test_no_answer_clears_the_previous_result(page_at):
    page = page_at().open(NEURON_URL)
    page.route("**/v1/gradients", lambda route: route.abort("connectionreset"))
    assert recompute(page, "x", "5") == "failed"
    assert element(page, "err-general").inner_text().startswith("The service did not answer (network error")
    assert_no_result(page)


def test_an_answer_that_is_not_json_is_called_so(page_at):
    page = page_at().open(NEURON_URL)
    page.route(
        "**/v1/gradients",
        lambda route: route.fulfill(status=200, content_type="application/json", body="{loss: 1"),
    )
    assert recompute(page, "x", "5") == "failed"
    message = element(page, "err-general").inner_text()
    assert message.startswith("The service answered (HTTP 200), but the body is not valid JSON")
    assert "did not answer" not in message
    assert_no_result(page)


def test_only_the_picture_failing_keeps_the_numbers(page_at):
    page = page_at().open(NEURON_URL)

    def no_picture(route):
        if "svg" in route.request.headers.get("accept", ""):
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/v1/gradients", no_picture)
    assert recompute(page, "x", "5") == "done"
    assert page.locator("#loss-value").inner_text() == "5.0067"  # -log(1 - sigmoid(5)): this request's numbers
    assert page.locator("#graph svg").count() == 0
    assert page.locator("#graph .hint").inner_text().startswith("No picture: The service did not answer")
    assert element(page, "err-general").inner_text() == ""


def test_a_hung_server_times_out_and_a_new_request_cancels_the_old(page_at):
    p = page_at()
    p.page.clock.install()  # the page's 30 s timeout runs on this clock; fast_forward below, no real waiting
    page = p.open(NEURON_URL)
    held, failed = [], []
    page.on("requestfailed", lambda r: failed.append((r.url, r.headers.get("accept"), r.failure)))
    page.route("**/v1/gradients", lambda route: held.append(route))  # never answered
    for value in ("5", "4"):
        element(page, "input-x").fill(value)
        element(page, "input-x").press("Enter")
    for _ in range(100):  # until both rounds reached the route (JSON + SVG each); at most 10 s
        if len(held) == 4 and len(failed) == 2:
            break
        page.wait_for_timeout(100)
    assert len(held) == 4
    assert len([f for f in failed if f[0].endswith("/v1/gradients")]) == 2  # the first round was aborted
    page.clock.fast_forward(31_000)
    assert wait_status(page) == "failed"
    assert "did not answer within 30 s" in element(page, "err-general").inner_text()
    assert_no_result(page)


def test_check_tab_failure_clears_the_verdicts(page_at):
    page = page_at().open(NEURON_URL)
    page.locator("#tab-check").click()
    element(page, "answer-grad-w").fill("6.6918")
    page.locator("#grade").click()
    page.locator(".verdict").first.wait_for()
    page.route("**/v1/check", lambda route: route.abort("connectionreset"))
    page.locator("#grade").click()
    assert wait_status(page, "#check-status", "grading…") == "failed"
    assert element(page, "err-check").inner_text().startswith("The service did not answer")
    assert page.locator("#verdicts").inner_text() == ""
    page.unroute("**/v1/check")
    page.route("**/v1/check", lambda route: route.fulfill(status=200, content_type="application/json", body="["))
    page.locator("#grade").click()
    assert wait_status(page, "#check-status", "grading…") == "failed"
    assert "not valid JSON" in element(page, "err-check").inner_text()


def test_a_state_too_large_for_a_link_keeps_the_last_short_url(page_at):
    page = page_at().open("/?formula=sum(x**2)&x=1")
    short = page.url
    big = "[" + ", ".join(f"{i / 7:.4f}" for i in range(700)) + "]"  # the audit's 7,680-character URL
    assert recompute(page, "x", big) == "done"
    assert page.url == short
    note = page.locator("#url-note")
    assert note.is_visible() and "too large for a link" in note.inner_text() and "curl" in note.inner_text()
    assert page.reload().status == 200  # the kept URL reloads (the long one was a raw 414)
    page.wait_for_selector("#graph svg g.node")
    assert recompute(page, "x", "[1, 2]") == "done"
    assert page.url.endswith("?formula=sum%28x**2%29&x=%5B1%2C+2%5D") and note.is_hidden()


def test_a_link_with_an_unknown_catalog_entry_says_so_and_keeps_the_url(page_at):
    p = page_at()
    page = p.page
    page.goto(p.origin + "/?name=bogus&x=1")
    assert wait_status(page).startswith("error")
    assert page.locator("#name-formula").inner_text().startswith("Unknown catalog entry 'bogus'")
    assert element(page, "err-model.name").inner_text().startswith("no expression named 'bogus'")
    assert page.url.endswith("/?name=bogus&x=1")
    page.select_option("#name", "mean_square")  # a real choice replaces the link's value
    assert wait_status(page) == "done"
    assert page.locator("#name option.from-link").count() == 0 and "name=mean_square" in page.url


@pytest.mark.parametrize(
    ("path", "field", "message"),
    [
        ("/?model=neuron&x=6.7&y=0&w=1&b=0&loss=bogus", "model.loss", "Must be one of: bce, bce_with_logits."),
        ("/?formula=x*2&x=1&mode=bogus", "mode", "Must be one of: grad, inference."),
    ],
)
def test_a_link_with_an_unknown_choice_keeps_the_url(page_at, path, field, message):
    p = page_at()
    p.page.goto(p.origin + path)
    assert wait_status(p.page) == "error 400"
    assert element(p.page, f"err-{field}").inner_text() == message
    assert sorted(parse_qsl(urlsplit(p.page.url).query)) == sorted(parse_qsl(urlsplit(path).query))


def test_a_catalog_that_did_not_load_is_named_and_the_link_still_computes(page_at):
    p = page_at()
    p.page.route("**/v1/models", lambda route: route.fulfill(status=500, content_type="application/json", body="{}"))
    p.page.goto(p.origin + "/?name=mean_square&x=[1,2,3]")
    assert wait_status(p.page) == "done"
    assert p.page.locator("#name-formula").inner_text().startswith("The catalog could not be loaded (HTTP 500)")
    assert p.page.locator("#loss-value").inner_text() == "4.6667"  # mean(x**2) from the service
    assert p.page.url.endswith("/?name=mean_square&x=%5B1%2C2%2C3%5D")


def test_an_out_of_range_number_is_sent_as_infinity(page_at):
    p = page_at()
    p.page.goto(p.origin + "/?formula=x*2&x=1e400")
    assert wait_status(p.page) == "done"
    assert p.page.locator("#loss-value").inner_text() == "Infinity"
    assert '"x":"Infinity"' in p.page.locator("#curl").input_value()


def test_non_ascii_names_get_a_field(page_at):
    p = page_at()
    p.page.goto(p.origin + "/?formula=\ufb01*x&x=3")  # the ligature fi: Python reads the name "fi" (NFKC)
    assert wait_status(p.page) == "done"
    assert gradient_cell(p.page, "fi").inner_text() == "3"
    p.page.goto(p.origin + "/?formula=é*x&x=3")
    assert wait_status(p.page) == "error 400"
    row = p.page.locator('#inputs .input-row[data-name="é"]')
    assert row.locator("input").is_visible()
    assert "ASCII letters, digits and _ only" in row.locator(".notice").inner_text()
    assert element(p.page, "err-inputs.é").inner_text() == "Input names are identifiers (letters, digits, _)."


def test_warnings_name_graph_nodes_as_the_picture_does(page_at):
    page = page_at().open("/?formula=sqrt(x)*y&x=0&y=1")
    warnings = [w for w in page.locator("#warnings li").all_inner_texts() if "graph.nodes[" in w]
    assert warnings == ["graph.nodes[2] (node 'x', AccumulateGrad).grad: 1 of 1 value(s) not finite"]
    page.locator("#node-2").click()
    assert "graph.nodes[2] in the JSON answer" in page.locator("#node-facts").inner_text()
