"""`scale.py report`: the latest results of <out>/results.jsonl as the markdown tables of
bench/RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchkit import fmt_ms
from scale_stores import KINDS


def latest(out: Path) -> list[dict[str, Any]]:
    p = out / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def report(out: Path, since: str | None = None) -> str:
    rows = [r for r in latest(out) if since is None or r.get("started", "") >= since]
    sessions = [r for r in rows if r.get("part") == "session"]
    lines: list[str] = []
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in sessions:
        by.setdefault((r["kind"], r["runs"]), []).append(r)
    order = sorted(by, key=lambda k: (k[1], KINDS.index(k[0])))
    lines.append(
        "| store | runs | idle round p50 / p90 ms | full-listing round p50 ms | one new point p50 / p90 ms "
        "| backfill s | points/s | backfill peak RSS MiB | daemon CPU % (60 s, --interval 1) "
        "| daemon peak RSS MiB | load (1-min) start → end |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        for r in by[key]:
            b, i, d = r.get("backfill", {}), r.get("inproc", {}), r.get("daemon", {})
            idle, one, full = (
                i.get("idle", {}).get("wall", {}),
                i.get("one_point", {}).get("wall", {}),
                i.get("full", {}).get("wall", {}),
            )
            srv = f" (+{d['serving_cpu_pct']} % server)" if d.get("serving_cpu_pct") is not None else ""
            lines.append(
                f"| {key[0]} | {key[1]:,} | {fmt_ms(idle.get('p50'))} / {fmt_ms(idle.get('p90'))} | "
                f"{fmt_ms(full.get('p50'))} | {fmt_ms(one.get('p50'))} / {fmt_ms(one.get('p90'))} | "
                f"{b.get('wall_s', '—')} | {b.get('points_per_s') or 0:,} | {b.get('max_rss_mb', '—')} | "
                f"{d.get('cpu_pct', '—')}{srv} | {d.get('vm_hwm_mb', '—')} | "
                f"{r['load_start'][0]} → {r['load_end'][0]} |"
            )
    lines.append("")
    lines.append(
        "Read counters of the last round of each sort (runs_listed / runs_read / histories / points / requests / rows):"
    )
    lines.append("")
    lines.append("| store | runs | idle | one new point | full listing |")
    lines.append("|---|---|---|---|---|")

    def rc(x: dict[str, Any] | None) -> str:
        if not x:
            return "—"
        return "/".join(
            str(x.get(k, 0)) for k in ("runs_listed", "runs_read", "histories", "points", "requests", "rows")
        )

    for key in order:
        r = by[key][-1]
        i = r.get("inproc", {})
        lines.append(
            f"| {key[0]} | {key[1]:,} | {rc(i.get('idle', {}).get('read'))} | "
            f"{rc(i.get('one_point', {}).get('read'))} | {rc(i.get('full', {}).get('read'))} |"
        )
    for r in rows:
        if r.get("part") == "latency":
            lines.append("")
            lines.append(
                f"Latency, log → visible in Aim, file store of {r['runs']:,} runs, events on "
                f"(`sync --interval 10`), Aim content ok: {r.get('aim_content', {}).get('ok')}:"
            )
            lines.append("")
            lines.append("| writer period | points | p50 ms | p95 ms | max ms | rounds (full) | load start → end |")
            lines.append("|---|---|---|---|---|---|---|")
            for ph in r.get("phases", []):
                lat = ph["latency_s"]
                lines.append(
                    f"| {ph['period_s'] * 1000:.0f} ms (achieved {ph['achieved_period_s'] * 1000:.0f}) "
                    f"| {ph['points']} | {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p95'))} | "
                    f"{fmt_ms(lat.get('max'))} | {ph['rounds']} ({ph['full_rounds']}) | "
                    f"{ph['load_start'][0]} → {ph['load_end'][0]} |"
                )
        if r.get("part") == "history-options":
            lines.append("")
            lines.append(
                f"History options (server over sqlite, {r['runs']:,}-run store, RUNNING run's 50,000-point "
                f"`loss`, {r['reps']} requests each, interleaved; load {r['load_start'][0]} → "
                f"{r['load_end'][0]}):"
            )
            lines.append("")
            lines.append("| request | points returned | wall p50 / p90 ms | server CPU mean ms | client CPU mean ms |")
            lines.append("|---|---|---|---|---|")
            for name, c in r["cases"].items():  # CPU from /proc in 10 ms ticks: means, not medians
                lines.append(
                    f"| {name} | {c['points_returned']:,} | {fmt_ms(c['wall']['p50'])} / "
                    f"{fmt_ms(c['wall']['p90'])} | {fmt_ms(c['server_cpu']['mean'])} | "
                    f"{fmt_ms(c['client_cpu']['mean'])} |"
                )
    return "\n".join(lines)
