"""Turn one benchmark run into ratios against each group's baseline provider."""

from __future__ import annotations

# The provider every other provider in a group is compared with.
BASELINES = ("reference", "floor", "plain", "fedavg")


def ratio_table(rows, baselines=BASELINES) -> str:
    """rows: (group, provider, min seconds). Markdown with time and ratio per row."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for group, provider, seconds in rows:
        groups.setdefault(group or "", []).append((provider, seconds))
    lines = [
        "| group | provider | min time (ms) | time / baseline | baseline / time |",
        "|---|---|---:|---:|---:|",
    ]
    for group in sorted(groups):
        entries = groups[group]
        base = next((s for p, s in entries if p in baselines), None)
        for provider, seconds in sorted(entries, key=lambda e: -e[1]):
            ratio = f"{seconds / base:.3f}" if base else "n/a"
            speedup = f"{base / seconds:.1f}x" if base else "n/a"
            lines.append(f"| {group} | {provider} | {seconds * 1e3:.2f} | {ratio} | {speedup} |")
    return "\n".join(lines) + "\n"
