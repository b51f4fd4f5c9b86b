"""The public tasks: ``generate``/``generate_parallel``/``quick_llama`` (generation),
``classify`` (classification), ``extract`` (extraction) and ``explore`` (exploration), each a
short builder of a batch request for the session's pipeline."""
