"""What every stage does first: load and validate params.yaml, turn known errors into clean exits."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.config import Params, load_params
from pipeline.errors import PipelineError


def run_stage(main: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Run a stage; a `PipelineError` (bad input, bad config) exits 2 with its message, not a traceback."""
    try:
        main(load_params(params_path))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
