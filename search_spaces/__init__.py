"""What a study searches: define-by-run Optuna spaces, named transform sets and data-limited regimes."""
