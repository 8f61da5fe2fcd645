"""The paywall in a real browser (Debian's Chromium, driven by Playwright; no browser download).

Usage: python paywall_browser.py <gate url of a paid page> <devnet explorer url> <out dir>
Opens the page, checks what a person and a screen reader get, screenshots it, pays on the
devnet, enters the txid and follows the status line until the page turns into the API's
answer; then the same without JavaScript (form, redirect, cookie). Prints one JSON line.
"""

import json
import re
import sys

import requests
from playwright.sync_api import expect, sync_playwright

url, devnet, out = sys.argv[1], sys.argv[2], sys.argv[3]
CHROMIUM = "/usr/bin/chromium"
result = {}


def pay(sats):
    r = requests.post(devnet + "/control/pay", json={"address": address, "sats": sats}, timeout=10)
    r.raise_for_status()
    return r.json()["txid"]


def page_json(page):
    """The JSON document the browser shows (Chromium puts it in a <pre>, with a viewer around it)."""
    text = page.evaluate("(document.querySelector('pre') || document.body).textContent")
    try:
        return json.loads(text)
    except ValueError:
        raise SystemExit(f"not JSON at {page.url}: {page.content()[:2000]}")


def mine(blocks):
    requests.post(devnet + "/control/mine", json={"blocks": blocks}, timeout=10).raise_for_status()


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM)

    # With JavaScript: look, screenshot, pay, follow the status line, get in.
    page = browser.new_page(viewport={"width": 480, "height": 900})
    page.clock.install()
    response = page.goto(url)
    result["first_status"] = response.status
    result["csp"] = response.headers.get("content-security-policy", "")
    expect(page.get_by_role("heading", name="Payment required")).to_be_visible()
    result["aria"] = page.locator("main").aria_snapshot()
    address = page.locator("#address").inner_text()
    result["address"] = address
    result["wallet_href"] = page.get_by_role("link", name="Open in wallet").get_attribute("href")
    page.screenshot(path=f"{out}/paywall.png", full_page=True)
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    txid = pay(1000)
    page.get_by_label("Transaction id").fill(txid)
    page.get_by_role("button", name="I have paid").click()
    status = page.get_by_role("status")
    expect(status).to_have_text(re.compile(r"0 of 1 confirmations"), timeout=10000)
    result["seen_text"] = status.inner_text()
    mine(1)
    # The page polls on a back-off of tens of seconds: let that time pass.
    page.clock.fast_forward("02:00")
    # The page leaves for the API's answer (a JSON document, which Chromium shows in a <pre>).
    page.wait_for_selector("pre", timeout=15000)
    result["paid_url"] = page.url
    result["paid_body"] = page_json(page)
    result["cookie"] = [c["name"] for c in page.context.cookies() if c["name"] == "txgate_txid"]
    result["console_errors"] = console_errors

    # Without JavaScript: the form sends the txid; the filter redirects with a cookie.
    context = browser.new_context(java_script_enabled=False, viewport={"width": 480, "height": 900})
    plain = context.new_page()
    txid = pay(1000)
    mine(1)
    plain.goto(url)
    plain.get_by_label("Transaction id").fill(txid)
    plain.get_by_role("button", name="I have paid").click()
    plain.wait_for_load_state()
    result["nojs_url"] = plain.url
    result["nojs_body"] = page_json(plain)
    result["nojs_txid"] = txid
    browser.close()

print(json.dumps(result))
