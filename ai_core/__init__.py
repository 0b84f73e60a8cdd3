"""ai_core: images in, numbers and arrays out. Imports neither daemon nor dicom_out."""
