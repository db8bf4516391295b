"""The noise schedule's chart for the Forward tab: abar_t and the SNR against t, with a marker at t.

Drawn once with matplotlib into a palette image; moving the marker paints into that cached array,
so a slider update costs no redraw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .schedule import NoiseSchedule


@dataclass
class ScheduleChart:
    """abar_t and SNR over t, drawn once; a marker for the current t is painted on a copy.

    Redrawing a matplotlib figure costs ~50 ms; painting a line into a cached array costs well
    under 1 ms. The chart is kept as a 64-colour palette image because PNG-encoding it is most of
    a slider update: ~2 ms as palette indices against ~6 ms as RGB.
    """

    indices: np.ndarray        # (h, w) uint8 palette indices
    palette: list[int]         # flat [r, g, b, ...] for PIL; the last MARKERS entries are the marker colours
    x_px: np.ndarray           # pixel column of every t = 0..T
    abar_px: np.ndarray        # pixel row of the abar curve at every t
    snr_px: np.ndarray         # pixel row of the SNR curve at every t (t = 0 clipped to the top)
    top: int
    bottom: int

    MARKERS = ((220, 40, 40), (31, 119, 180), (255, 127, 14))  # the t line, the abar dot, the SNR dot

    def marked(self, t: int) -> Image.Image:
        idx = self.indices.copy()
        line, abar_dot, snr_dot = range(len(self.palette) // 3 - 3, len(self.palette) // 3)
        x = int(self.x_px[t])
        idx[self.top:self.bottom, max(0, x - 1):x + 1] = line
        for y, colour in ((self.abar_px[t], abar_dot), (self.snr_px[t], snr_dot)):
            y = int(y)
            idx[max(self.top, y - 3):y + 4, max(0, x - 3):x + 4] = colour
        im = Image.fromarray(idx, "P")
        im.putpalette(self.palette)
        return im


def schedule_chart(schedule: NoiseSchedule, width: int = 480, height: int = 270) -> ScheduleChart:
    """The chart with text large enough to read when a phone shows it ~360 px wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = schedule.T
    ts = np.arange(T + 1)
    abar = schedule.alpha_bars.numpy()
    snr = schedule.snr().numpy()
    snr[0] = snr[1]  # infinite at t = 0; drawn at the t = 1 value
    dpi = 100
    fig, ax = plt.subplots(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax.plot(ts, abar, color="#1f77b4", label=r"$\bar\alpha_t$ (signal kept)")
    ax.set_xlim(0, T)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("t", fontsize=13)
    ax.set_ylabel(r"$\bar\alpha_t$", color="#1f77b4", fontsize=14)
    ax.tick_params(labelsize=12)
    ax2 = ax.twinx()
    ax2.semilogy(ts, snr, color="#ff7f0e", label="SNR")
    ax2.set_ylabel("SNR (log)", color="#ff7f0e", fontsize=13)
    ax2.tick_params(labelsize=12)
    lo, hi = snr[1:].min(), snr[1:].max()
    ax2.set_ylim(lo / 2, hi * 2)
    ax.grid(alpha=0.3)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=12)
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    h = image.shape[0]
    # matplotlib's pixel origin is bottom-left; arrays count rows from the top
    pa = ax.transData.transform(np.stack([ts, abar], 1))
    ps = ax2.transData.transform(np.stack([ts, snr], 1))
    (_, y0), (_, y1) = ax.transAxes.transform([(0, 0), (0, 1)])
    plt.close(fig)
    colours = 64 - len(ScheduleChart.MARKERS)
    base = Image.fromarray(image).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = base.getpalette()[:3 * colours]
    palette += [0, 0, 0] * (colours - len(palette) // 3)  # pad when the chart has fewer colours
    palette += [v for c in ScheduleChart.MARKERS for v in c]
    return ScheduleChart(np.asarray(base, dtype=np.uint8), palette, pa[:, 0].round(), h - pa[:, 1].round(),
                         h - ps[:, 1].round(), int(h - y1), int(h - y0))
