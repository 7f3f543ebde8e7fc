"""Helpers shared by the benchmarks: memory readings, tables, JSON results."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def memory_mb() -> dict:
    """Current and peak resident memory of this process, in MB (Linux /proc)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return {"rss": round(fields.get("VmRSS", 0), 1), "anon": round(fields.get("RssAnon", 0), 1),
            "file": round(fields.get("RssFile", 0), 1), "peak": round(fields.get("VmHWM", 0), 1)}


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine()}


def print_table(rows: list[dict], header: bool = True) -> None:
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    if header:
        print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).rjust(widths[k]) for k in keys), flush=True)


def row_recorder(rows: list, results: dict):
    """A function that adds one measure to a printed table (rows) and to the JSON results."""
    def row(name, value, unit, note=""):
        rows.append({"measure": name, "value": f"{value:.3g}" if isinstance(value, float) else value,
                     "unit": unit, "note": note})
        results[name] = value
    return row


def write_json(path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), **data}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def options(argv: list[str], doc: str, flags: tuple[str, ...]) -> dict:
    """`--flag VALUE` pairs of argv as keyword arguments (the leading dashes dropped);
    --help or -h prints doc and exits."""
    if "--help" in argv or "-h" in argv:
        print(doc)
        raise SystemExit(0)
    return {flag[2:]: argv[argv.index(flag) + 1] for flag in flags if flag in argv}
