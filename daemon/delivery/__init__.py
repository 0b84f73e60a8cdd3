"""Delivery: results staged once in the outbox (one row per destination) and
sent with retries by one thread per destination (DICOM C-STORE, folder, STOW-RS).

Stage 4 of the flow.
"""
