"""The web page in headless Chromium (Debian's ``chromium`` driven by Playwright).

Needs ``pip install playwright`` (the dev extra) and ``apt-get install -y chromium``; never
``playwright install``. Outside CI a missing browser skips these tests; under CI (``CI=true``)
it fails them, so CI cannot pass without having run them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_app_support import app_for, build_index, serve_in_thread

from indexer.query import search

CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)


def _require_browser() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright Python package is missing (pip install -e '.[dev]')"
    if problem is None and CHROMIUM is None:
        problem = "no chromium executable (apt-get install -y chromium, or set CLIPSEARCH_CHROMIUM)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run under CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _require_browser()
    root = tmp_path_factory.mktemp("browser")
    index = build_index(root, n=12)
    try:
        with serve_in_thread(app_for(index)) as base:
            yield base, index, root
    finally:
        index.close()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    base, _, _ = site
    context = browser.new_context()
    pg = context.new_page()
    console_errors: list[str] = []
    pg.on("pageerror", lambda e: console_errors.append(str(e)))
    pg.goto(base + "/")
    yield pg
    context.close()
    assert not console_errors, console_errors


def wait_done(page, label: str) -> None:
    """Until the status line reports the finished search for ``label``."""
    page.wait_for_function(
        "label => document.getElementById('status').textContent.includes('for ' + label + ' in')",
        arg=label,
        timeout=15000,
    )


def wait_results(page, n: int) -> list:
    page.wait_for_function(
        "n => document.querySelectorAll('#results .hit').length === n", arg=n, timeout=15000
    )
    return page.query_selector_all("#results .hit")


def thumbnails_loaded(page) -> bool:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=15000,
    )
    return True


def test_text_search_shows_a_grid_of_thumbnails_with_scores(page, site):
    _, index, _ = site
    page.wait_for_function(
        "() => document.getElementById('stats').textContent.includes('12 images')"
    )
    page.select_option("#k", "12")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    cards = wait_results(page, 12)
    assert thumbnails_loaded(page)
    expected = [h.id for h in index.search_text("a red circle", k=12)]
    assert [int(c.get_attribute("data-id")) for c in cards] == expected
    scores = [float(c.query_selector(".score").inner_text()) for c in cards]
    assert scores == sorted(scores, reverse=True)
    assert "12 results" in page.inner_text("#status")


def test_click_a_result_to_search_by_it(page, site):
    _, index, _ = site
    page.fill("#query", "a green square")
    page.click("#search")
    cards = wait_results(page, 12)
    clicked = int(cards[3].get_attribute("data-id"))
    name = cards[3].query_selector(".name").inner_text()
    cards[3].click()
    wait_done(page, name)
    cards = wait_results(page, 11)  # its look-alikes: the eleven others, never itself
    ids = [int(c.get_attribute("data-id")) for c in cards]
    assert clicked not in ids
    assert ids == [h.id for h in search(index, f"#{clicked}", k=12)]


def test_drop_an_image_to_search_by_it(page, site):
    _, index, _ = site
    target = index.search_text("anything", k=1)[0]
    data = list(Path(target.path).read_bytes())
    page.evaluate(
        """([bytes, name]) => {
            const file = new File([new Uint8Array(bytes)], name, {type: 'image/png'});
            const dt = new DataTransfer();
            dt.items.add(file);
            const drop = document.getElementById('drop');
            drop.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true}));
            drop.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }""",
        [data, "dropped.png"],
    )
    wait_done(page, "dropped.png")
    wait_results(page, 12)
    assert int(page.query_selector("#results .hit").get_attribute("data-id")) == target.id


def test_choose_a_file_and_search_texts(page, site):
    _, index, _ = site
    target = index.search_text("anything", k=1)[0]
    page.select_option("#target", "texts")
    page.set_input_files("#file", target.path)
    wait_done(page, target.path.rsplit("/", 1)[-1])
    cards = wait_results(page, 4)  # the index has four texts
    assert all("text" in (c.get_attribute("class") or "") for c in cards)
    # Clicking a text searches with it.
    text = cards[0].query_selector("blockquote").inner_text()
    cards[0].click()
    page.wait_for_function("t => document.getElementById('query').value === t", arg=text)


def test_errors_are_shown_not_thrown(page):
    page.press("#query", "Enter")
    assert "Type something" in page.inner_text("#status")
    page.fill("#query", "x" * 1000)
    page.evaluate("() => { document.getElementById('query').value += 'yy'; }")  # past maxlength
    page.press("#query", "Enter")
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    assert "422" in page.inner_text("#status")


def test_a_read_key_typed_into_the_page_unlocks_search_and_thumbnails(browser, site):
    _, index, _ = site
    with serve_in_thread(app_for(index, read_key="let-me-read")) as base:
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('stats').textContent.includes('401')")
        page.click("#key-box summary")
        page.fill("#key", "let-me-read")
        page.dispatch_event("#key", "change")
        page.wait_for_function(
            "() => document.getElementById('stats').textContent.includes('images')"
        )
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        wait_results(page, 12)
        assert thumbnails_loaded(page)
        assert page.eval_on_selector("#results img", "i => i.src.startsWith('blob:')")
        context.close()
