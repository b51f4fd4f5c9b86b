"""Contextual calibration of label scores (Zhao et al. 2021, "Calibrate Before Use").

A model's label scores lean towards some labels whatever the text says (labels seen more
often, or near the end of the examples). Scoring a content-free input (``"N/A"``) in the same
prompt shows that lean: its label distribution. Dividing each row's label probabilities by
the mean of those distributions (subtracting its log from the scores) takes the lean out.

:func:`classify <jupyter_localllm.classify>` asks for it with ``calibrate=``: the content-free
prompts ride along as extra rows of the label-scoring
:class:`~jupyter_localllm.session.pipeline.BatchRequest` (``calibration``), and the session
hands their scores and each row's to :func:`contextual_calibration` (the request's
``calibrate``) before it makes the row's result.
"""

from __future__ import annotations

import numpy as np

__all__ = ["contextual_calibration"]


def contextual_calibration(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``scores`` (label log-probabilities, one row per text or a single row) calibrated by
    the ``reference`` rows (the content-free prompts' scores, ``[prompt, label]``): minus the
    log of their mean label distribution. No reference rows: ``scores`` as they are."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        return scores
    dist = np.exp(reference - np.logaddexp.reduce(reference, axis=1, keepdims=True))
    return scores - np.log(dist.mean(axis=0))
