"""Network in: the DICOM Upper Layer acceptor (PDUs, DIMSE commands, statuses),
one association per thread, and the listener (accept loop, limits, TLS).

Stage 1 of the flow: hands each received instance to the intake
(:mod:`daemon.intake`) and answers with a named DIMSE status.
"""
