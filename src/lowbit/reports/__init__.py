"""Reports: plots (matplotlib, PNG) and a self-contained HTML report (with the same content as JSON) of what
quantization cost.

Reading only: nothing here changes a model. matplotlib is imported when a plot is drawn, with the ``Agg``
backend, so no display is needed.
"""

from lowbit.reports.html import build_report, render_html, write_report
from lowbit.reports.layers import layer_report
from lowbit.reports.mixed import plot_pareto, plot_sensitivity

__all__ = ["plot_sensitivity", "plot_pareto", "layer_report", "build_report", "render_html", "write_report"]
