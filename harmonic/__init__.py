"""HarmonicDet: detectors whose scores rank their boxes by quality.

This top-level package imports nothing heavy: the deploy side (``harmonic.runtime``,
``harmonic.evaluation``, the annotation readers) must work without torch.
"""

__version__ = "0.1.0"
