"""Synthetic studies: anatomy, tumours, vendor tag profiles and DICOM writing for demos and tests."""
