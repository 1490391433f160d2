"""The web page at /ui, end to end in headless Chromium (Playwright driving the system's chromium)
against a real server on 127.0.0.1: add an edit after a preview, see its token coloured, withdraw it,
see it gone."""

import shutil

import httpx
import pytest

from tests.api.helpers import PROMPT, TARGET, UNRELATED


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on this machine (`make test` installs the Debian package where apt can)")
    return path


@pytest.fixture
def page(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_add_preview_colour_withdraw_in_a_browser(live_url, page):
    from playwright.sync_api import expect

    url, _ = live_url
    page.goto(f"{url}/ui")
    expect(page.locator("#active")).to_have_text("0 active edits")

    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    page.fill("#aliases", "Danielle Yvonne Marie Antoinette Darrieux, ")
    page.fill("#probes", UNRELATED)
    page.click("#preview")
    rows = page.locator("#preview-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(2)).to_contain_text(TARGET)
    expect(rows.nth(0).locator("td").nth(2)).to_have_class("changed")
    assert httpx.get(f"{url}/edits").json()["count"] == 0  # a preview stores nothing

    page.click("#save")
    expect(page.locator("#edits tbody tr")).to_have_count(1)
    expect(page.locator("#active")).to_have_text("1 active edits")
    (edit,) = httpx.get(f"{url}/edits").json()["data"]
    assert edit["aliases"] == ["Danielle Yvonne Marie Antoinette Darrieux"]

    page.fill("#ask", PROMPT)
    page.click("#generate")
    token = page.locator("#answer span.edited").first
    expect(token).to_have_text(" " + TARGET)
    assert token.get_attribute("data-edit-id") == edit["id"]
    assert PROMPT in token.get_attribute("title") and TARGET in token.get_attribute("title")
    token.hover()

    page.fill("#search", "no such words")
    expect(page.locator("#edits tbody tr")).to_have_count(0)
    page.fill("#search", "darrieux")
    expect(page.locator("#edits tbody tr")).to_have_count(1)

    page.click("#edits button.withdraw")
    expect(page.locator("#edits tbody tr td.status-withdrawn")).to_have_count(1)
    page.click("#generate")
    expect(page.locator("#answer span")).not_to_have_count(0)
    expect(page.locator("#answer span.edited")).to_have_count(0)
    assert httpx.get(f"{url}/edits/{edit['id']}").json()["status"] == "withdrawn"


def test_the_page_sends_the_key_it_is_given(live_url_factory, page):
    from playwright.sync_api import expect

    url, _ = live_url_factory(api_keys="ui:edit:" + "k" * 24)
    page.goto(f"{url}/ui")
    expect(page.locator("#model")).to_contain_text("missing API key")
    page.fill("#key", "k" * 24)
    page.locator("#key").dispatch_event("change")
    expect(page.locator("#active")).to_have_text("0 active edits")
    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    page.click("#save")
    expect(page.locator("#edits tbody tr")).to_have_count(1)
    assert (
        httpx.get(f"{url}/edits", headers={"Authorization": "Bearer " + "k" * 24}).json()["data"][0]["created_by"]
        == "ui"
    )
