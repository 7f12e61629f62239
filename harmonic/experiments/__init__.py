"""Experiments: one runner (train → export → infer → evaluate) behind three front ends.

``harmonic demo`` (baseline vs HarmonicDet on synthetic data), ``harmonic ablate`` (the paper's
Tables 3–5: which of its terms buys what) and ``scripts/reproduce.py`` (the demo's comparison on a
real dataset) all call :func:`harmonic.experiments.runner.run_experiment`.

Modules: ``runner`` (stages as subprocesses, exactly as a user runs them), ``recipe`` (the flags and
pre-flight checks demo and ablate share), ``stats`` (per-run metrics, image resamples and
seed-paired intervals), ``design`` (the statistical design: which contrasts get a verdict),
``pictures`` (figures), ``report`` (REPORT.md / ABLATION.md).
"""
