"""``python -m jupyter_localllm``: the ``jupyter-localllm`` command (see
:mod:`jupyter_localllm.cli`)."""

from .cli import main

raise SystemExit(main(prog_name="python -m jupyter_localllm"))
