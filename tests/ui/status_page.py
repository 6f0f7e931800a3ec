"""Drives the status page in a real headless Chromium (Debian's chromium and chromium-driver,
through selenium), against a running responder. Run by tests/ui.rs, which starts the
responder on its real HAProxy and Docker engine and checks the world afterwards.

The page must show service onprem-api on-prem; after an onprem_down notification (posted
here, to the API, not through the page) it must show cloud and the new steps without being
reloaded; its pause button must ask for the token and pause the service (checked in the
API); and the browser console must stay free of errors. Prints the figures as JSON on the
last line: page load to first drawn status, notification to cloud shown.

Usage: status_page.py URL TOKEN FIXTURE [SCREENSHOT.png]
"""
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

url, token, fixture = sys.argv[1], sys.argv[2], sys.argv[3]
screenshot = sys.argv[4] if len(sys.argv) > 4 else None

opts = webdriver.ChromeOptions()
opts.binary_location = os.environ.get("FR_CHROMIUM", "/usr/bin/chromium")
for flag in (
    "--headless=new",
    "--no-sandbox",  # root in a container; the page is our own, on loopback
    "--disable-gpu",
    "--window-size=1280,1000",
    # Nothing but the page under test: no update checks, sync or other calls home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
):
    opts.add_argument(flag)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(
    service=Service(os.environ.get("FR_CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
card = "#svc-onprem-api"


def mode():
    return driver.find_element(By.CSS_SELECTOR, f"{card} .mode").get_attribute("data-mode")


def post(body):
    req = urllib.request.Request(
        f"{url}/api/v1/alerts", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 202, r.status


def api_status():
    with urllib.request.urlopen(f"{url}/api/v1/status", timeout=5) as r:
        return json.load(r)


try:
    started = time.monotonic()
    driver.get(f"{url}/")
    WebDriverWait(driver, 15).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f"{card} .mode")))
    page_load_ms = (time.monotonic() - started) * 1000
    assert mode() == "onprem", f"first drawn mode {mode()!r}"
    page = driver.current_url

    with open(fixture, "rb") as f:
        body = json.load(f)
    posted = time.monotonic()
    post(body)
    # Shown without a reload: the page refreshes itself.
    WebDriverWait(driver, 60).until(lambda d: mode() == "cloud" and d.find_elements(
        By.CSS_SELECTOR, f"{card} .state-success"))
    cloud_shown_ms = (time.monotonic() - posted) * 1000
    assert driver.current_url == page
    steps = driver.find_element(By.CSS_SELECTOR, f"{card}").text
    assert "start" in steps and "success" in steps, steps
    timeline = driver.find_element(By.CSS_SELECTOR, "#timeline").text
    assert "step" in timeline, timeline

    # Pause: the button asks for the token, then the API has the override.
    driver.find_element(By.CSS_SELECTOR, f'{card} button[data-action="pause"]').click()
    prompt = WebDriverWait(driver, 5).until(EC.alert_is_present())
    prompt.send_keys(token)
    prompt.accept()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, f'{card} [data-override="paused"]'))
    result = driver.find_element(By.CSS_SELECTOR, f"{card} .result").text
    assert result == "pause: done", result
    override = api_status()["services"]["onprem-api"]["state"]["override"]
    assert override == "paused", override

    assert not driver.find_element(By.ID, "banner").is_displayed()
    if screenshot:
        driver.save_screenshot(screenshot)

    # A label value that would run script if the page wrote it as HTML: shown as text, ran
    # nothing. (Another alert of the same group, after the screenshot.)
    hostile = '<img src=x onerror="window.__injected=1">'
    for alert in body["alerts"]:
        alert["labels"]["note"] = hostile
        alert["fingerprint"] = "00000000hostile0"
    post(body)
    WebDriverWait(driver, 10).until(
        lambda d: hostile in d.find_element(By.CSS_SELECTOR, card).text)
    assert driver.execute_script("return window.__injected") is None
    assert "null" not in driver.find_element(By.CSS_SELECTOR, card).text.split()
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    print(json.dumps({"page_load_ms": round(page_load_ms), "cloud_shown_ms": round(cloud_shown_ms)}))
finally:
    driver.quit()
