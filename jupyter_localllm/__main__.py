"""``python -m jupyter_localllm``: see :mod:`jupyter_localllm.cli`."""

from .cli import main

raise SystemExit(main())
