"""Worker side of scoreaug-study: everything that runs inside one trial.

Nothing here imports the driver (`study`); a Ray Train worker only needs this package.
"""
