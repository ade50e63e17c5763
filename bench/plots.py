"""The PNG plots of bench/results/ (matplotlib, a dev extra): latency.png, the distribution of apply -> pod
Running per scenario and of signal -> isolation, Stockade beside its floor; scaling.png, the operator's RSS
and one more run's latency against the number of AgentRuns present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot(doc: Mapping[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        print("no plots: matplotlib is missing (pip install -e '.[dev]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    commit = str((doc.get("git") or {}).get("commit", ""))[:12]
    caption = f"{doc.get('timestamp', '')}, {commit}, {doc.get('machine', '')}"
    scenarios = [(f"{row['scenario']} ({row['count']} runs)", "apply -> pod Running (s)", row)
                 for row in doc.get("latency") or [] if row["stockade"].get("samples")]
    scenarios += [(f"quarantine, {row['runs_present']} AgentRun(s) present", "signal -> isolation (s)", row)
                  for row in doc.get("quarantine") or [] if row["stockade"].get("samples")]
    if scenarios:
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4.6 * len(scenarios), 3.8), squeeze=False)
        for ax, (title, xlabel, row) in zip(axes[0], scenarios, strict=True):
            for who, style in (("floor", "--"), ("stockade", "-")):
                values = sorted(row[who].get("samples") or [])
                if values:
                    ax.step(values, [(i + 1) / len(values) for i in range(len(values))], style, where="post",
                            label=f"{who} (p50 {row[who]['p50']:.3g} s, p99 {row[who]['p99']:.3g} s)")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("fraction of runs")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"Latency distributions, Stockade and its floor ({caption})", fontsize=8)
        fig.tight_layout()
        _save(fig, out / "latency.png")
        plt.close(fig)
        made.append("latency.png")
    points = doc.get("scaling") or []
    if points:
        fig, (rss, lat) = plt.subplots(1, 2, figsize=(9.2, 3.8))
        present = [p["runs_present"] for p in points]
        rss.plot(present, [p["rss_mb"] for p in points], "o-")
        rss.set_ylabel("operator RSS (MB)")
        lat.plot(present, [p["probe"]["p50"] for p in points], "o-", label="stockade p50")
        lat.plot(present, [p["probe"]["max"] for p in points], "x:", label="stockade max")
        lat.set_ylabel("one more run: apply -> pod Running (s)")
        lat.legend(fontsize=7)
        for ax in (rss, lat):
            ax.set_xlabel("AgentRuns present (Ready)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        fig.suptitle(f"Against the number of AgentRuns present ({caption})", fontsize=8)
        fig.tight_layout()
        _save(fig, out / "scaling.png")
        plt.close(fig)
        made.append("scaling.png")
    return made


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
