"""Reports: plots (matplotlib, PNG) of what quantization cost.

Reading only: nothing here changes a model. matplotlib is imported when a plot is drawn, with the ``Agg``
backend, so no display is needed.
"""

from lowbit.reports.mixed import plot_pareto, plot_sensitivity

__all__ = ["plot_sensitivity", "plot_pareto"]
