"""`voxnp inspect`: what a model directory holds, and what is wrong with it.

The counterpart of voxtral.c's weight inspector. It reads only the JSON parts
(params.json, tekken.json, the safetensors header) and the file size, so it runs
instantly on the 8.9 GB checkpoint, and it reports problems instead of raising:
tensors missing, of the wrong shape or dtype, unexpected extra tensors, a truncated
file, a header whose offsets overlap, a params.json that disagrees with the weights.
"""
from __future__ import annotations

import dataclasses
import json as jsonlib
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from .errors import VoxnpError
from .weights import Header, read_header

COMPONENTS = ("encoder", "adapter", "decoder", "embeddings")
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2,
               "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _offsets(entry) -> tuple[int, int] | None:
    """(begin, end) if the entry's data_offsets are well formed, else None."""
    try:
        begin, end = entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        return None
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
        return None
    return begin, end


def _natural_key(name: str):
    """'layers.2' before 'layers.10'."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _tensor_rows(header: Header) -> tuple[list[dict], list[str]]:
    """One row per tensor (component order, then natural name order), and entry problems."""
    from .weights import component_of

    rows, problems = [], []
    for name, e in header.entries.items():
        shape = e.get("shape") if isinstance(e, dict) else None
        offsets = _offsets(e) if isinstance(e, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            problems.append(f"tensor '{name}': bad shape {shape!r} in the header")
            shape = []
        if offsets is None:
            problems.append(f"tensor '{name}': bad data_offsets in the header")
            offsets = (0, 0)
        dtype = e.get("dtype", "?") if isinstance(e, dict) else "?"
        n_params = math.prod(shape)
        n_bytes = offsets[1] - offsets[0]
        if dtype in DTYPE_BYTES and n_bytes != n_params * DTYPE_BYTES[dtype]:
            problems.append(f"tensor '{name}': {n_bytes} bytes for {dtype} shape {shape}")
        rows.append({"name": name, "shape": shape, "dtype": dtype, "params": n_params,
                     "bytes": n_bytes, "component": component_of(name), "offsets": list(offsets)})
    rows.sort(key=lambda r: (COMPONENTS.index(r["component"]), _natural_key(r["name"])))
    return rows, problems


def _layout_problems(rows: list[dict], header: Header, path: Path) -> list[str]:
    """Truncation, trailing bytes, overlapping or gapped data ranges."""
    problems = []
    need = header.data_start + header.data_end
    if header.file_size < need:
        cut = [r["name"] for r in rows if header.data_start + r["offsets"][1] > header.file_size]
        problems.append(f"{path.name}: truncated: {header.file_size} bytes, the header needs {need} "
                        f"({len(cut)} tensors cut off, first '{min(cut, key=_natural_key)}')")
    elif header.file_size > need:
        problems.append(f"{path.name}: {header.file_size - need} bytes of trailing data after the last tensor")
    spans = sorted((r["offsets"][0], r["offsets"][1], r["name"]) for r in rows if r["bytes"] > 0)
    pos = 0
    for begin, end, name in spans:
        if begin < pos:
            problems.append(f"tensor '{name}': data [{begin}, {end}) overlaps the previous tensor")
        elif begin > pos:
            problems.append(f"tensor '{name}': {begin - pos} unused bytes before its data")
        pos = max(pos, end)
    return problems


def _totals(rows: list[dict]) -> tuple[dict, dict]:
    totals = {c: {"tensors": 0, "params": 0, "bytes": 0} for c in COMPONENTS}
    for r in rows:
        t = totals[r["component"]]
        t["tensors"] += 1
        t["params"] += r["params"]
        t["bytes"] += r["bytes"]
    total = {k: sum(t[k] for t in totals.values()) for k in ("tensors", "params", "bytes")}
    return totals, total


def _tekken_facts(tekken: dict) -> dict:
    config = tekken.get("config", {}) if isinstance(tekken, dict) else {}
    n_special = int(config.get("default_num_special_tokens", 1000))
    vocab = tekken.get("vocab") if isinstance(tekken, dict) else None
    n_regular = len(vocab) if isinstance(vocab, list) else 0
    return {"vocab_size": n_special + n_regular, "n_special_tokens": n_special,
            "n_regular_tokens": n_regular, "audio": tekken.get("audio", {}) if isinstance(tekken, dict) else {}}


def inspect_model(model_dir) -> dict:
    """Tensors, per-component totals, configuration and problems of a model directory.

    Returns {"path", "file", "tensors": [{name, shape, dtype, params, bytes, component,
    offsets}], "totals": {component: {tensors, params, bytes}}, "total": {...},
    "config": {audio, encoder, decoder, n_special_tokens, tokenizer} or None,
    "problems": [str], "kernels": {"active", "available"} (the compiled kernel set this
    process uses and those the CPU runs, cpu.py)}. Raises VoxnpError only for a missing directory or a
    safetensors header that cannot be read at all.
    """
    from .config import load_config
    from .tokenizer import read_tekken
    from .weights import WEIGHTS_FILE, expected_tensors, validate

    path = Path(str(model_dir))  # fire may pass a number
    if not path.is_dir():
        raise VoxnpError(f"{path}: model directory not found" if not path.exists() else f"{path}: not a directory")
    problems: list[str] = []
    tekken = None
    try:
        tekken = read_tekken(path / "tekken.json")
    except VoxnpError as e:
        problems.append(str(e))
    cfg = None
    try:
        cfg = load_config(path, tekken or {})
    except VoxnpError as e:
        problems.append(str(e))

    st_path = path / WEIGHTS_FILE
    rows: list[dict] = []
    header = None
    if st_path.is_file():
        header = read_header(st_path)
        rows, entry_problems = _tensor_rows(header)
        problems += entry_problems + _layout_problems(rows, header, st_path)
    else:
        problems.append(f"{st_path}: file not found")

    config = None
    if cfg is not None:
        config = dataclasses.asdict(cfg)
        if tekken is not None:
            config["tokenizer"] = _tekken_facts(tekken)
            n_regular = cfg.decoder.vocab_size - config["tokenizer"]["n_special_tokens"]
            if config["tokenizer"]["n_regular_tokens"] < n_regular:
                problems.append(f"tekken.json has {config['tokenizer']['n_regular_tokens']} regular tokens, "
                                f"params.json vocab_size {cfg.decoder.vocab_size} needs {n_regular}")
            tk_rate = config["tokenizer"]["audio"].get("sampling_rate", cfg.audio.sampling_rate)
            if tk_rate != cfg.audio.sampling_rate:
                problems.append(f"tekken.json audio sampling_rate {tk_rate} disagrees with "
                                f"params.json {cfg.audio.sampling_rate}")
        if header is not None:
            clean = {r["name"]: {"shape": r["shape"], "dtype": r["dtype"]} for r in rows}
            problems += validate(SimpleNamespace(entries=clean), cfg)  # reads only .entries
            expected = expected_tensors(cfg)
            extra = sorted((n for n in header.entries if n not in expected), key=_natural_key)
            problems += [f"unexpected tensor '{n}'" for n in extra]

    from . import cpu

    totals, total = _totals(rows)
    return {"kernels": {"active": cpu.active(), "available": cpu.available()},
            "path": str(path), "file": None if header is None else
            {"name": st_path.name, "bytes": header.file_size, "header_bytes": header.data_start - 8,
             "metadata": header.metadata},
            "tensors": rows, "totals": totals, "total": total, "config": config, "problems": problems}


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def _fmt_config(name: str, d: dict) -> str:
    return f"  {name}: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in d.items() if not isinstance(v, dict))


def format_report(info: dict, tensors: bool = True) -> str:
    """A readable report: tensor table (optional), totals, configuration, problems."""
    out = [f"model: {info['path']}"]
    k = info.get("kernels")
    if k is not None:
        out.append(f"kernels: {k['active']} (this CPU runs {', '.join(k['available'])}; VOXNP_CPU forces one)")
    f = info["file"]
    if f is not None:
        out.append(f"{f['name']}: {f['bytes']:,} bytes, {info['total']['tensors']} tensors, "
                   f"header {f['header_bytes']:,} bytes")
    if tensors and info["tensors"]:
        out.append("")
        out += _table([["tensor", "shape", "dtype", "bytes", "component"]] +
                      [[r["name"], "x".join(map(str, r["shape"])) or "scalar", r["dtype"],
                        f"{r['bytes']:,}", r["component"]] for r in info["tensors"]], right={3})
    out.append("")
    rows = [["component", "tensors", "params", "bytes"]]
    for c in COMPONENTS + ("total",):
        t = info["total"] if c == "total" else info["totals"][c]
        rows.append([c, str(t["tensors"]), f"{t['params']:,}", f"{t['bytes']:,}"])
    out += _table(rows, right={1, 2, 3})
    cfg = info["config"]
    if cfg is not None:
        out += ["", "configuration"]
        out += [_fmt_config(k, cfg[k]) for k in ("audio", "encoder", "decoder")]
        tk = cfg.get("tokenizer")
        if tk is not None:
            out.append(f"  tokenizer: vocab {tk['vocab_size']} ({tk['n_special_tokens']} special, "
                       f"{tk['n_regular_tokens']} regular)")
            out.append("  tekken audio: " + jsonlib.dumps(tk["audio"], sort_keys=True))
    out.append("")
    problems = info["problems"]
    if problems:
        out.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        out += [f"  {p}" for p in problems]
    else:
        out.append("no problems found")
    return "\n".join(out) + "\n"


def inspect_command(model, tensors=True, json=False):
    """List a model directory's tensors, totals, configuration and problems.

    Reads only the JSON parts and the header (instant on the 8.9 GB model). Exits
    with status 1 when a problem was found.

    Args:
      model: model directory (params.json, tekken.json, consolidated.safetensors)
      tensors: list every tensor (--no-tensors for totals, configuration and problems only)
      json: print the whole report as JSON instead of text
    """
    info = inspect_model(model)
    if json:
        if not tensors:
            info = {k: v for k, v in info.items() if k != "tensors"}
        sys.stdout.write(jsonlib.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write(format_report(info, tensors=bool(tensors)))
    sys.stdout.flush()
    if info["problems"]:
        raise SystemExit(1)
    return None
