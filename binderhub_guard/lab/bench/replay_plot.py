"""replay.png: launch success, hub RSS and normal-call latency of both hubs on shared axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402

#: pixels of replay.png (inches x DPI)
SIZE_INCHES = (10, 8)
DPI = 100
# guarded wide underneath, stock narrow on top: where both are equal, both stay visible
STYLES = {
    "stock": {"color": "tab:red", "linewidth": 1.4, "zorder": 3},
    "guarded": {"color": "tab:blue", "linewidth": 2.8, "alpha": 0.8, "zorder": 2},
}
SUCCESS_WINDOW_SECONDS = 10


def plot(runs: dict[str, dict[str, Any]], timeline: Any, path: Path) -> None:
    figure, (success, rss, latency) = plt.subplots(
        3, 1, sharex=True, figsize=SIZE_INCHES, dpi=DPI, layout="constrained"
    )
    for name, run in runs.items():
        t = [s["t"] for s in run["samples"]]
        style = {**STYLES.get(name, {}), "label": name}
        success.plot(t, launch_success(run["samples"]), **style)
        rss.plot(t, [s["rss_mib"] for s in run["samples"]], **style)
        p99 = [
            s["api_p99_ms"] if s["api_p99_ms"] is not None else float("nan") for s in run["samples"]
        ]
        latency.plot(t, p99, **style)
    for axes in (success, rss, latency):
        axes.axvspan(*timeline.flood, color="tab:orange", alpha=0.15, label="culler flood")
        axes.axvspan(*timeline.watch_drops, color="tab:gray", alpha=0.1, hatch="//",
                     fill=False, label="watch drops")  # fmt: skip
        axes.axvspan(*timeline.latency_burst, color="tab:purple", alpha=0.12,
                     label="apiserver latency")  # fmt: skip
        axes.axvline(timeline.leave, color="dimgray", linestyle="--", linewidth=1,
                     label="users leave")  # fmt: skip
        axes.grid(alpha=0.3)
    success.set_ylabel(f"launch success %\n({SUCCESS_WINDOW_SECONDS} s window)")
    success.set_ylim(-5, 105)
    rss.set_ylabel("hub RSS MiB")
    latency.set_ylabel("normal API call\np99 ms (per second)")
    latency.set_yscale("log")
    latency.set_xlabel("seconds into the timeline")
    latency.set_xlim(0, timeline.seconds)
    figure.suptitle("binderhub-guard replay: the 2018 mybinder outage, stock vs guarded")
    figure.legend(
        *success.get_legend_handles_labels(), loc="outside lower center", ncols=6, fontsize="small"
    )
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def launch_success(samples: list[dict[str, Any]]) -> list[float]:
    """Percent of launches that became ready among those ended in the trailing window."""
    values = []
    for i in range(len(samples)):
        window = samples[max(0, i + 1 - SUCCESS_WINDOW_SECONDS) : i + 1]
        ready = sum(s["launches_ready"] for s in window)
        ended = ready + sum(s["launches_failed"] for s in window)
        values.append(100 * ready / ended if ended else float("nan"))
    return values
