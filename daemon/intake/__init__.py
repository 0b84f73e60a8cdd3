"""Intake: a received instance made durable (spool + rows), series completeness,
the series filter and its decision (which queues a job for a qualifying series).

Stage 2 of the flow. Runs in the serve process beside the listener, so it
never imports torch or the job workers.
"""
