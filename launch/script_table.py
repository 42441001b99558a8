"""The §10.5 table of launch/compare_script_aware.sh from its results.jsonl: one row per variant, the mean over seeds
of each metric with every seed's value in brackets.

  python -m launch.script_table runs/script_aware/results.jsonl
"""
import collections
import json
import sys

METRICS = (("nelbo_english", "NELBO English"), ("nelbo_hindi", "NELBO Hindi"), ("nelbo_hinglish", "NELBO Hinglish"),
           ("script_error_rate_deva", "script err. Hindi prompts"), ("script_error_rate_latn", "Hinglish prompts"),
           ("script_error_rate_mixed", "mixed prompts"), ("judge_nll_deva", "judge NLL Hindi"),
           ("judge_nll_latn", "judge NLL Hinglish"), ("judge_nll_mixed", "judge NLL mixed"))


def table(rows) -> str:
  values = collections.defaultdict(dict)  # (variant, metric) -> {seed: value}
  variants = []
  for r in rows:
    values[(r["variant"], r["metric"])][r["seed"]] = r["value"]
    if r["variant"] not in variants:
      variants.append(r["variant"])
  lines = ["| variant | " + " | ".join(name for _, name in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
  for variant in variants:
    cells = []
    for key, _ in METRICS:
      by_seed = values.get((variant, key), {})
      if not by_seed:
        cells.append("")
        continue
      percent = key.startswith("script")
      fmt = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
      mean = sum(by_seed.values()) / len(by_seed)
      cells.append(f"{fmt(mean)} ({', '.join(fmt(by_seed[s]) for s in sorted(by_seed))})")
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2:
    raise SystemExit("usage: python -m launch.script_table RESULTS.jsonl")
  with open(argv[1], encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  print("NELBO in nats/char (token-level masked NELBO, 500 windows x 8 time draws); script error = (mixed-script + "
        "off-script words) / words of 48 samples at 32 steps; judge NLL: the AR arm's nats/char on the generated "
        "characters. Mean over seeds (each seed's value).")
  print(table(rows))


if __name__ == "__main__":
  main(sys.argv)
