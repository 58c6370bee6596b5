"""Analysis and figures shared by the notebooks (matplotlib for static plots,
plotly for anything worth rotating). Notebooks call these; they hold no
plotting code of their own beyond a line or two."""

from physllm.analysis.training import loss_table, plot_length_sweep, plot_loss_curves, save_figure

__all__ = ["loss_table", "plot_length_sweep", "plot_loss_curves", "save_figure"]
