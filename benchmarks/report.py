"""Regenerate the results table of benchmarks/README.md from benchmarks/results/*.json.

Every benchmark run writes one JSON file (:func:`fastunet.bench.results.write_result`); the
published ones are those in ``benchmarks/results/`` (``fastunet bench --out benchmarks/results``,
or copied there from ``./fastunet-bench-results``, the default folder). This script reads them
all and rewrites the part of ``benchmarks/README.md`` between the two marker lines, newest run
first. Run it after committing a new result::

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- results-table:begin -->"
END = "<!-- results-table:end -->"


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def load_results(results_dir: Path) -> list[dict]:
    """All benchmark result files, newest first (by the ``date`` they record, then by file
    name); the compile reports (``compile-*.json``) have their own table
    (``benchmarks/compile_report.py``)."""
    results = []
    for path in sorted(p for p in results_dir.glob("*.json") if not p.name.startswith("compile-")):
        data = json.loads(path.read_text())
        data["_file"] = path.name
        results.append(data)
    return sorted(results, key=lambda r: (str(r.get("date", "")), r["_file"]), reverse=True)


def render_table(results: list[dict]) -> str:
    """A Markdown table: one row per figure or ratio of each run (numbers and words; the lists and
    tables a result also holds stay in its file), its ``note`` first, newest run first."""
    if not results:
        return "No results recorded yet."
    lines = [
        "| date | benchmark | device | figure | value | file |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        head = f"| {r.get('date', '?')} | {r.get('benchmark', '?')} | {r.get('device', '?')} "
        rows = [(k, v) for section in ("figures", "ratios") for k, v in sorted((r.get(section) or {}).items())
                if not isinstance(v, (dict, list))]  # tables and lists (per layer, per style...) stay in the file
        if r.get("note"):
            rows.insert(0, ("note", r["note"]))
        for name, value in rows or [("-", "-")]:
            lines.append(f"{head}| {name} | {_fmt(value)} | {r['_file']} |")
    return "\n".join(lines)


def update_readme(readme: Path, table: str, *, begin: str = BEGIN, end: str = END, heading: str = "Results") -> None:
    """Replace what lies between the marker lines ``begin`` and ``end`` of ``readme`` with
    ``table`` (a section ``heading`` with the markers is appended when they are missing)."""
    text = readme.read_text()
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{begin}\n{end}\n"
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{begin}\n{table}\n{end}{after}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the results table of benchmarks/README.md "
                                     "from the JSON files in benchmarks/results/.")
    parser.add_argument("root", nargs="?", default=str(HERE), help="the benchmarks folder (default: this one)")
    root = Path(parser.parse_args(argv).root)
    update_readme(root / "README.md", render_table(load_results(root / "results")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
