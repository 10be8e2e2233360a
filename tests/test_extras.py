"""Provider SDKs are optional extras: a missing one is one clear error naming the extra.

An SDK is made "not installed" by putting None in ``sys.modules`` (Python then refuses to
import it), and the provider module is imported afresh.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import rxcontext
from rxcontext import MissingDependency, RxContextError
from rxcontext.providers.factory import model_from_spec

CASES = [
    ("anthropic", "rxcontext.providers.anthropic", "AnthropicModel", "anthropic", "anthropic"),
    ("google.genai", "rxcontext.providers.gemini", "GeminiModel", "google-genai", "gemini"),
    ("openai", "rxcontext.providers.openai", "OpenAIModel", "openai", "openai"),
]


def _without(monkeypatch: pytest.MonkeyPatch, sdk: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, sdk, None)
    if sdk == "google.genai":
        monkeypatch.setitem(sys.modules, "google", None)
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(("sdk", "module", "name", "package", "extra"), CASES)
def test_a_missing_sdk_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, sdk: str, module: str, name: str, package: str, extra: str
) -> None:
    _without(monkeypatch, sdk, module)
    with pytest.raises(MissingDependency) as caught:
        getattr(importlib.import_module("rxcontext.providers"), name)
    error = caught.value
    assert isinstance(error, RxContextError) and isinstance(error, ImportError)
    assert error.package == package and error.extra == extra
    assert f"the {package} package is not installed" in str(error)
    assert error.hint == f"pip install 'rxcontext[{extra}]'"
    assert error.hint in str(error)  # seen from Python too, not only the CLI's hint line
    assert isinstance(error.__cause__, ImportError)


def test_model_from_spec_names_the_extra_before_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "anthropic", "rxcontext.providers.anthropic")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)  # the package is the first problem
    with pytest.raises(MissingDependency, match="anthropic package is not installed"):
        model_from_spec("anthropic:claude-sonnet-4-5")


def test_the_cli_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rxcontext.cli import main

    _without(monkeypatch, "google.genai", "rxcontext.providers.gemini")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    status = main(["chat", "--db", str(tmp_path / "x.db"), "--model", "gemini:flash", "hi"])
    err = capsys.readouterr().err.splitlines()
    assert status == 1 and len(err) == 2
    assert err[0].startswith("rxcontext: error: the google-genai package is not installed")
    assert err[1] == "hint: pip install 'rxcontext[gemini]'"


def test_the_core_imports_no_optional_sdk() -> None:
    code = (
        "import sys, rxcontext, rxcontext.providers, rxcontext.cli;"
        "print(sorted(m for m in ('anthropic', 'google.genai') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert rxcontext.MissingDependency is MissingDependency


def test_prices_and_tracing_name_their_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    from rxcontext import Usage, cost
    from rxcontext.tracing import Tracing

    monkeypatch.setitem(sys.modules, "genai_prices", None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert not cost.available()
    with pytest.raises(MissingDependency) as prices:
        cost.price(Usage.of(1, 1), "gpt-4o-mini", "openai")
    assert prices.value.hint == "pip install 'rxcontext[prices]'"
    assert prices.value.hint in str(prices.value)
    with pytest.raises(MissingDependency) as otel:
        Tracing()
    assert otel.value.hint == "pip install 'rxcontext[otel]'"
