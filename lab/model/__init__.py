"""Training the Ki-67 model: cases and manifests, the feature cache, the training loop, bundles.

The network, its bundle and inference stay in :mod:`ai_core.model`.
"""
