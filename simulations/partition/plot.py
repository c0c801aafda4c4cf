"""The run's timeline as a picture (``--plot``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> None:
    """The timeline: splits and heals shaded, each terminal's acknowledged work as ticks, the
    CRDT updates each terminal lacked over time, how long each change took to reach each other
    terminal (steady ones against their bound), and the moment everything converged."""
    try:
        import matplotlib  # noqa: PLC0415 - only for --plot
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    terminals = list(report["terminals"])
    fig, (top, bottom, spread) = plt.subplots(3, 1, sharex=True, figsize=(11, 9), height_ratios=(1, 1.3, 1.1))
    events = report["events"]
    cut_at = None
    for e in events:
        if e["event"] == "split" and cut_at is None:
            cut_at = e["t"]
        elif e["event"] == "heal" and cut_at is not None:
            for ax in (top, bottom, spread):
                ax.axvspan(cut_at, e["t"], color="tab:red", alpha=0.12, lw=0)
            cut_at = None
        elif e["event"] in ("crash", "restart", "replaced"):
            top.annotate(e["event"], (e["t"], terminals.index(e["terminal"])), fontsize=7, color="tab:purple")
        elif e["event"] == "converged":
            for ax in (top, bottom, spread):
                ax.axvline(e["t"], color="tab:green", lw=1.5)
            bottom.annotate("converged", (e["t"], 0), fontsize=8, color="tab:green")
    rows = {tid: k for k, tid in enumerate(terminals)}
    top.scatter([t for t, _ in report["timeline"]["writes"]], [rows[tid] for _, tid in report["timeline"]["writes"]],
                marker="|", s=60, color="tab:blue")
    top.set_yticks(range(len(terminals)), terminals, fontsize=7)
    top.set_title(f"{report['scenario']} - seed {report['seed']}: acknowledged work per terminal "
                  "(shaded: network split)", fontsize=9)
    samples = report["timeline"]["divergence"]
    for tid in terminals:
        bottom.plot([t for t, _ in samples], [m.get(tid, 0) for _, m in samples], lw=1, label=tid)
    bottom.set_ylabel("CRDT updates missing")
    bottom.legend(fontsize=6, ncol=4)
    arrivals = report["timeline"]["propagation"]
    for steady, colour, label in ((False, "tab:gray", "other"), (True, "tab:blue", "steady (bounded)")):
        points = [(at, max(ms, 0.1)) for at, ms, s in arrivals if s is steady]
        spread.scatter([p[0] for p in points], [p[1] for p in points], s=4, color=colour, label=label)
    spread.axhline(report["propagation"]["steady"]["bound_ms"], color="tab:red", lw=1, ls="--", label="bound")
    spread.set_yscale("log")
    spread.set_ylabel("ms to reach a terminal")
    spread.set_xlabel("virtual seconds")
    spread.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
