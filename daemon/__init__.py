"""ki67node daemon: the DICOM service, its database, jobs and operations.

Research use only, not for diagnostic use.
"""

from __future__ import annotations

__version__ = "0.1.0"
