"""Training the bundled U-Net: label maps, synthesised appearance, the model card, held-out cases.

The backends and post-processing that run in the node stay in :mod:`ai_core.segmentation`.
"""
