"""Two table1.py results, run by run: for each row both have, the paired difference B - A of every column.

table1.py pairs its ablation rows with its own "ours" row. Comparing two settings of the same row (the
default field against the SDF field, a new default against the old) needs two table1 runs with different
`--set`s, `--runs` and `--out`; this pairs their JSON files by row, prompt and seed and prints, per column,
the mean of A, the mean of B and the mean difference B - A with its standard error. Runs that one side
lacks, and columns a run has no value for (Chamfer of an empty field), are left out of that column.

    .venv/bin/python benchmarks/compare_tables.py OLD/table1.json NEW/table1.json [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# (key, where in a run's record, scale for printing, label)
COLUMNS = (
    ("color", "r_precision", 100.0, "R-Prec Color (points)"),
    ("geo", "r_precision", 100.0, "R-Prec Geo (points)"),
    ("geo_mesh", "r_precision", 100.0, "Geo, mesh (points)"),
    ("iou", "ground_truth", 1.0, "IoU"),
    ("iou_mesh_level", "ground_truth", 1.0, "IoU (mesh level)"),
    ("chamfer", "ground_truth", 1.0, "Chamfer"),
    ("delta_e", "ground_truth", 1.0, "ΔE"),
    ("generate_seconds", None, 1.0, "s / asset"),
)


def value(run: dict, key: str, where: str | None) -> float | None:
    source = run if where is None else (run.get(where) or {})
    v = source.get(key)
    return None if v is None else float(v)


def compare(a: dict, b: dict) -> dict[str, dict]:
    """Per row present in both: pairs, and per column (mean A, mean B, mean B - A, standard error)."""
    index_a = {(r["row"], r["prompt"], r["seed"]): r for r in a["runs"]}
    out: dict[str, dict] = {}
    for run in b["runs"]:
        other = index_a.get((run["row"], run["prompt"], run["seed"]))
        if other is not None:
            out.setdefault(run["row"], {"pairs": []})["pairs"].append((other, run))
    for entry in out.values():
        pairs = entry.pop("pairs")
        entry["pairs"] = len(pairs)
        for key, where, scale, _ in COLUMNS:
            values = [(value(x, key, where), value(y, key, where)) for x, y in pairs]
            values = [(x * scale, y * scale) for x, y in values if x is not None and y is not None]
            if len(values) < 2:
                entry[key] = None
                continue
            d = [y - x for x, y in values]
            entry[key] = {
                "a": statistics.fmean(x for x, _ in values),
                "b": statistics.fmean(y for _, y in values),
                "difference": statistics.fmean(d),
                "standard_error": statistics.stdev(d) / len(d) ** 0.5,
                "n": len(d),
            }
    return out


def markdown(result: dict[str, dict], a_name: str, b_name: str) -> str:
    lines = [f"B - A, run by run (same row, prompt and seed). A: {a_name}; B: {b_name}.", ""]
    for row, entry in result.items():
        lines += [f"**{row}**, {entry['pairs']} pairs", "", "| column | A | B | B - A (s.e.) |"]
        lines.append("|---|---:|---:|---:|")
        for key, _, scale, label in COLUMNS:
            c = entry[key]
            if c is None:
                lines.append(f"| {label} | — | — | — |")
                continue
            digits = 1 if scale > 1 or key in ("delta_e", "generate_seconds") else 3
            lines.append(
                f"| {label} | {c['a']:.{digits}f} | {c['b']:.{digits}f} | "
                f"{c['difference']:+.{digits}f} ({c['standard_error']:.{digits}f}) |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="table1.json of the reference (A)")
    parser.add_argument("b", type=Path, help="table1.json to compare with it (B)")
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args()
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (args.a, args.b))
    result = compare(a, b)
    if not result:
        raise SystemExit("the two tables have no run in common (same row, prompt and seed)")
    print(markdown(result, f"{args.a} {a.get('settings') or []}", f"{args.b} {b.get('settings') or []}"))
    if args.out:
        if args.out.exists():
            raise SystemExit(f"{args.out} exists; not overwriting it")
        report = {"benchmark": "compare_tables", "a": str(args.a), "b": str(args.b), "rows": result}
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
