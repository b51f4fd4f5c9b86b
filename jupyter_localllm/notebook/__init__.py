"""The notebook front-end: magics, the ``df.llm``/``s.llm`` accessors, ``%config LocalLLM``,
prompt templates, widget panels and the progress sinks that draw them. It uses the public API
and the session only."""
