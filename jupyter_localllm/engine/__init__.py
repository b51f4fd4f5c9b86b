"""The engine: llama.cpp backend (``llama.py``, the only module touching llama_cpp),
sampling parameters, text handling, the continuous-batching scheduler and its runner."""
