"""replay.png: launch success, the 2018 diagnostic (does the hub answer, does the proxy), hub
RSS and normal-call latency of both hubs on shared axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

#: pixels of replay.png (inches x DPI)
SIZE_INCHES = (10, 10)
DPI = 100
# guarded wide underneath, stock narrow on top: where both are equal, both stay visible
STYLES = {
    "stock": {"color": "tab:red", "linewidth": 1.4, "zorder": 3},
    "guarded": {"color": "tab:blue", "linewidth": 2.8, "alpha": 0.8, "zorder": 2},
}
SUCCESS_WINDOW_SECONDS = 10
# where each hub's failed launches are marked in the top panel
FAILED_MARK_Y = {"stock": -2, "guarded": 4}


# the diagnostic strip: not probed, not answered, answered
ANSWERS = ListedColormap(["white", "tab:red", "tab:green"])


def plot(
    runs: dict[str, dict[str, Any]], timeline: Any, path: Path, headline: str | None = None
) -> None:
    figure, (success, probes, rss, latency) = plt.subplots(
        4,
        1,
        sharex=True,
        figsize=SIZE_INCHES,
        dpi=DPI,
        layout="constrained",
        gridspec_kw={"height_ratios": [3, 1.4, 2, 2]},
    )
    for name, run in runs.items():
        t = [s["t"] for s in run["samples"]]
        style = {**STYLES.get(name, {}), "label": name}
        success.plot(t, launch_success(run["samples"]), **style)
        # each failed launch, where it ended: an outage shows even where few launches end
        failed = [x["ended"] for x in run.get("launches", ()) if not x["ready"]]
        if failed:
            y = FAILED_MARK_Y[name] if name in FAILED_MARK_Y else 0
            success.scatter(failed, [y] * len(failed), marker="x", s=18, color=style.get("color"),
                            label=f"{name}: failed launch", zorder=4)  # fmt: skip
        rss.plot(t, [s["rss_mib"] for s in run["samples"]], **style)
        p99 = [
            s["api_p99_ms"] if s["api_p99_ms"] is not None else float("nan") for s in run["samples"]
        ]
        latency.plot(t, p99, **style)
    _diagnostic_strip(probes, runs, timeline)
    for axes in (success, rss, latency):
        axes.axvspan(*timeline.flood, color="tab:orange", alpha=0.15, label="culler flood")
        if getattr(timeline, "drops", True):
            axes.axvspan(*timeline.watch_drops, color="tab:gray", alpha=0.1, hatch="//",
                         fill=False, label="watch drops")  # fmt: skip
        axes.axvspan(*timeline.latency_burst, color="tab:purple", alpha=0.12,
                     label="apiserver latency")  # fmt: skip
        axes.axvline(timeline.leave, color="dimgray", linestyle="--", linewidth=1,
                     label="users leave")  # fmt: skip
        axes.grid(alpha=0.3)
    success.set_ylabel(f"launch success %\n({SUCCESS_WINDOW_SECONDS} s window)")
    success.set_ylim(-6, 105)
    rss.set_ylabel("hub RSS MiB")
    latency.set_ylabel("normal API call\np99 ms (per second)")
    latency.set_yscale("log")
    latency.set_xlabel("seconds into the timeline")
    latency.set_xlim(0, timeline.seconds)
    title = "binderhub-guard replay: the 2018 mybinder outage, stock vs guarded"
    figure.suptitle(title + (f"\n{headline}" if headline else ""))
    figure.legend(
        *success.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize="small"
    )
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _diagnostic_strip(axes: Any, runs: dict[str, dict[str, Any]], timeline: Any) -> None:
    """Each second, per hub: did the hub answer its probe, did the proxy (/user/doesntexist);
    green answered, red not. 2018's symptom: the proxy green, the hub red."""
    rows, labels = [], []
    for name, run in runs.items():
        for key, what in (("hub_answered", "hub"), ("proxy_answered", "proxy")):
            rows.append([_answer(s.get(key)) for s in run["samples"]])
            labels.append(f"{name} {what}")
    seconds = max((len(row) for row in rows), default=0)
    axes.imshow(
        rows,
        aspect="auto",
        cmap=ANSWERS,
        vmin=0,
        vmax=2,
        interpolation="nearest",
        extent=(0, seconds, len(rows) - 0.5, -0.5),
    )
    axes.set_yticks(range(len(rows)), labels, fontsize="small")
    axes.set_ylabel("answers probe\n(each second)")
    for edge in timeline.flood:
        axes.axvline(edge, color="tab:orange", linewidth=1.5)


def _answer(value: bool | None) -> int:
    return 0 if value is None else 2 if value else 1


def launch_success(samples: list[dict[str, Any]]) -> list[float]:
    """Percent of launches that became ready among those ended in the trailing window."""
    values = []
    for i in range(len(samples)):
        window = samples[max(0, i + 1 - SUCCESS_WINDOW_SECONDS) : i + 1]
        ready = sum(s["launches_ready"] for s in window)
        ended = ready + sum(s["launches_failed"] for s in window)
        values.append(100 * ready / ended if ended else float("nan"))
    return values
