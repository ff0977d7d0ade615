"""Every PNG of a study's report, drawn as it would appear in a paper.

Each function takes plain dicts (None values are skipped), writes PNGs into `folder` and returns their paths.
Colour always means arm, the same in every figure; a second capacity changes linestyle and marker. base.py holds
what they all share (pyplot setup, size axis, save); scaling.py the main figure, curves.py the figures against
training time, compare.py the side-by-side ones.
"""

from study.report.figures.compare import arms_figure, nearest_figure, pareto_figure, size_figures
from study.report.figures.curves import curves_figure, loss_gap_curves_figure
from study.report.figures.design import capacity_figure, design_figure, n50_kimg_figure
from study.report.figures.scaling import scaling_figure

__all__ = ["arms_figure", "capacity_figure", "curves_figure", "design_figure", "loss_gap_curves_figure", "n50_kimg_figure", "nearest_figure",
           "pareto_figure", "scaling_figure", "size_figures"]
