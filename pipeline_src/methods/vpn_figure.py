"""A VPN run's figure of its learned noise scale (vpn_sigma.png, the paper's Figure 1), drawn by the
training job from the trained generator."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline_src.fileio import save_figure  # noqa: E402


def _as_image(t):
    """CHW tensor -> array matplotlib shows: HxW for one channel, HxWx3 for colour."""
    t = t.clamp(0, 1)
    return t[0].numpy() if t.shape[0] == 1 else t[:3].permute(1, 2, 0).numpy()


def plot_sigma(path: Path, x, y, sigma, noisy, c: float) -> Path:
    """Figure 1 of the VPN paper, as rows of (image, sigma heatmap, one noisy draw)."""
    rows = len(x)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 2.8 * rows + 0.6), squeeze=False)
    for i in range(rows):
        gray = "gray" if x.shape[1] == 1 else None
        sig = sigma[i].mean(0).numpy()
        axes[i, 0].imshow(_as_image(x[i]), cmap=gray, vmin=0, vmax=1)
        axes[i, 0].set_title(f"test image (label {int(y[i])})")
        heat = axes[i, 1].imshow(sig, cmap="magma")
        axes[i, 1].set_title(rf"noise scale $\sigma$ (mean {sig.mean():.3g})")
        fig.colorbar(heat, ax=axes[i, 1], fraction=0.046, pad=0.04)
        axes[i, 2].imshow(_as_image(noisy[i]), cmap=gray, vmin=0, vmax=1)
        axes[i, 2].set_title(r"$x + \sigma z$, one draw (shown in [0, 1])")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(rf"VPN: learned noise scale $\sigma = |g(x + c\,y/(C-1))|$, $c$ = {c:g}")
    fig.tight_layout()
    save_figure(fig, path)
    return path
