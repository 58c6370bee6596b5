"""Looking inside NGT: coordinates, masses and attention.

* :func:`kernel_weight_vs_distance`: the attention weight one key gets as it
  moves away from the query, under each kernel (the seed's rises: repulsive).
* :func:`pca_3d` / :func:`plot_coordinates_3d`: a Plotly 3D PCA of the token
  coordinates of a sentence, one frame per layer behind a slider.
* :func:`export_projector`: the same coordinates for TensorBoard's projector.
* :func:`plot_attention_maps`, :func:`plot_token_masses`, :func:`plot_aux_history`.

Traces come from :meth:`physllm.ngt.model.NGT.forward_with_trace`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from physllm.ngt.model import gaussian_scores, seed_scores


def kernel_weight_vs_distance(
    distances: torch.Tensor,
    kernel: str,
    gamma: float = 0.69,
    mass: float = 0.69,
    eps: float = 1e-6,
    n_near: int = 8,
    near: float = 1.0,
) -> torch.Tensor:
    """Weight a probe key at each distance gets from a query that also sees ``n_near`` keys at ``near``.

    One softmax row per distance: [probe at r, n_near keys at ``near``]; all masses equal.
    Returns the probe's weight (len(distances),).
    """
    r = distances.double()
    d2 = torch.cat([r[:, None] ** 2, torch.full((len(r), n_near), near**2, dtype=r.dtype)], dim=1)
    d2 = d2[None, None]  # (1, 1, R, 1 + n_near): one row per probe distance
    g = torch.tensor([gamma], dtype=r.dtype)
    if kernel == "seed":  # equal masses: m_i m_j = mass^2 folds into gamma
        s = seed_scores(d2, g * mass**2, torch.zeros(1, dtype=r.dtype), None, eps)
    else:  # log m_j is the same for every key: it drops out of the softmax
        s = gaussian_scores(d2, g, None)
    return s.softmax(-1)[0, 0, :, 0]


def plot_kernel_weights(distances: torch.Tensor | None = None, gamma: float = 0.69, **kwargs):
    """Matplotlib figure: probe-key weight against distance, seed vs gaussian kernel."""
    import matplotlib.pyplot as plt

    r = torch.linspace(0.05, 4.0, 200) if distances is None else distances
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for kernel, label in (
        ("seed", "seed: $-\\gamma m_i m_j/(d^2+\\epsilon)$"),
        ("gaussian", "gaussian: $-\\gamma d^2 + \\log m_j$"),
    ):
        w = kernel_weight_vs_distance(r, kernel, gamma=gamma, **kwargs)
        ax.plot(r.numpy(), w.numpy(), label=label)
    ax.set_xlabel("distance of the probe key from the query, $|u_i - u_j|$")
    ax.set_ylabel("attention weight on the probe")
    ax.set_title("the seed's kernel repels, the gaussian attracts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def pca_3d(points: torch.Tensor) -> torch.Tensor:
    """points (N, C) -> (N, 3): projection on the top three principal components."""
    x = points.double() - points.double().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # rows of v: principal directions
    k = min(3, v.size(0))
    out = x @ v[:k].T
    if k < 3:  # fewer points or dims than 3: pad with zeros
        out = torch.cat([out, out.new_zeros(out.size(0), 3 - k)], dim=1)
    return out.float()


def plot_coordinates_3d(
    z_layers: torch.Tensor,
    tokens: Sequence[str],
    mass: torch.Tensor | None = None,
    title: str = "token coordinates (PCA), by layer",
):
    """Plotly figure: z_layers (L+1, T, C) for one sentence, a slider over layers.

    Each layer is projected on its own top three principal components; points
    are labelled by token, sized by mass, joined in sentence order.
    """
    import plotly.graph_objects as go

    labels = [repr(t)[1:-1] or " " for t in tokens]
    sizes = [6.0] * len(tokens)
    if mass is not None:
        m = mass.float()
        sizes = (4 + 14 * (m - m.min()) / (m.max() - m.min() + 1e-9)).tolist()
    fig = go.Figure()
    n = z_layers.size(0)
    for layer in range(n):
        p = pca_3d(z_layers[layer]).numpy()
        hover = [
            f"{i}: {lab}" + ("" if mass is None else f"<br>m={float(mass[i]):.3f}")
            for i, lab in enumerate(labels)
        ]
        fig.add_trace(
            go.Scatter3d(
                x=p[:, 0],
                y=p[:, 1],
                z=p[:, 2],
                mode="lines+markers+text",
                text=labels,
                hovertext=hover,
                hoverinfo="text",
                marker=dict(size=sizes, color=list(range(len(labels))), colorscale="Viridis"),
                line=dict(color="rgba(120,120,120,0.4)", width=2),
                name=f"layer {layer}",
                visible=layer == 0,
            )
        )
    steps = [
        dict(
            method="update",
            args=[{"visible": [i == layer for i in range(n)]}, {"title": f"{title}: z{layer}"}],
            label="z0 (input)" if layer == 0 else f"after {layer}",
        )
        for layer in range(n)
    ]
    fig.update_layout(
        title=f"{title}: z0",
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="coordinates "))],
        scene=dict(xaxis_title="PC1", yaxis_title="PC2", zaxis_title="PC3"),
        height=600,
        margin=dict(l=0, r=0, t=40, b=0),
        showlegend=False,
    )
    return fig


def export_projector(
    log_dir: str | os.PathLike,
    z_layers: torch.Tensor,
    tokens: Sequence[str],
    mass: torch.Tensor | None = None,
) -> Path:
    """Write z_layers (L+1, T, C) for TensorBoard's projector (one tensor per layer).

    View with ``tensorboard --logdir <log_dir>``, tab "Projector". The folder is
    replaced: a rerun must not stack its tensors onto the last run's.
    """
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    writer = SummaryWriter(str(log_dir))
    header = ["token", "position"] + ([] if mass is None else ["mass"])
    meta = [
        [repr(t)[1:-1] or "<space>", str(i)] + ([] if mass is None else [f"{float(mass[i]):.4f}"])
        for i, t in enumerate(tokens)
    ]
    for layer in range(z_layers.size(0)):
        writer.add_embedding(
            z_layers[layer].float(),
            metadata=meta,
            metadata_header=header,
            tag=f"coordinates_layer{layer}",
            global_step=layer,
        )
    writer.close()
    return log_dir


def plot_attention_maps(
    attn: torch.Tensor, tokens: Sequence[str], layers: Sequence[int] | None = None, head: int = 0
):
    """Matplotlib grid: attn (L, H, T, T) of one sequence, one panel per layer for ``head``."""
    import matplotlib.pyplot as plt

    layers = list(range(attn.size(0))) if layers is None else list(layers)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.4), squeeze=False)
    labels = [repr(t)[1:-1] or " " for t in tokens]
    for ax, layer in zip(axes[0], layers):
        ax.imshow(attn[layer, head].float().numpy(), cmap="magma", vmin=0)
        ax.set_title(f"layer {layer}, head {head}")
        ticks = range(0, len(labels), max(1, len(labels) // 16))
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=7)
        ax.set_xlabel("key j")
    axes[0][0].set_ylabel("query i")
    fig.tight_layout()
    return fig


def plot_token_masses(masses: torch.Tensor, vocab: Sequence[str], top: int = 20):
    """Matplotlib bar chart of the heaviest and lightest vocabulary entries (masses (V,))."""
    import matplotlib.pyplot as plt

    order = torch.argsort(masses, descending=True).tolist()
    top = min(top, len(order) // 2 or 1)
    picked = order[:top] + order[-top:]
    labels = [repr(vocab[i])[1:-1] or " " for i in picked]
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(picked)), 3.5))
    colors = ["C3"] * top + ["C0"] * (len(picked) - top)
    ax.bar(range(len(picked)), [float(masses[i]) for i in picked], color=colors)
    ax.set_xticks(range(len(picked)), labels, fontsize=8)
    ax.set_ylabel("mass m = softplus(E_mass)")
    ax.set_title(f"heaviest {top} (red) and lightest {top} (blue) tokens")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def plot_aux_history(histories: dict[str, list[dict]], keys: Sequence[str]):
    """Matplotlib: each ``aux_<key>`` logged during training, one panel per key, one line per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, history in histories.items():
            rows = [h for h in history if f"aux_{key}" in h]
            if rows:
                ax.plot([h["step"] for h in rows], [h[f"aux_{key}"] for h in rows], label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


__all__ = [
    "export_projector",
    "kernel_weight_vs_distance",
    "pca_3d",
    "plot_attention_maps",
    "plot_aux_history",
    "plot_coordinates_3d",
    "plot_kernel_weights",
    "plot_token_masses",
]
