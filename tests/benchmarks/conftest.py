"""Tests of the scripts in benchmarks/ (tiny synthetic settings), single-threaded like the rest."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):  # tests/conftest.py's one_thread for every benchmark-script test module
    yield
