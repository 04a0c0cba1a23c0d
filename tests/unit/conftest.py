"""The tiny-model fixtures live in tests/conftest.py (the robustness tier uses them too);
`build_tiny` is re-exported here for the unit tests that `from conftest import build_tiny`."""

from tests.conftest import build_tiny  # noqa: F401
