"""Checks of the kind end-to-end run against the Kubeflow Pipelines API (``kfp.Client``).

``wait-run``: wait for a run to finish, then require that it succeeded *and* that its deploy
step ran (a run whose gate refused the model also succeeds, without deploying anything).
``check-recurring``: require an enabled recurring run of that name on that cron.

Usage (from the repository root, with the project installed)::

    python scripts/kfp_e2e.py wait-run --host http://localhost:8888 --run-id RUN_ID
    python scripts/kfp_e2e.py check-recurring --host http://localhost:8888 \\
        --name fraud-training-monthly --cron '0 0 2 1 * *'

Exit status 0 when the check holds, 1 when it does not (the reason on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

#: The pipeline step that must have run for a model to be deployed.
DEPLOY_TASK = "deploy"
SUCCEEDED = "SUCCEEDED"


class CheckError(RuntimeError):
    """The run or the recurring run is not what the end-to-end run expects."""


def _tasks(run: Any) -> list[Any]:
    details = getattr(run, "run_details", None)
    return list(getattr(details, "task_details", None) or [])


def check_run(run: Any) -> str:
    """The run's one-line summary when it succeeded and deployed; else :class:`CheckError`."""
    state = str(getattr(run, "state", None) or "UNKNOWN").upper()
    tasks = _tasks(run)
    if state != SUCCEEDED:
        failed = [
            f"{task.display_name} ({task.state})"
            for task in tasks
            if str(task.state or "").upper() not in (SUCCEEDED, "SKIPPED", "")
        ]
        error = getattr(run, "error", None)
        detail = f"; tasks: {', '.join(failed)}" if failed else ""
        detail += f"; error: {getattr(error, 'message', error)}" if error else ""
        raise CheckError(f"run {run.run_id} finished {state}{detail}")
    deploys = [task for task in tasks if task.display_name == DEPLOY_TASK]
    if not any(str(task.state or "").upper() == SUCCEEDED for task in deploys):
        raise CheckError(
            f"run {run.run_id} succeeded but its {DEPLOY_TASK!r} step did not run: the gate "
            "refused the model (see the run's report artifact)"
        )
    return f"run {run.run_id} {state}, {DEPLOY_TASK} step {SUCCEEDED}"


def check_recurring(recurring_runs: Iterable[Any], name: str, cron: str) -> str:
    """The enabled recurring run named ``name`` on ``cron``; :class:`CheckError` if none."""
    seen = []
    for job in recurring_runs:
        if job.display_name != name:
            continue
        schedule = getattr(getattr(job, "trigger", None), "cron_schedule", None)
        actual = getattr(schedule, "cron", None)
        status = str(getattr(job, "status", "") or "").upper()
        if actual == cron and status == "ENABLED":
            return f"recurring run {name!r} ({job.recurring_run_id}) enabled on {cron!r} (UTC)"
        seen.append(f"cron {actual!r}, status {status or 'unknown'}")
    found = "; ".join(seen) if seen else "none of that name"
    raise CheckError(f"no enabled recurring run {name!r} on {cron!r}: found {found}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait-run", help="wait for a run; require success and a deployment")
    wait.add_argument("--host", required=True)
    wait.add_argument("--run-id", required=True)
    wait.add_argument("--timeout", type=int, default=3600, help="seconds (default 3600)")
    recurring = sub.add_parser("check-recurring", help="require an enabled recurring run")
    recurring.add_argument("--host", required=True)
    recurring.add_argument("--name", required=True)
    recurring.add_argument("--cron", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one check against the API; 0 when it holds."""
    from fraud_detection.pipeline.client import make_client

    args = parse_args(argv)
    client = make_client(args.host)
    try:
        if args.command == "wait-run":
            print(f"waiting up to {args.timeout} s for run {args.run_id}", flush=True)
            client.wait_for_run_completion(args.run_id, timeout=args.timeout, sleep_duration=15)
            print(check_run(client.get_run(args.run_id)))
        else:
            response = client.list_recurring_runs(page_size=100)
            print(check_recurring(response.recurring_runs or [], args.name, args.cron))
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
