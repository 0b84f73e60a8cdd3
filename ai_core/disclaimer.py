"""The research-use notice, defined once for every package and every output.

ki67node ships demo weights trained on synthetic data; every report, DICOM
object, JSON answer and command says so. :data:`DISCLAIMER` is the phrase
(inside a sentence or a JSON field), :data:`DISCLAIMER_SENTENCE` the same
words as a sentence of their own. ai_core is the lowest layer, so dicom_out
and daemon import it from here.
"""

from __future__ import annotations

DISCLAIMER = "research use only, not for diagnostic use"
DISCLAIMER_SENTENCE = DISCLAIMER.capitalize() + "."  # "Research use only, not for diagnostic use."
