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
from PIL import Image
from test_app_support import app_for, build_index, serve_in_thread

from indexer.query import search

CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)


# A search can wait on the model loading in a busy 2-core CI machine: generous, since the helpers
# return as soon as the page is ready.
WAIT_MS = 30_000


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


TRIPS = {  # photos with EXIF dates, in their own folder: the filters' test set
    "2019-beach.jpg": ("2019:07:01 10:00:00", (240, 200, 80)),
    "2021-snow.jpg": ("2021:01:15 09:30:00", (235, 235, 250)),
    "2023-city.jpg": ("2023:05:20 18:45:00", (90, 90, 110)),
}


def _dated(path: Path, taken: str, rgb: tuple[int, int, int]) -> None:
    exif = Image.Exif()
    exif[0x0110] = "Test Camera"
    exif.get_ifd(0x8769)[0x9003] = taken
    Image.new("RGB", (96, 64), rgb).save(path, exif=exif)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """12 generated images, 4 texts and 3 dated photos under ``trips/`` (15 images)."""
    _require_browser()
    root = tmp_path_factory.mktemp("browser")
    index = build_index(root, n=12)
    (root / "trips").mkdir()
    for name, (taken, rgb) in TRIPS.items():
        _dated(root / "trips" / name, taken, rgb)
    index.add_images([root / "trips"])
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
        timeout=WAIT_MS,
    )


def wait_results(page, n: int) -> list:
    page.wait_for_function(
        "n => document.querySelectorAll('#results .hit').length === n", arg=n, timeout=WAIT_MS
    )
    return page.query_selector_all("#results .hit")


def thumbnails_loaded(page) -> bool:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=WAIT_MS,
    )
    return True


def error_shown(page) -> str:
    """The status line once it shows an error."""
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    return page.inner_text("#status")


def hit_ids(page) -> list[int]:
    return [int(c.get_attribute("data-id")) for c in page.query_selector_all("#results .hit")]


def search_for(page, text: str) -> None:
    page.fill("#query", text)
    page.press("#query", "Enter")
    wait_done(page, f"“{text}”")


def test_text_search_shows_a_grid_of_thumbnails_with_scores(page, site):
    _, index, _ = site
    page.wait_for_function(
        "() => document.getElementById('stats').textContent.includes('15 images')"
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


def test_an_expression_is_searched_as_the_library_parses_it(page, site):
    _, index, _ = site
    expression = '"a red circle" + 0.5:"a blue background" - 0.3:"green"'
    page.fill("#query", expression)
    page.press("#query", "Enter")
    wait_results(page, 15)
    assert hit_ids(page) == [h.id for h in search(index, expression, k=24)]
    page.fill("#query", '"red" + ')
    page.press("#query", "Enter")
    assert "422" in error_shown(page)


def test_the_url_holds_the_search_and_back_forward_replay_it(page, site):
    base, index, _ = site
    page.select_option("#k", "12")
    search_for(page, "a red circle")
    red = hit_ids(page)
    search_for(page, "a green square")
    green = hit_ids(page)
    assert red != green
    assert "q=a+green+square" in page.url and "k=12" in page.url
    page.go_back()
    wait_done(page, "“a red circle”")
    assert page.input_value("#query") == "a red circle"
    assert hit_ids(page) == red
    page.go_forward()
    wait_done(page, "“a green square”")
    assert page.input_value("#query") == "a green square"
    assert hit_ids(page) == green
    # A shared link runs its search on load.
    page.goto(base + "/?q=a+yellow+triangle&k=12")
    wait_done(page, "“a yellow triangle”")
    assert hit_ids(page) == [h.id for h in index.search_text("a yellow triangle", k=12)]
    assert page.input_value("#k") == "12"


def test_the_viewer_shows_the_full_image_and_finds_more_like_it(page, site):
    base, index, _ = site
    search_for(page, "a green square")
    wait_results(page, 15)
    card = page.query_selector_all("#results .hit")[2]
    clicked = int(card.get_attribute("data-id"))
    item = index.get(clicked)
    card.click()
    page.wait_for_function("() => document.getElementById('viewer').open")
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-img');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    # Full size (the original), not the thumbnail.
    assert page.eval_on_selector("#viewer-img", "i => [i.naturalWidth, i.naturalHeight]") == [
        item.width,
        item.height,
    ]
    assert page.inner_text("#viewer-path") == item.path
    href = page.get_attribute("#viewer-open", "href")
    assert href.endswith(f"/v1/images/{clicked}")
    assert (
        page.request.get(base + href if href.startswith("/") else href).body()
        == Path(item.path).read_bytes()
    )
    page.click("#viewer-like")
    name = item.path.rsplit("/", 1)[-1]
    wait_done(page, name)
    assert not page.evaluate("() => document.getElementById('viewer').open")
    ids = hit_ids(page)
    assert clicked not in ids  # its look-alikes, never itself
    assert ids == [h.id for h in search(index, f"#{clicked}", k=24)]
    assert f"like={clicked}" in page.url
    assert page.input_value("#query") == ""  # the stale text query is gone
    assert page.is_visible("#query-image")
    assert page.inner_text("#query-image .name") == name
    page.wait_for_function(
        "() => { const i = document.querySelector('#query-image img');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    page.go_back()
    wait_done(page, "“a green square”")
    assert page.is_hidden("#query-image")


def test_the_viewer_shows_date_and_camera(page, site):
    _, _, root = site
    page.fill("#path", str(root / "trips"))
    search_for(page, "snow")
    wait_results(page, 3)
    card = next(
        c
        for c in page.query_selector_all("#results .hit")
        if c.query_selector(".name").inner_text() == "2021-snow.jpg"
    )
    card.click()
    page.wait_for_function("() => document.getElementById('viewer').open")
    assert page.inner_text("#viewer-taken") == "2021-01-15 09:30:00"
    assert page.inner_text("#viewer-camera") == "Test Camera"
    assert page.inner_text("#viewer-size") == "96 \N{MULTIPLICATION SIGN} 64 px"
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.getElementById('viewer').open")


def test_folder_and_date_filters_are_applied_and_kept_in_the_url(page, site):
    base, _, root = site
    trips = str(root / "trips")
    page.fill("#path", trips)
    search_for(page, "a photo")
    wait_results(page, 3)
    names = {
        c.query_selector(".name").inner_text() for c in page.query_selector_all("#results .hit")
    }
    assert names == set(TRIPS)
    page.fill("#from", "2020-01-01")
    page.fill("#to", "2022-12-31")
    page.dispatch_event("#to", "change")
    wait_results(page, 1)
    assert page.inner_text("#results .hit .name") == "2021-snow.jpg"
    assert "from=2020-01-01" in page.url and "to=2022-12-31" in page.url
    # A reload keeps the filters and the search.
    page.reload()
    wait_done(page, "“a photo”")
    wait_results(page, 1)
    assert page.input_value("#path") == trips
    assert page.input_value("#from") == "2020-01-01"
    # A folder name that is only a prefix of another folder matches nothing.
    page.goto(base + "/?q=a+photo&path=" + trips[:-1])
    wait_done(page, "“a photo”")
    assert "0 results" in page.inner_text("#status")


def test_load_more_appends_the_next_page(page, site):
    _, index, _ = site
    page.select_option("#k", "12")
    search_for(page, "a red circle")
    wait_results(page, 12)  # the grid of this search, not a transient one
    first = hit_ids(page)
    assert len(first) == 12 and page.is_visible("#more")
    page.click("#more")
    wait_results(page, 15)  # everything the index has
    assert hit_ids(page)[:12] == first
    assert hit_ids(page) == [h.id for h in index.search_text("a red circle", k=15)]
    page.wait_for_function("() => document.getElementById('more').hidden")


def test_drop_an_image_to_search_by_it(page, site):
    _, index, _ = site
    search_for(page, "a red circle")
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
    wait_results(page, 15)
    assert hit_ids(page)[0] == target.id
    # The query image is shown, the stale text query cleared.
    assert page.is_visible("#query-image")
    assert page.inner_text("#query-image .name") == "dropped.png"
    assert page.eval_on_selector("#query-image img", "i => i.src.startsWith('blob:')")
    assert page.input_value("#query") == ""
    assert "upload=0" in page.url
    # Back to the text search, forward to the upload (kept in the page, not the URL).
    page.go_back()
    wait_done(page, "“a red circle”")
    page.go_forward()
    wait_done(page, "dropped.png")
    assert hit_ids(page)[0] == target.id


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
    assert "422" in error_shown(page)


def test_a_phone_width_layout_keeps_every_control_on_screen(browser, site):
    base, _, _ = site
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(base + "/?q=a+red+circle")
    wait_done(page, "“a red circle”")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways: {width} px wide"
    for selector in ("#query", "#search", "#target", "#k", "#path", "#from", "#to", "#drop"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
            selector,
            box,
        )
    columns = page.evaluate(
        "() => getComputedStyle(document.getElementById('results'))"
        ".gridTemplateColumns.split(' ').length"
    )
    assert columns == 2
    context.close()


def test_a_stopped_server_is_reported_as_unreachable(browser, site):
    _, index, _ = site
    context = browser.new_context()
    page = context.new_page()
    with serve_in_thread(app_for(index)) as base:
        page.goto(base + "/")
        page.wait_for_function(
            "() => document.getElementById('stats').textContent.includes('images')"
        )
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    status = error_shown(page)
    assert "Server unreachable" in status and "clipsearch serve" in status, status
    assert "Failed to fetch" not in status
    context.close()


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/docs", "() => document.querySelector('.swagger-ui [data-path=\"/v1/search/text\"]')"),
        ("/redoc", "() => document.body.innerText.includes('/v1/search/text')"),
    ],
)
def test_api_docs_render_offline(browser, site, path, rendered):
    """Every request outside the server is refused, as on a machine without internet; the
    pages render and load no script, style or font from elsewhere (ReDoc's footer asks a CDN
    for its logo, an image, whose absence shows as nothing)."""
    base, _, _ = site
    context = browser.new_context()
    outside: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            if r.request.resource_type != "image":
                outside.append(f"{r.request.resource_type} {r.request.url}")
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.goto(base + path)
    page.wait_for_function(rendered, timeout=30000)
    assert "clipsearch" in page.title()
    assert outside == []
    context.close()


def test_a_read_key_typed_into_the_page_unlocks_search_and_images(browser, site):
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
        wait_results(page, 15)
        assert thumbnails_loaded(page)
        assert page.eval_on_selector("#results img", "i => i.src.startsWith('blob:')")
        page.click("#results .hit")
        page.wait_for_function(
            "() => { const i = document.getElementById('viewer-img');"
            " return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); }"
        )
        assert page.get_attribute("#viewer-open", "href").startswith("blob:")
        context.close()


def test_load_more_is_not_offered_when_every_item_is_shown(page, site):
    base, _, _ = site
    page.goto(base + "/?q=a+shape&target=texts&k=4")  # exactly the index's four texts
    wait_done(page, "“a shape”")
    assert len(hit_ids(page)) == 4
    assert page.is_hidden("#more")
