"""The suite's own set-up (seeds) and the packaging it relies on."""


def test_test_seeds_are_fixed_per_test_unless_asked_otherwise():
    from conftest import seed_for

    assert seed_for("tests/a.py::t", "") == seed_for("tests/a.py::t", "")
    assert seed_for("tests/a.py::t", "") != seed_for("tests/a.py::u", "")
    assert seed_for("tests/a.py::t", "1234") == 1234
    draws = {seed_for("tests/a.py::t", "random") for _ in range(4)}
    assert len(draws) > 1


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages (kernels/ maps to fastunet.kernels): a subpackage
    missing there would be left out of a non-editable install."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"fastunet", "fastunet.kernels"} | {
        "fastunet." + p.parent.name for p in (root / "fastunet").glob("*/__init__.py")
    }
    assert listed == found
