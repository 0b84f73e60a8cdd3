"""dicom_out: DICOM objects out (SEG, SC, SR) and sending. Imports only ai_core result types."""
