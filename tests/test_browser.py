"""The chat page in headless Chromium (Selenium, Debian's chromium and chromedriver) against a real server on
a tiny trained model: type a prompt, see text stream in, see coloured surprisal spans, change a control.
With LMGOLF_SCREENSHOT=1 it saves docs/images/chat-page.png; LMGOLF_SCREENSHOT_RUN=PATH serves that run folder
or artifact instead of the tiny model (the docs' screenshot: the load bench's cpu-demo run)."""

import os
import shutil
from pathlib import Path

import pytest

from lmgolf import api
from lmgolf.serve.card import model_card
from lmgolf.serve.server import create_app, serving_in_background

from conftest import TINY_RUN

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "chat-page.png"
PROMPT = "KING HENRY:\nThe king and the queen"


@pytest.fixture(scope="module")
def server(byte_data, tmp_path_factory, one_thread):
    path = os.environ.get("LMGOLF_SCREENSHOT_RUN")
    if not path:
        path = api.train(tmp_path_factory.mktemp("browser") / "run", preset="cpu-demo", data=byte_data,
                         overrides=TINY_RUN + ["model.context=64"], max_steps=30, progress=False).path
    loaded = api.load(path, device="cpu")
    card = model_card(loaded, Path(path).name)
    with serving_in_background(create_app(loaded.model, loaded.tokenizer, card)) as url:
        yield url, card["name"]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_streams_text_and_colours_every_token_by_its_bits(server, browser):
    url, name = server
    browser.get(url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: b.find_element(By.ID, "model-name").text == name)
    assert "parameters" in browser.find_element(By.ID, "card").text
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    temperature = browser.find_element(By.ID, "temperature")  # a sampling control: temperature to 0.3
    browser.execute_script("arguments[0].value = 0.3; arguments[0].dispatchEvent(new Event('input'))", temperature)
    assert browser.find_element(By.ID, "temperature-value").text == "0.30"
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("60")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#output .tok.gen"))  # streamed text appears
    wait.until(lambda b: "finished" in b.find_element(By.ID, "status").text)
    prompt_spans = browser.find_elements(By.CSS_SELECTOR, "#output .tok.prompt")
    generated = browser.find_elements(By.CSS_SELECTOR, "#output .tok.gen")
    assert "".join(s.get_attribute("textContent") for s in prompt_spans) == PROMPT
    assert len(generated) >= 10
    scored = prompt_spans + generated  # BOS has no span; the first prompt token is scored from BOS
    assert all(s.get_attribute("data-bits") and "background" in s.get_attribute("style") for s in scored)
    assert "bits" in generated[0].get_attribute("title")
    colours = {s.value_of_css_property("background-color") for s in scored}
    assert len(colours) > 3  # tokens the model found easy and hard are coloured differently
    browser.execute_script("arguments[0].dispatchEvent(new Event('mouseenter'))", generated[0])
    assert "bits" in browser.find_element(By.ID, "inspect").text
    request = browser.execute_script("return requestBody()")
    assert request["temperature"] == 0.3 and request["max_tokens"] == 60 and request["echo"] and request["stream"]
    if os.environ.get("LMGOLF_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
    browser.find_element(By.ID, "chat-mode").click()  # the chat template wraps the prompt and stops at the next turn
    request = browser.execute_script("return requestBody()")
    assert request["prompt"] == f"User: {PROMPT}\nAssistant:" and request["stop"] == ["\nUser:"]
