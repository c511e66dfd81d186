"""The playground page, end to end in headless Chromium: type a prompt, click Generate, watch text stream in."""

import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import PacedModel

from gpt2kit.generate import GenerationConfig, generate
from gpt2kit.model import GPT, GPTConfig

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serving import BackgroundServer  # noqa: E402

from gpt2kit.serve import ServerConfig, create_app  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def find_executable(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    chromium = find_executable("chromium", "chromium-browser", "google-chrome")
    driver_path = find_executable("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no Chromium + chromedriver here (make test installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def set_slider(driver, element_id: str, value: float) -> None:
    element = driver.find_element(By.ID, element_id)
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", element, value
    )


@pytest.mark.slow  # end to end: run by `make test-slow`, which CI runs too
def test_playground_streams_a_completion(browser, gpt2_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=128, n_layer=2, n_head=2, n_embd=32))
    model.eval()
    app = create_app(PacedModel(model, 0.03), gpt2_tokenizer, ServerConfig(), model_name="playground-model")
    prompt_text = "Once upon a time"
    expected = generate(model, gpt2_tokenizer, [prompt_text], GenerationConfig(max_new_tokens=40, temperature=0))
    with BackgroundServer(app) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 10).until(lambda d: "playground-model" in d.find_element(By.ID, "model-name").text)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys(prompt_text)
        set_slider(browser, "temperature", 0)
        set_slider(browser, "max_tokens", 40)
        assert browser.find_element(By.ID, "temperature-value").text == "0.00"
        browser.find_element(By.ID, "generate").click()

        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.append(browser.find_element(By.ID, "completion").text)
            if browser.find_element(By.ID, "status").text.startswith(("done", "error")):
                break
            time.sleep(0.05)
        status = browser.find_element(By.ID, "status").text
        final = browser.find_element(By.ID, "completion").text
    assert status.startswith("done"), status
    # Selenium's .text collapses whitespace as rendered; compare on the same terms.
    assert final.split() == expected[0].text.split()
    partial = [text for text in seen if text and text != final]
    assert partial, "the completion appeared all at once, not streamed"
    assert browser.find_element(By.ID, "output").text.startswith(prompt_text)
