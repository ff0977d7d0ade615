"""How every report table and the headline write a number, an interval and a mean with its seed spread."""

from __future__ import annotations

MISSING = "-"


def number(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def interval(value, low, high, bound=None, defined=1.0) -> str:
    """`value [low, high]`; a statistic censored at the size range says so; a partly defined bootstrap says how much."""
    text = f"{bound} size range" if value is None and bound else number(value)
    if low is not None:
        text += f" [{number(low)}, {number(high)}]"
    return text + (f" (defined in {defined:.1%} of replicates)" if defined < 1 else "")


def spread(mean, std) -> str:
    """Mean ± sample standard deviation over seeds; the mean alone with one seed."""
    return MISSING if mean is None else f"{number(mean)} ± {number(std)}" if std is not None else number(mean)


def model_interval(value, low, high, bound=None) -> str:
    """A model estimate (study/stats/memorization_model.py): a 95% interval, the bracket a crossing lies in before
    the fit can place it, or a one-sided bound where the data do not bracket it."""
    if bound is None:
        return f"{number(value)} [{number(low)}, {number(high)}]"
    return {"bracket": f"{number(value)} (bracketed by {number(low)} and {number(high)})",
            "below": f"< {number(high)}", "above": f"> {number(low)}", "lower": f">= {number(low)}",
            "upper": f"<= {number(high)}"}.get(bound, MISSING)
