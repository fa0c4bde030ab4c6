"""The web page in Debian's Chromium (headless, via Selenium + chromedriver): a bad upload shows
a readable message; a CT upload shows the decision, score and heat map. Screenshots are saved
to $CADX_TEST_ARTIFACTS (default: the test's tmp folder)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from cadx.bundle import load_bundle
from cadx.diagnose.fna import fna_advice
from cadx.diagnose.images import diagnose_image_files
from cadx.diagnose.patient import diagnose_case
from cadx.image_bundle import load_image_bundle
from cadx.io.volumes import read_case
from cadx.serve.app import create_app
from cadx.serve.registry import load_model_folder
from tests.serve_support import (
    write_ct_bundle,
    write_ct_upload,
    write_fused_image_bundle,
    write_image_bundle,
    write_png_images,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run does)")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The service (a CT, a thyroid ultrasound and a fused breast model) on a free loopback
    port, in a thread."""
    models_dir = tmp_path_factory.mktemp("models")
    write_ct_bundle(models_dir / "pancreas_ct.cadx")
    write_image_bundle(models_dir / "thyroid_us.cadx")
    write_fused_image_bundle(models_dir / "breast_fused.cadx")
    app = create_app(load_model_folder(models_dir))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the service did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", models_dir
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1000,1300")
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CADX_TEST_ARTIFACTS", tmp_path / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_page_shows_errors_then_a_result_with_heat_map(server, browser, tmp_path):
    base_url, models_dir = server
    image, mask = write_ct_upload(tmp_path / "upload")
    wrong = tmp_path / "upload" / "notes.txt"
    wrong.write_text("not an image")
    wait = WebDriverWait(browser, 30)
    browser.set_window_size(1000, 1300)
    browser.get(base_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    Select(browser.find_element(By.ID, "model")).select_by_value("pancreas_ct")
    assert browser.find_element(By.ID, "mask-row").is_displayed()  # CT model: mask asked for

    browser.find_element(By.ID, "files").send_keys(str(wrong))
    browser.find_element(By.ID, "submit").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error").is_displayed()
                       and d.find_element(By.ID, "error"))
    assert "notes.txt" in error.text and "not a CT/MR volume" in error.text

    browser.find_element(By.ID, "files").clear()
    browser.find_element(By.ID, "files").send_keys(str(image))
    browser.find_element(By.ID, "organ-mask").send_keys(str(mask))
    browser.find_element(By.ID, "size").send_keys("12")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth"))
    assert not browser.find_element(By.ID, "error").is_displayed()
    expected = diagnose_case(load_bundle(models_dir / "pancreas_ct.cadx"),
                             read_case(image, organ_mask_path=mask))
    assert browser.find_element(By.ID, "score").text == f"{expected.patient_score:.3f}"
    assert browser.find_element(By.ID, "decision").text == expected.decision
    assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") >= 384
    assert "slice" in browser.find_element(By.ID, "heatmap-caption").text
    artifacts = _artifacts(tmp_path)
    assert browser.save_screenshot(str(artifacts / "serve_page_result.png"))

    browser.set_window_size(390, 1400)  # a phone's width: nothing may scroll sideways
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    assert browser.save_screenshot(str(artifacts / "serve_page_phone.png"))


def test_thyroid_images_show_cams_and_fna_advice(server, browser, tmp_path):
    base_url, models_dir = server
    pngs = write_png_images(tmp_path / "pngs")
    wait = WebDriverWait(browser, 30)
    browser.set_window_size(1000, 1500)
    browser.get(base_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    Select(browser.find_element(By.ID, "model")).select_by_value("thyroid_us")
    assert not browser.find_element(By.ID, "mask-row").is_displayed()
    assert "TI-RADS" in browser.find_element(By.ID, "fna-rule").text

    browser.find_element(By.ID, "files").send_keys(str(pngs[0]))
    browser.find_element(By.ID, "size").send_keys("1O")  # letter O: a typo
    browser.find_element(By.ID, "submit").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error").is_displayed()
                       and d.find_element(By.ID, "error"))
    assert "lesion size" in error.text and "1O" in error.text

    browser.find_element(By.ID, "files").clear()
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in pngs))
    browser.find_element(By.ID, "size").clear()
    browser.find_element(By.ID, "size").send_keys("12")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    wait.until(lambda d: d.execute_script(
        "const c = document.querySelectorAll('.image-card img');"
        "return c.length === 2 && [...c].every((i) => i.complete && i.naturalWidth > 0)"))
    expected = diagnose_image_files(load_image_bundle(models_dir / "thyroid_us.cadx"), pngs,
                                    "exam")
    assert browser.find_element(By.ID, "decision").text == expected.decision
    advice = fna_advice(expected.exam_score > expected.exam_threshold, 12.0)
    fna_text = browser.find_element(By.ID, "fna").text
    assert advice.recommendation in fna_text and "Tessler" in fna_text
    cards = browser.find_elements(By.CSS_SELECTOR, ".image-card p")
    assert [c.text.split(":")[0] for c in cards] == ["nodule_1.png", "nodule_2.png"]
    assert browser.save_screenshot(str(_artifacts(tmp_path) / "serve_page_thyroid.png"))


def test_fused_model_asks_for_its_clinical_values_and_shows_both_scores(server, browser,
                                                                        tmp_path):
    from cadx.diagnose.clinical import add_fusion

    base_url, models_dir = server
    pngs = write_png_images(tmp_path / "pngs")
    wait = WebDriverWait(browser, 30)
    browser.set_window_size(1000, 1500)
    browser.get(base_url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    Select(browser.find_element(By.ID, "model")).select_by_value("thyroid_us")
    assert not browser.find_element(By.ID, "clinical-row").is_displayed()
    Select(browser.find_element(By.ID, "model")).select_by_value("breast_fused")
    assert browser.find_element(By.ID, "clinical-row").is_displayed()
    assert "age (years)" in browser.find_element(By.ID, "clinical-fields").text
    device = Select(browser.find_element(By.ID, "clinical-device"))
    assert [o.text for o in device.options] == ["(not given)", "GE", "Toshiba"]

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in pngs))
    browser.find_element(By.ID, "clinical-age").send_keys("61")
    device.select_by_value("GE")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "fusion").is_displayed())
    bundle = load_image_bundle(models_dir / "breast_fused.cadx")
    expected = add_fusion(bundle, diagnose_image_files(bundle, pngs, "exam"),
                          {"age": "61", "device": "GE"})
    assert browser.find_element(By.ID, "score-label").text == "image-only score"
    assert browser.find_element(By.ID, "score").text == f"{expected.exam_score:.3f}"
    assert browser.find_element(By.ID, "fusion-score").text == \
        f"{expected.fusion['score']:.3f}"
    assert browser.find_element(By.ID, "fusion-decision").text == \
        f"Image + age, device: {expected.fusion['decision']}"
    assert browser.save_screenshot(str(_artifacts(tmp_path) / "serve_page_fusion.png"))
    browser.set_window_size(390, 1400)  # a phone's width: the clinical fields fit too
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    browser.set_window_size(1000, 1500)

    device.select_by_value("")  # a value missing: the image-only score, and why
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "fusion-decision").text
               == "Fused score not given")
    assert browser.find_element(By.ID, "fusion-score").text == (
        "image-only score given: the fusion model needs device: missing")
    assert browser.find_element(By.ID, "score").text == f"{expected.exam_score:.3f}"
