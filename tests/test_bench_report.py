import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_regenerated_newest_first(tmp_path):
    report = _report()
    (tmp_path / "results").mkdir()
    (tmp_path / "README.md").write_text("# B\n\nintro\n\n## Results\n\n<!-- results-table:begin -->\nold\n<!-- results-table:end -->\ntail\n")
    for name, date, value in (("a.json", "2026-01-01T00:00:00", 1.5), ("b.json", "2026-02-01T00:00:00", 2.25)):
        (tmp_path / "results" / name).write_text(
            json.dumps({"benchmark": "P1", "date": date, "device": "dev", "figures": {"ms": value}, "ratios": {"x": 2.0}})
        )
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "old" not in text and text.endswith("tail\n") and text.startswith("# B\n\nintro")
    assert text.index("b.json") < text.index("a.json")
    assert "| 2026-02-01T00:00:00 | P1 | dev | ms | 2.25 | b.json |" in text


def test_committed_readme_is_up_to_date(tmp_path):
    """benchmarks/README.md holds exactly the table regenerated from benchmarks/results."""
    report = _report()
    table = report.render_table(report.load_results(ROOT / "benchmarks" / "results"))
    assert table in (ROOT / "benchmarks" / "README.md").read_text()
