"""A Ray Tune search as a DVC stage: Ray up (local or cluster), the stage's MLflow run as the parent of every trial
(the interrupted run's, when resuming), the stage's outputs written inside that run, Ray down in any case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pipeline import tracking
from pipeline.config import Params
from pipeline.search.ray_runtime import start_ray, stop_ray
from pipeline.search.space import SearchSpace
from pipeline.search.tuning import SearchSpec, plan_search, run_search

Outcome = TypeVar("Outcome")


def run_stage_search(
    stage: str,
    params: Params,
    trial: Callable[..., None],
    context: Any,
    space: SearchSpace,
    spec: SearchSpec,
    tags: dict[str, str],
    summarise: Callable[[Any], Outcome],
    write: Callable[[Outcome], None],
) -> Outcome:
    """Run `trial(config, context=context)` over `space` and return `summarise(results)`; `write(outcome)` (the stage's
    outputs) runs inside the stage's MLflow run, so what it logs lands there."""
    from ray import tune

    runtime = start_ray(params.ray, tracking.repo_root())
    try:
        plan = plan_search(runtime, spec)
        section = params.model_dump(include={stage, "ray"})
        with tracking.stage_run(stage, params.tracking.experiment, section, resume_run_id=plan.parent_run_id) as run:
            if plan.resume and run is not None:
                tracking.close_stale_children(run.info.run_id)
            tracking.set_tags({"ray_cluster": runtime.address or "local"})  # where the trials ran
            results = run_search(
                tune.with_parameters(trial, context=context),
                space,
                runtime,
                spec,
                plan,
                parent_run=tracking.run_ref(run.info.run_id) if run is not None else None,
                experiment=params.tracking.experiment,
                tags={"dvc_stage": stage, "search": spec.name, **tags},
            )
            outcome = summarise(results)
            write(outcome)
    finally:
        stop_ray()
    return outcome
