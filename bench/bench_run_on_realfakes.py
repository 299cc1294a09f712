"""A trained run (the demo's by default) scored on realfakes-dev's real deepfakes, end to end.

The videos are indexed as in `bench_realfakes.py` (FF++ layout through symbolic links, official splits,
the rest as `external`), preprocessed with the run's own preprocessing (`megatron evaluate --data`, cached)
and scored by the run's full model, at the decision rule it ships (reals called fake, fakes caught, the
uncertain share) and by rank (AUC, fakes caught at 5% false positives). The run never saw any of them, so
every video counts:

    python bench/bench_run_on_realfakes.py [--run runs/demo]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from bench_realfakes import DEFAULT_DATA, groups, realfakes_index
from common import REPO, print_table, write_results

from megatron_utils.datasets import write_index
from megatron_utils.models.checkpoint import load_decision, resolve_checkpoint
from megatron_utils.training.evaluate import binary_metrics, evaluate_on_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = write_index(realfakes_index(args.data), REPO / "cache" / "realfakes-index.csv")
    evaluation = evaluate_on_data(args.run, index, split=None)
    decision = load_decision(resolve_checkpoint(args.run)[1])  # the rule the run ships, chosen on its val
    scores = evaluation.scores
    rows = []
    for name, group in groups(scores, np.ones(len(scores), bool)):
        labels = (group["label"] == "fake").to_numpy(np.int64)
        metrics = binary_metrics(labels, group["probability"].to_numpy(), decision.threshold,
                                 decision.uncertain_below)
        rows.append({"group": name, "real": metrics["real"], "fake": metrics["fake"], "auc": metrics["auc"],
                     "auc_95": f"[{metrics['auc_low']:.2f}, {metrics['auc_high']:.2f}]",
                     "reals_called_fake": metrics["fpr"], "fakes_caught": metrics["tpr"],
                     "uncertain": metrics["uncertain"], "tpr_at_5fpr": metrics["tpr_at_5fpr"]})
    print_table(rows, f"{args.run} on realfakes-dev (full model, every video unseen); report "
                      f"{evaluation.out_dir / 'report.md'}")
    write_results(f"run-on-realfakes-{args.run.name}", {"run": str(args.run), "rows": rows,
                                                        "decision": decision.meaning(),
                                                        "report": str(evaluation.out_dir)})


if __name__ == "__main__":
    main()
