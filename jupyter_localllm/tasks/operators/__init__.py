"""The semantic operators over DataFrames (LOTUS's ``sem_*``): :func:`sem_filter`,
:func:`sem_topk`, :func:`sem_join`, :func:`sem_agg` and :func:`sem_dedup`. Each is a short
builder of a :class:`~jupyter_localllm.session.executors.Plan` of batch requests (label
scoring or generation), so progress, cancel, errors in place, the result cache and the run log
come from the pipeline; ``df.llm.filter/topk/join/agg/dedup`` call them."""

from .agg import sem_agg
from .dedup import sem_dedup
from .filter import sem_filter
from .join import sem_join
from .topk import sem_topk

__all__ = ["sem_agg", "sem_dedup", "sem_filter", "sem_join", "sem_topk"]
