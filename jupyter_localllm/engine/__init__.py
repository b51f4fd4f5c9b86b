"""The engine: the backend contract (``backend.py``) and its llama.cpp implementation
(``llama.py``, the only module touching llama_cpp), sampling parameters, grammar checks
(``gbnf.py``, ``grammar.py``), memory estimates (``memory.py``), text handling, the
continuous-batching scheduler, its runner and label scoring."""
