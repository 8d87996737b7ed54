"""The Prefect UI in a real browser: stage artifacts render, inline gallery thumbnails included.

Starts `prefect server start` (temporary PREFECT_HOME, free 127.0.0.1 port), runs `ferpipe download`
and `ferpipe align` with PREFECT_API_URL set on 35 synthetic images (one image replaced after the
download, so the align failure gallery has a thumbnail), then drives headless Chromium (Debian's
`chromium` + `chromium-driver`, `make browser`) with Selenium: the align flow run's Artifacts tab
lists the stage artifacts, the per-shard stats table and the failure gallery render, and the
gallery's inline `<img src="data:image/jpeg;base64,...">` thumbnail is decoded by the browser.
Screenshots go to reports/ui/. Selenium Manager is never used (nothing downloads a browser).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.prefect_server import BIN, api_url_set, base_env, prefect_server, run_to_end

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(__file__).resolve().parents[1] / "reports" / "ui"


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    if chromium and driver:
        return chromium, driver
    reason = ("chromium and chromedriver are not installed (`make browser` installs Debian's chromium and "
              "chromium-driver as root)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(monkeypatch):
    pytest.importorskip("selenium", reason="selenium is in the dev extras: pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    chromium, driver = _browser()
    monkeypatch.setenv("SE_OFFLINE", "true")

    def no_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: it downloads browsers and drivers")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_manager)
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1600", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-breakpad"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()  # ends chromedriver and every chromium process it started


def _flow_run_ids(*flows: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read():
        async with get_client() as client:
            out = {}
            for name in flows:
                runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
                assert len(runs) == 1 and runs[0].state.is_completed(), runs
                out[name] = str(runs[0].id)
            return out

    return asyncio.run(read())


def test_stage_artifacts_render_in_the_prefect_ui(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "download": {"dataset": "mini", "workers": 1, "synthetic": {"n_per_class": 3, "size": 160, "workers": 1}},
        "align": {"output_size": 112, "samples_per_shard": 8, "decode_workers": 0, "threads": 1},
    }))
    project, home, logs = tmp_path / "project", tmp_path / "prefect-home", tmp_path / "logs"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with prefect_server(home, logs) as api_url, api_url_set(api_url, home):
        env = base_env(home, api_url)
        stage = [str(BIN / "ferpipe"), "{}", "--params", str(params), "--root", str(project)]
        run_to_end([s.format("download") for s in stage] + ["-S", "download.synthetic.n_per_class=5"],
                   env, logs / "download.log", timeout=300)
        # a file changed after the manifest was made: align lists it in the failure gallery, with a thumbnail
        raw = project / "data/raw/mini/Image/original"
        shutil.copyfile(raw / "test_0001.jpg", raw / "train_00001.jpg")
        run_to_end([s.format("align") for s in stage], env, logs / "align.log", timeout=300)
        runs = _flow_run_ids("download", "align")

        ui = api_url.removesuffix("/api")
        wait = WebDriverWait(browser, 60)

        def open_tab(run_id: str) -> None:
            browser.get(f"{ui}/runs/flow-run/{run_id}")
            wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "li.p-tab#artifacts"))).click()
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#artifacts-content .artifact-card")))

        def card(key: str):
            return wait.until(EC.element_to_be_clickable((By.XPATH, (
                "//section[@id='artifacts-content']//a[.//*[contains(@class, 'artifact-card__title')"
                f" and normalize-space()='{key}']]"))))

        def visible_text(text: str) -> None:
            wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".app-router-view__view"), text))

        # download: both artifacts are listed on its flow run's Artifacts tab; the counts table renders
        open_tab(runs["download"])
        for key in ("download-mini-counts", "download-mini-rejected"):
            assert card(key).is_displayed()
        card("download-mini-counts").click()
        visible_text("usable images per split and class")
        visible_text("happiness")

        # align: the flow run's Artifacts tab
        open_tab(runs["align"])
        for key in ("align-mini-shards", "align-mini-summary", "align-mini-failures"):
            assert card(key).is_displayed()
        browser.save_screenshot(str(SCREENSHOTS / "align-flow-run.png"))

        # the per-shard stats table
        card("align-mini-shards").click()
        visible_text("per-shard alignment stats")
        for text in ("train-000000", "test-000000", "items_per_second"):
            visible_text(text)
        browser.save_screenshot(str(SCREENSHOTS / "align-shards-table.png"))

        # the throughput summary (markdown with tables)
        open_tab(runs["align"])
        card("align-mini-summary").click()
        visible_text("images/s")
        visible_text("sha256_mismatch")

        # the failure gallery: the row and its inline data-URI thumbnail, decoded by the browser
        open_tab(runs["align"])
        card("align-mini-failures").click()
        visible_text("Alignment failures (1)")
        visible_text("train_00001")
        img = wait.until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, ".app-router-view__view img[src^='data:image/']")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 96
        assert img.size["width"] > 0 and img.size["height"] > 0
        browser.save_screenshot(str(SCREENSHOTS / "align-failure-gallery.png"))

        # the same artifact in Prefect's V2 UI ("Switch to V2 UI") renders the thumbnail as well
        artifact_id = browser.current_url.rstrip("/").rsplit("/", 1)[-1]
        browser.get(f"{ui}/v2/artifacts/artifact/{artifact_id}")
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "train_00001"))
        img = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "img[src^='data:image/']")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
        assert browser.execute_script("return arguments[0].naturalWidth", img) == 96
