"""What a study prints: its own lines on the terminal, libraries' INFO chatter kept off it."""

from __future__ import annotations

import logging
import sys


def quiet_libraries() -> None:
    """Optuna's 'A new study created' lines, MLflow's and alembic's database INFO lines stay off the terminal;
    warnings of the study's own modules (e.g. a tracking outage) reach stderr."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    study_log = logging.getLogger("study")
    if not study_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        study_log.addHandler(handler)
