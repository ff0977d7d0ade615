"""After the study: EDM-shaped commands on what a study trained (`python -m study.after generate|fid|memorization`).

The top room: it reads models from trial folders or MLflow (tracking/models.py), and measures with the trainer's
own sampler, FID and memorization code, so its numbers equal the trial's on the same samples.
"""
