"""Sources: archives the node queries and retrieves from (priors, backfill).

``config.py`` holds the ``[[sources]]`` record and its parsing (read by
:mod:`daemon.settings`); ``base.py`` the :class:`~daemon.sources.base.Source`
interface and its records; ``dimse.py`` the DICOM client (C-FIND, C-GET,
C-MOVE), ``web.py`` the DICOMweb client (QIDO-RS, WADO-RS) and ``factory.py``
picks one for a configured source. This package imports no client library at
import time of ``config.py``, so loading the settings stays cheap.
"""
