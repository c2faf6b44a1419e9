"""Serve the retraining flow on a cron schedule (``schedule`` section of params.yaml).

    prefect server start &                                   # a local Prefect server (UI on :4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy

The process stays up and starts a flow run at each scheduled time; each run picks up the batches dropped
into ``schedule.incoming`` since the last one (one sub-folder per batch) and retrains only when the drift
check asks for it. One run at a time (``concurrency_limit=1``): a slow retrain is never overtaken.
"""

from __future__ import annotations

from molerd.pipeline import load_params
from flows.retrain import retrain


def deployment(params: dict, root: str = "."):
    """The scheduled deployment of :func:`flows.retrain.retrain` described by ``params["schedule"]``."""
    sched = params.get("schedule") or {}
    return retrain.to_deployment(
        name=sched.get("name", "molerd-nightly-retrain"),
        cron=sched.get("cron", "0 3 * * *"),
        concurrency_limit=1,
        parameters={"root": root, "incoming": sched.get("incoming"), "dvc_version": bool(sched.get("dvc_version", True)),
                    "dvc_push": bool(sched.get("dvc_push", False))},
        description="Validate new trace batches, retrain MoLE-RD per hardware when they drift, promote only a better release.",
    )


def main() -> None:
    from prefect import serve

    serve(deployment(load_params("params.yaml")))


if __name__ == "__main__":
    main()
