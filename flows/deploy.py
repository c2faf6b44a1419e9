"""Serve the retraining flow on a cron schedule (``schedule`` section of params.yaml).

    prefect server start &                                   # a local Prefect server (UI on :4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy

The process stays up and runs a flow run at each scheduled time; new batches dropped into the configured
``schedule.incoming`` folder are picked up by that run.
"""

from __future__ import annotations

from molerd.pipeline import load_params
from flows.retrain import retrain


def main() -> None:
    params = load_params("params.yaml")
    sched = params.get("schedule") or {}
    retrain.serve(
        name=sched.get("name", "molerd-nightly-retrain"),
        cron=sched.get("cron", "0 3 * * *"),
        parameters={"root": ".", "incoming": sched.get("incoming"), "dvc_version": bool(sched.get("dvc_version", True)),
                    "dvc_push": bool(sched.get("dvc_push", False))},
    )


if __name__ == "__main__":
    main()
