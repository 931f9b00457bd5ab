# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo (tools/web_demo.py over diffews.web_demo) served on localhost: Gradio's own client
and a real headless Chromium get the predictor's masks from the running page; the support set is
encoded once and reused; bad uploads get a message and the server keeps serving. (The launcher's
flags: tests/test_web_demo_launcher.py.)

The browser is Debian's Chromium driven by Selenium through Debian's chromedriver
(``bash dev/install.sh`` installs both); a missing browser fails the test, it is never skipped.
Set DIFFEWS_WEB_DEMO_SCREENSHOT=docs/web_demo.png to also write the page's screenshot there.
"""

import base64
import io
import os
import shutil
import socket
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import SIZE, make_cfg
from diffews import DiffewSPredictor
from diffews.data.datasets.synthetic import render, synthetic_records
from diffews.modeling import save_release_unet

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from diffews.web_demo import WebDemoSession, build_demo, launch_demo  # noqa: E402

# Gradio 6.31's queue calls pandas options that pandas 3 deprecates (harmless here)
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PANEL = 256  # height of the result panels; the decoded prediction (SIZE px) is enlarged 4x
SCALE = PANEL // SIZE


# ---- inputs and the predictor's own answer ----------------------------------------------------
def _picture(index: int, size) -> np.ndarray:
    """A synthetic test image (an object, often a distractor) resized to (H, W)."""
    record = synthetic_records("test", 96)[index]
    image, _ = render(record, record["classes"][0])
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two supports (one with a mask file, one painted: an RGBA layer), three queries of other
    sizes, and bad uploads."""
    d = tmp_path_factory.mktemp("web_inputs")
    f = {}
    for name, index, size in (("s1", 0, (48, 80)), ("s2", 61, (56, 56)), ("q1", 5, (40, 72)),
                              ("q2", 70, (64, 64)), ("q3", 130, (72, 50))):
        f[name] = str(d / f"{name}.png")
        Image.fromarray(_picture(index, size)).save(f[name])
    m1 = np.zeros((48, 80), bool)
    m1[10:30, 20:50] = True
    f["m1"], f["m1_array"] = str(d / "s1_mask.png"), m1
    Image.fromarray(m1.astype(np.uint8) * 255).save(f["m1"])
    layer = np.zeros((56, 56, 4), np.uint8)  # what the brush leaves: colour + alpha
    layer[15:40, 8:30] = (255, 32, 32, 153)
    f["layer2"], f["m2_array"] = str(d / "s2_layer.png"), layer[..., 3] > 0
    Image.fromarray(layer, "RGBA").save(f["layer2"])
    f["blank_layer"] = str(d / "blank_layer.png")
    Image.fromarray(np.zeros((56, 56, 4), np.uint8), "RGBA").save(f["blank_layer"])
    f["wrong_size"] = str(d / "wrong_size.png")
    Image.fromarray(np.full((12, 10), 255, np.uint8)).save(f["wrong_size"])
    f["empty"] = str(d / "empty.png")
    Image.fromarray(np.zeros((48, 80), np.uint8)).save(f["empty"])
    f["broken"] = str(d / "broken.png")
    (d / "broken.png").write_bytes(b"this is not an image")
    folder = d / "query_folder"
    folder.mkdir()
    for q in ("q1", "q2", "q3"):
        shutil.copy(f[q], folder)
    f["folder"] = str(folder)
    return f


def _reference(predictor, files, supports):
    """The predictor on the same files: {query file name: predict dict}."""
    images = [np.asarray(Image.open(files[s]).convert("RGB")) for s in supports]
    masks = [files[s.replace("s", "m") + "_array"] for s in supports]
    queries = [files[q] for q in ("q1", "q2", "q3")]
    # the page's batching (4 queries per pass): the same passes, so the same rounding
    results = predictor.predict(queries, predictor.encode_supports(images, masks), batch_size=4)
    return {os.path.basename(q): r for q, r in zip(queries, results)}


def _check_zip(data: bytes, reference):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted(f"{n[:-4]}_mask.png" for n in reference)
        for name, ref in reference.items():
            shown = np.asarray(Image.open(io.BytesIO(zf.read(f"{name[:-4]}_mask.png"))))
            assert shown.shape == ref["mask"].shape and set(np.unique(shown)) <= {0, 255}
            assert np.array_equal(shown > 0, ref["mask"]), name


def _check_panel(panel: np.ndarray, ref):
    """The right part of a result panel is the decoded prediction enlarged SCALE x (nearest)."""
    assert panel.shape[0] == PANEL
    assert np.array_equal(panel[:, -PANEL:][::SCALE, ::SCALE], ref["pred_image"])


# ---- the server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predictor(tiny_sd, tiny_model, tmp_path_factory):
    release = tmp_path_factory.mktemp("web_release")
    save_release_unet(tiny_model.unet, str(release / "unet"))
    return DiffewSPredictor.from_config(make_cfg(tiny_sd, "MODEL.WEIGHTS", str(release)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(predictor, files, tmp_path_factory):
    from diffews.web_demo import write_synthetic_examples

    d = tmp_path_factory.mktemp("web_server")
    session = WebDemoSession(predictor, output_dir=str(d / "runs"),
                             allowed_roots=[os.path.dirname(files["folder"])])
    examples = write_synthetic_examples(str(d / "examples"), size=64)
    demo = build_demo(session, examples, "Model: the tests' tiny random DiffewS")
    url = launch_demo(demo, port=_free_port(), block=False, allowed_paths=[str(d / "examples")])
    yield url, session
    demo.close()


class PassCounter:
    """Counts the supports run through UNet support passes (8 input channels; one pass may run
    several) and the query passes (4) while active."""

    def __init__(self, model):
        self.unet, self.support, self.query = model.unet, 0, 0

    def __enter__(self):
        def hook(_, args):
            channels = args[0].shape[1]
            self.support += args[0].shape[0] if channels == 8 else 0
            self.query += channels == 4
        self.handle = self.unet.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---- (a) Gradio's client ------------------------------------------------------------------------
def _api_args(files, supports=(), queries=(), folder=""):
    """The /segment API's keyword arguments: supports as (image, mask file or None, layer or
    None), the other slots empty."""
    from gradio_client import handle_file

    args = {}
    for i in range(1, 6):
        image, mask, layer = supports[i - 1] if i <= len(supports) else (None, None, None)
        args[f"support_{i}_image"] = None if image is None else {
            "background": handle_file(files[image]), "composite": None,
            "layers": [handle_file(files[layer])] if layer else []}
        args[f"support_{i}_mask"] = handle_file(files[mask]) if mask else None
    args["queries"] = [handle_file(files[q]) for q in queries]
    args["folder"] = folder
    return args


def test_client_gets_the_predictors_masks(server, files, predictor):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False)
    reference = _reference(predictor, files, ["s1", "s2"])
    supports = [("s1", "m1", None), ("s2", None, "layer2")]  # a mask file; a painted layer
    queries = ("q1", "q2", "q3")
    start = time.perf_counter()
    with PassCounter(predictor.model) as first:
        gallery, table, status, zip_path = client.predict(**_api_args(files, supports, queries),
                                                          api_name="/segment")
    client_seconds = (time.perf_counter() - start) / 3
    assert (first.support, first.query) == (2, 1)  # 3 queries, one batch of 4
    assert "Support set encoded" in status and "2 support(s)" in status
    with open(zip_path, "rb") as fh:
        _check_zip(fh.read(), reference)
    assert [row[0] for row in table["data"]] == list(reference)
    for item, row, (name, ref) in zip(gallery, table["data"], reference.items()):
        path = item["image"]["path"] if isinstance(item["image"], dict) else item["image"]
        _check_panel(np.asarray(Image.open(path).convert("RGB")), ref)
        assert name in item["caption"] and f"score {ref['score']:.2f}" in item["caption"]
        assert row[3] == pytest.approx(ref["score"], abs=1e-3)
        assert row[2] == pytest.approx(100 * ref["mask"].mean(), abs=0.1)
        assert 0 < row[4] < client_seconds * 3
    print(f"\nweb demo, tiny test model: {np.mean([r[4] for r in table['data']]):.3f} s per query "
          f"in the page's timing, {client_seconds:.3f} s per query seen by the client")

    bad = [  # (supports, queries, folder, message)
        ((), queries, "", "no support"),
        ([("s1", "wrong_size", None)], queries, "", "wrong_size.png is 10x12 but its image is "
                                                    "80x48"),
        ([("s1", "broken", None)], queries, "", "support 1: mask file broken.png: not a readable "
                                                "image; give a PNG or JPEG file"),
        ([("s2", None, "blank_layer")], queries, "", "support 1: no foreground painted"),
        ([(None, "m1", None)], queries, "", "support 1: a mask but no image"),
        ([("s1", "empty", None)], queries, "", "support 1: mask file empty.png has no foreground"),
        ([("broken", None, None)], queries, "", "^support 1: broken.png: not a readable image"),
        ([("s1", "m1", None)], (), "", "no query"),
        ([("s1", "m1", None)], ("broken",), "", "^query broken.png: not a readable image"),
        ([("s1", "m1", None)], (), files["folder"] + "_missing", "_missing: not an allowed "
                                                                  "folder"),
        ([("s1", "m1", None)], (), os.path.dirname(ROOT), "not an allowed folder"),
    ]
    for sup, qs, folder, message in bad:
        with pytest.raises(AppError, match=message):
            client.predict(**_api_args(files, sup, qs, folder), api_name="/segment")

    # the server still serves; same supports: the set is reused, not encoded again; a folder of
    # queries on the server gives the same masks
    with PassCounter(predictor.model) as again:
        _, table, status, zip_path = client.predict(
            **_api_args(files, supports, (), files["folder"]), api_name="/segment")
    assert (again.support, again.query) == (0, 1)
    assert "Support set reused" in status and [row[0] for row in table["data"]] == list(reference)
    with open(zip_path, "rb") as fh:
        _check_zip(fh.read(), reference)


# ---- (b) a real browser -------------------------------------------------------------------------
def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "Chromium is missing: run `bash dev/install.sh` (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chromium_profile'}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(tmp_path / "downloads"),
        "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _fetch(driver, url: str) -> bytes:
    """GET ``url`` from inside the page (the browser's own request)."""
    data = driver.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
        "  let s = ''; const u = new Uint8Array(b);"
        "  for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);"
        "  done(btoa(s)); }).catch(e => done('ERROR ' + e));", url)
    assert not data.startswith("ERROR"), data
    return base64.b64decode(data)


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_browser_shows_the_predictors_masks(server, files, predictor, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    reference = _reference(predictor, files, ["s1"])
    driver = _chromium(tmp_path)
    wait = WebDriverWait(driver, 30, poll_frequency=0.2)
    try:
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.ID, "run"))
        # no support yet: the page says so
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "no support" in d.find_element(By.TAG_NAME, "body").text)
        driver.find_element(By.CSS_SELECTOR, ".toast-close").click()  # dismiss the message

        def upload(element_id, paths):
            field = driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=file]")
            field.send_keys("\n".join(paths))

        upload("support_image_1", [files["s1"]])
        upload("support_mask_1", [files["m1"]])
        upload("queries", [files[q] for q in ("q1", "q2", "q3")])
        wait.until(lambda d: "s1_mask" in _text(d, "support_mask_1")  # shown as stem + ext
                   and all(q in _text(d, "queries") for q in ("q1", "q2", "q3"))
                   and d.find_elements(By.CSS_SELECTOR, "#support_image_1 canvas")
                   and "Upload an image" not in _text(d, "support_image_1"))
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "queries segmented" in _text(d, "status"))
        status = _text(driver, "status")
        assert "Support set encoded" in status and "1 support(s)" in status

        # the zip the page offers, downloaded by the browser
        link = driver.find_element(By.CSS_SELECTOR, "#masks_zip a[download]")
        link.click()
        target = tmp_path / "downloads" / "masks.zip"
        wait.until(lambda d: target.exists() and target.stat().st_size > 0)
        _check_zip(target.read_bytes(), reference)
        # the pictures the page shows
        images = driver.find_elements(By.CSS_SELECTOR, "#gallery .thumbnail-item img")
        assert len(images) == 3
        for img, (name, ref) in zip(images, reference.items()):
            assert name in img.get_attribute("alt")
            _check_panel(np.asarray(Image.open(io.BytesIO(_fetch(driver, img.get_attribute("src"))))
                                    .convert("RGB")), ref)
        table = _text(driver, "table")
        for name, ref in reference.items():
            assert name in table and f"{ref['score']:.3f}".rstrip("0") in table

        # same supports again: reused
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "Support set reused" in _text(d, "status"))

        # a second support whose mask is painted with the brush: a new set of 2 supports
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Support 2')]").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#support_image_2 input[type=file]"))
        upload("support_image_2", [files["s2"]])
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#support_image_2 canvas")
                   and "Upload an image" not in _text(d, "support_image_2"))
        canvas = driver.find_elements(By.CSS_SELECTOR, "#support_image_2 canvas")[-1]
        ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(30, 0) \
            .move_by_offset(0, 20).release().perform()  # the brush is the active tool
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "Support set encoded: 2 support(s)" in _text(d, "status"))
        _screenshot(driver, tmp_path / "web_demo.png")
    finally:
        driver.quit()


def _screenshot(driver, path):
    """The whole page (the window is grown to the page's height), to ``path`` and to
    $DIFFEWS_WEB_DEMO_SCREENSHOT when set."""
    height = 0
    for _ in range(20):  # until the layout has settled
        time.sleep(0.25)
        new = driver.execute_script("return document.documentElement.scrollHeight")
        if new == height:
            break
        height = new
        chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
        driver.set_window_size(1400, height + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    extra = os.environ.get("DIFFEWS_WEB_DEMO_SCREENSHOT")
    if extra:
        os.makedirs(os.path.dirname(os.path.abspath(extra)), exist_ok=True)
        shutil.copy(path, extra)
