"""The Ki-67 model: a cascaded multi-modal Transformer, its bundle and inference.

Its training is research tooling and lives in :mod:`lab.model`.
"""
