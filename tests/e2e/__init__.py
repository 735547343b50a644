"""The real-ComfyUI end-to-end tests. A package, so that its conftest.py is imported as e2e.conftest
and does not shadow tests/conftest.py, which the unit tests import as `conftest`."""
