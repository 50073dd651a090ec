"""The `check` report every dataset module returns: counts, a class histogram and the first problems found."""
from __future__ import annotations

import json
from pathlib import Path

MAX_PROBLEMS = 20   # enough to see a pattern, short enough to read


def new_report(dataset: str, root) -> dict:
    return {"dataset": dataset, "root": str(Path(root)), "ok": True, "counts": {}, "class_histogram": {},
            "problems": [], "problems_total": 0}


def add_problem(report: dict, message: str) -> None:
    report["ok"] = False
    report["problems_total"] += 1
    if len(report["problems"]) < MAX_PROBLEMS:
        report["problems"].append(str(message))


def format_report(report: dict) -> str:
    lines = [f"{report['dataset']} at {report['root']}: {'OK' if report['ok'] else 'PROBLEMS FOUND'}"]
    if report.get("generated"):
        lines.append(f"  generated data (marker {report['generated']}): runs on it are recorded as synthetic")
    for key, value in report["counts"].items():
        lines.append(f"  {key}: {value}")
    if report["class_histogram"]:
        lines.append("  class histogram:")
        for name, count in report["class_histogram"].items():
            lines.append(f"    {name}: {count}")
    if report["problems"]:
        shown = len(report["problems"])
        lines.append(f"  problems ({shown} of {report['problems_total']} shown):")
        lines.extend(f"    - {problem}" for problem in report["problems"])
    return "\n".join(lines)


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2)
