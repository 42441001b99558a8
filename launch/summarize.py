"""A markdown table of finished runs: final validation NELBO, the training loss estimator's std at that evaluation
(eval/loss_estimator_std; n/a for runs that did not log it), median training tokens/s, mean HRM L-iterations.

  python -m launch.summarize runs/small_*
"""
import pathlib
import statistics

from dlm_jax import cli
from dlm_jax.training import metrics


def summarize(workdir: pathlib.Path) -> str:
  records = metrics.read_jsonl(workdir / "metrics.jsonl")
  evals = [r for r in records if "eval/nll_per_token" in r]
  speeds = [r["train/tokens_per_s"] for r in records if "train/tokens_per_s" in r][1:]  # first includes compile
  iters = [r["train/metric/hrm_l_iterations"] for r in records if "train/metric/hrm_l_iterations" in r]
  last = evals[-1] if evals else {}
  std = [r["eval/loss_estimator_std"] for r in records
         if "eval/loss_estimator_std" in r and r.get("step") == last.get("step")]
  return (f"| {workdir.name} | {last.get('step', 'n/a')} | {last.get('eval/nll_per_token', float('nan')):.4f} | "
          f"{last.get('eval/bits_per_token', float('nan')):.4f} | {f'{std[-1]:.4f}' if std else 'n/a'} | "
          f"{statistics.median(speeds) if speeds else float('nan'):,.0f} | "
          f"{f'{statistics.mean(iters):.2f}' if iters else 'n/a'} |")


def main(argv):
  print("| run | step | valid nats/token | bits/token | loss estimator std | train tokens/s (median) | mean L-iterations "
        "(HRM) |")
  print("|---|---|---|---|---|---|---|")
  for path in argv[1:]:
    print(summarize(pathlib.Path(path)))


if __name__ == "__main__":
  cli.run(main)
