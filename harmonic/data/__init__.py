"""Datasets: annotation readers and the synthetic generator (numpy), torch Dataset (``dataset``).

Importing this package must not import torch: the deploy side reuses the readers.
"""
