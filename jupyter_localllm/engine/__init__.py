"""The engine: the backend contract (``backend.py``) and its llama.cpp implementation
(``llama.py``, the only module touching llama_cpp), sampling parameters, text handling, the
continuous-batching scheduler, its runner and label scoring."""
