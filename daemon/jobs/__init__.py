"""Jobs: the queue in the database, the worker processes that claim it, and
what one job does (:mod:`daemon.jobs.pipeline` → :mod:`daemon.jobs.chain`:
ai_core, then dicom_out, then the outbox).

Stage 3 of the flow; the only stage that imports torch (in worker processes).
"""
