"""``python -m study.report --experiment NAME``: the study's table and figure from MLflow alone.

For studies run elsewhere: it needs only the tracking URI. It finds the experiment's latest
study parent run (or ``--parent-run``), reads its child runs, and prints and saves the same
table, best config, CSV and figure as ``study.run`` does at the end of a study.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from study import console
from study.answer import trial_queries
from study.parent_run import find_parent_run, objectives_from_param
from study.preflight.paths import check_tracking_uri
from study.results import records_from_mlflow
from trainables.errors import one_line
from trainables.metric_names import SEARCHED_PARAMS, TARGET_METRIC
from trainables.mlflow_store import TrackingError, client_for, resolve_tracking_uri

DEFAULT_OBJECTIVES = [{"metric": TARGET_METRIC, "mode": "max"}]


def build_parser() -> argparse.ArgumentParser:
    """The ``study.report`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0].split(": ", 1)[-1])
    p.add_argument("--experiment", required=True, help="MLflow experiment name (the study name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--parent-run", help="the study's parent run id (default: the latest study in the experiment)")
    p.add_argument("--output-dir", help="where to save the CSV and figure (default ./study_results/NAME/report)")
    return p


def objectives_of(parent) -> list[dict]:
    """The objectives recorded on the parent run (``metric:mode;...``), else the default."""
    return objectives_from_param(parent.data.params.get("objectives", "")) or DEFAULT_OBJECTIVES


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded artifact
    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_tracking_uri(uri)
        client = client_for(uri)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            raise TrackingError(f"no MLflow experiment {args.experiment!r} in {uri}")
        parent = find_parent_run(client, experiment.experiment_id, args.parent_run)
        if parent is None:
            raise TrackingError(f"experiment {args.experiment!r} holds no study parent run")
    except TrackingError as err:
        console.error(str(err))
        return 2
    except Exception as err:  # noqa: BLE001 - e.g. an unknown --parent-run id
        console.error(f"cannot read the study from {uri}: {one_line(err)}")
        return 2
    records = records_from_mlflow(client, experiment.experiment_id, parent.info.run_id)
    out = Path(args.output_dir or Path("study_results") / args.experiment / "report").resolve()
    space_params = [k for k in SEARCHED_PARAMS if k != "seed" and any(k in r.params for r in records)]
    answer_input = trial_queries(client, experiment.experiment_id, parent.info.run_id, records)
    summary = console.summarize(records, objectives_of(parent), out, f"{args.experiment}: mAP@100 per family vs ratio",
                                space_params, answer_input)
    console.say(f"Study {args.experiment} (parent run {parent.info.run_id}, {parent.info.status}), {len(records)} trials:\n")
    console.say(summary.text)
    console.say(f"\nMLflow UI: {console.mlflow_ui_command(uri, experiment.experiment_id, parent.info.run_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
