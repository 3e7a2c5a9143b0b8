"""The prediction page at `/`, driven in headless Chromium against the model server under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import Trained, api_server
from tests.tools import headless_chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "page-test-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str, churn_model: Trained) -> Iterator[str]:
    with api_server(
        tmp_path_factory.mktemp("page"), mlflow_uri, churn_model.name, BITLOOP_API_API_KEY=API_KEY
    ) as base:
        yield base


def test_the_form_is_built_from_the_model_and_shows_the_servers_answer(
    browser: Any, served: str, churn_model: Trained
) -> None:
    page = browser.new_page()
    failed: list[str] = []  # collected here, asserted below
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(served + "/")
    page.wait_for_selector("#submit:not([disabled])")
    icon = httpx.get(served + page.get_attribute("link[rel=icon]", "href"), timeout=10)
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    names = page.eval_on_selector_all("label[data-feature]", "labels => labels.map(l => l.dataset.feature)")
    assert names == [f.name for f in churn_model.schema.features]
    assert f"version {churn_model.version}" in page.inner_text("#model")

    categorical = next(f for f in churn_model.schema.features if f.kind == "categorical" and f.categories)
    numeric = next(f for f in churn_model.schema.features if f.kind == "numeric")
    page.select_option(f'select[name="{categorical.name}"]', categorical.categories[-1])
    page.fill(f'input[name="{numeric.name}"]', "7.5")
    page.fill("#api-key", API_KEY)
    page.click("#submit")
    page.wait_for_selector("#answer:not([hidden])")

    # What the page sent is what the form shows; the server's own answer to it must match the page.
    record = page.evaluate("record()")
    assert record[categorical.name] == categorical.categories[-1]
    assert record[numeric.name] == 7.5
    direct = httpx.post(served + "/predict", json=record, headers={"X-API-Key": API_KEY}, timeout=10).json()
    assert page.inner_text("#prediction") == str(direct["prediction"])
    assert page.inner_text("#prediction-target") == churn_model.schema.target
    assert page.inner_text("#answer-version") == churn_model.version
    shown = page.eval_on_selector_all(
        "#probabilities .bar", "rows => rows.map(r => [r.dataset.class, r.lastChild.textContent])"
    )
    expected = sorted(direct["probabilities"].items(), key=lambda item: -item[1])
    assert shown == [[label, f"{100 * p:.1f}%"] for label, p in expected]
    # Regression values are shown to four significant digits; labels and integers as they are.
    assert page.evaluate("[display(152.33421), display(0.000123456), display(3), display('yes')]") == [
        "152.3",
        "0.0001235",
        "3",
        "yes",
    ]
    assert failed == []  # no 404 for the icon or anything else the page loads
    page.close()


def test_a_missing_api_key_is_explained_not_answered(browser: Any, served: str) -> None:
    page = browser.new_page()
    page.goto(served + "/")
    page.wait_for_selector("#submit:not([disabled])")
    page.evaluate("sessionStorage.clear()")
    page.fill("#api-key", "")
    page.click("#submit")
    page.wait_for_selector("#status.error")
    assert "requires an API key" in page.inner_text("#status")
    assert page.is_hidden("#answer")
    assert "X-API-Key" in page.inner_text("#errors")
    page.close()


def test_a_refused_value_is_shown_next_to_its_field(browser: Any, served: str, churn_model: Trained) -> None:
    required = [f for f in churn_model.schema.features if not f.nullable and f.kind == "numeric"]
    assert required, "the simulated churn data should have numeric features that are never missing"
    page = browser.new_page()
    page.goto(served + "/")
    page.wait_for_selector("#submit:not([disabled])")
    page.fill(f'[name="{required[0].name}"]', "")  # sent as null, which a never-missing feature refuses
    page.fill("#api-key", API_KEY)
    page.click("#submit")
    page.wait_for_selector(f'label[data-feature="{required[0].name}"].invalid')
    assert "refused" in page.inner_text("#status")
    assert page.inner_text(f'label[data-feature="{required[0].name}"] .field-error')
    assert page.is_hidden("#answer")
    page.close()


def test_with_several_models_the_page_asks_the_one_chosen(
    browser: Any,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_uri: str,
    churn_model: Trained,
    diabetes_model: Trained,
) -> None:
    served = f"{churn_model.name},{diabetes_model.name}"
    with api_server(
        tmp_path_factory.mktemp("page-models"), mlflow_uri, churn_model.name, BITLOOP_API_MODELS=served
    ) as base:
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#model-choice:not([hidden])")
        options = page.eval_on_selector_all("#model-choice option", "options => options.map(o => o.value)")
        assert options == [churn_model.name, diabetes_model.name]
        page.select_option("#model-choice", diabetes_model.name)
        page.wait_for_function(
            f"document.querySelector('#model').innerText.startsWith({diabetes_model.name!r})"
        )
        page.wait_for_selector("#submit:not([disabled])")
        names = page.eval_on_selector_all(
            "label[data-feature]", "labels => labels.map(l => l.dataset.feature)"
        )
        assert names == [f.name for f in diabetes_model.schema.features]
        page.click("#submit")
        page.wait_for_selector("#answer:not([hidden])")
        assert page.inner_text("#answer-model") == diabetes_model.name
        assert page.url.endswith(f"?model={diabetes_model.name}")
        page.reload()  # the address keeps the choice
        page.wait_for_selector("#submit:not([disabled])")
        assert page.inner_text("#model").startswith(diabetes_model.name)
        assert page.eval_on_selector("#model-choice", "s => s.value") == diabetes_model.name
