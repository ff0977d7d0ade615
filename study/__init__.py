"""The study driver: CLI, config, Tune/Optuna wiring, MLflow tracking and reports."""
