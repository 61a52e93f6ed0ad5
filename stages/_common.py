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


def search_in_stage(stage: str, params: Params, trainable, space, spec, tags: dict[str, str], finish: Callable) -> None:
    """Run a Ray Tune search as a DVC stage: Ray up (local or cluster), the stage's MLflow run as the trials'
    parent (the interrupted run's, when resuming), `finish(results)` inside that run, Ray down in any case."""
    from pipeline import tracking
    from pipeline.search.ray_runtime import start_ray, stop_ray
    from pipeline.search.tuning import plan_search, run_search

    runtime = start_ray(params.ray, tracking.repo_root())
    try:
        plan = plan_search(runtime, spec)
        section = params.model_dump(include={stage, "ray"})
        with tracking.stage_run(stage, params.tracking.experiment, section, resume_run_id=plan.parent_run_id) as run:
            if plan.resume and run is not None:
                tracking.close_stale_children(run.info.run_id)
            results = run_search(
                trainable, space, runtime, spec, plan, tracking_uri=tracking.tracking_uri(),
                experiment=params.tracking.experiment, parent_run_id=run.info.run_id if run else None,
                tags={"dvc_stage": stage, "search": spec.name, **tags},
            )
            finish(results)
    finally:
        stop_ray()
