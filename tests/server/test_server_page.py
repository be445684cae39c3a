"""The page at / in headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
selenium): it loads, a query runs, the streamed text appears and equals the API's answer."""
import functools
import shutil

import numpy as np
import pytest

from server_helpers import model_dirs, reference, servers  # noqa: F401

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (pip) drives Chromium")
httpx = pytest.importorskip("httpx")
# a loaded machine (the suite, other jobs): generous timeouts
post, get = (functools.partial(f, timeout=120) for f in (httpx.post, httpx.get))

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver packages "
           "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _ready(browser, url):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element("id", "run").is_enabled())
    return WebDriverWait


def test_page_generates_streaming(browser, servers):
    server = servers("gpt2")
    wait = _ready(browser, server.url)
    assert "(decoder)" in browser.find_element("id", "kind").text
    prompt = browser.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys("the little dog")
    tokens = browser.find_element("id", "max-tokens")
    tokens.clear()
    tokens.send_keys("40")
    browser.find_element("id", "run").click()
    wait(browser, 60).until(lambda d: d.find_element("id", "output").get_attribute("data-done"))
    shown = browser.execute_script("return document.getElementById('output').textContent")
    want = post(server.url + "/v1/completions", timeout=60, json={
        "prompt": "the little dog", "max_tokens": 40, "temperature": 0}).json()
    assert shown == want["choices"][0]["text"] and shown


def test_page_searches_sentences(browser, servers, reference):
    server, ref = servers("bert"), reference("bert")
    wait = _ready(browser, server.url)
    sentences = ["the cat sat on the mat", "a man plays the guitar", "where is the station"]
    box = browser.find_element("id", "input")
    box.clear()
    box.send_keys("\n".join(sentences))
    query = browser.find_element("id", "query")
    query.clear()
    query.send_keys("a cat on a mat")
    browser.find_element("id", "run").click()
    wait(browser, 60).until(lambda d: len(d.find_elements("css selector", "#results li")) == 3)
    items = browser.execute_script(  # each item: its score, then its sentence
        "return [...document.querySelectorAll('#results li')].map(li => li.lastChild.textContent)")
    batch = ref.tokenizer(["a cat on a mat"] + sentences)
    e = ref.embed(batch["input_ids"], batch["attention_mask"]).astype(np.float64)
    order = np.argsort(-(e[1:] @ e[0]), kind="stable")
    assert items == [sentences[i] for i in order]


def test_page_translates(browser, servers):
    server = servers("marian")
    wait = _ready(browser, server.url)
    box = browser.find_element("id", "source")
    box.clear()
    box.send_keys("the cat\nwhere is the station")
    browser.find_element("id", "run").click()
    wait(browser, 60).until(lambda d: d.find_element("id", "output").text)
    shown = browser.execute_script("return document.getElementById('output').textContent")
    want = post(server.url + "/translate", timeout=60, json={
        "q": ["the cat", "where is the station"], "source": "en", "target": "de"}).json()
    assert shown == "\n".join(want["translatedText"])
