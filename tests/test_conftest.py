"""The suite's own set-up: seeds."""


def test_test_seeds_are_fixed_per_test_unless_asked_otherwise():
    from conftest import seed_for

    assert seed_for("tests/a.py::t", "") == seed_for("tests/a.py::t", "")
    assert seed_for("tests/a.py::t", "") != seed_for("tests/a.py::u", "")
    assert seed_for("tests/a.py::t", "1234") == 1234
    draws = {seed_for("tests/a.py::t", "random") for _ in range(4)}
    assert len(draws) > 1
