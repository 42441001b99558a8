"""A deadline-bounded suite of measurement stages: what one 10-minute call of a lent GPU runs (`launch/gpu_suite.py`).

A call is a list of `Stage`s in priority order and one deadline (its budget from the call's start). Each stage is a
subprocess with its own cap:

* a stage starts only when at least `min_s` (the least it needs to produce its figures) is left before the deadline,
  else it is *skipped* with the reason;
* it runs at most min(cap_s, time left - grace_s): past that its process group gets SIGTERM (the trainer checkpoints
  and stops), `grace_s` later SIGKILL, and it is *cut*; whatever it finished by then is still collected;
* as it ends, one JSON line (`StageResult`: status ok | failed | cut | skipped, wall seconds, the metrics its
  collector reads from the files it wrote) is appended to OUT/results.jsonl and OUT/summary.md is rewritten, so a
  call killed from outside still returns every finished stage.

Stages are subprocesses, not threads, because only a process can be cut mid-compile, and because each then starts with
the accelerator's memory free (a process keeps its allocator's pool). The runner itself imports no JAX, so it holds no
device memory while the stages run.

Bulky work (checkpoints, token caches, profiler traces, full logs) lives in the call's work folder, outside OUT; OUT
receives results.jsonl, summary.md, suite.log (the tail of each stage's log) and the few small files stages declare as
`artifacts` (copied flat), never more than `MAX_OUT_FILES` files: the device tool returns at most 8 files, at most 2
folders deep, 16 MiB each.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

MAX_OUT_FILES = 8
MAX_OUT_FILE_BYTES = 16 * 2**20
LOG_TAIL_BYTES = 256 * 2**10  # of each stage's log, into OUT/suite.log
OUT_FILES = ("results.jsonl", "summary.md", "suite.log")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One measurement. `command` is an argv whose items may hold `{work}` (this stage's own folder in the call's work
  folder) and `{root}` (the call's work folder, where earlier stages' folders are); a leading "python" runs under the
  suite's own interpreter. `collect(context)` returns the stage's metrics (a JSON-able dict) from the files it
  wrote; it is called after a cut or a failure too, and should return what it can find. `artifacts` are file names
  in the stage's folder copied into OUT when present (a collector may write them). `env` values may hold `{work}` and
  `{root}` too. `needs`: files that must exist before it starts (corpora), else it is skipped saying which."""
  name: str
  command: tuple[str, ...]
  cap_s: float
  min_s: float = 0.0
  collect: Callable[["StageContext"], dict] | None = None
  artifacts: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()
  needs: tuple[str, ...] = ()
  what: str = ""
  show: tuple[str, ...] | None = None  # the metrics summary.md's table shows (None: every scalar; (): none)


@dataclasses.dataclass(frozen=True)
class StageContext:
  """What a collector is given: the stage's folder and log, the wall-clock time (time.time()) it was launched at,
  and how it ended."""
  work: pathlib.Path
  log: pathlib.Path
  launched_at: float
  status: str


@dataclasses.dataclass
class StageResult:
  stage: str
  status: str  # ok | failed | cut | skipped
  what: str
  command: str
  cap_s: float
  started_at_s: float | None = None  # seconds after the call's start
  wall_s: float | None = None
  rc: int | None = None
  reason: str = ""
  metrics: dict = dataclasses.field(default_factory=dict)
  show: list | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class Suite:
  """Runs `stages` in order under one deadline (`budget_s` from construction) and writes OUT (module docstring).

  `stamp` (commit, date, device, ...) is added to every results.jsonl line; `render(results)` returns summary.md's
  text (default: `summary_markdown`); `on_result(suite, result)` runs after each stage (e.g. to add the device the
  first stage found to the stamp of the rest); `cwd`: where the stages run (None: the runner's working directory)."""

  def __init__(self, call: str, stages, out_dir, work_dir, budget_s: float, *, grace_s: float = 15.0,
               stamp: dict | None = None, render: Callable | None = None, env: dict | None = None,
               on_result: Callable | None = None, echo: Callable[[str], None] = print, cwd=None):
    self.call, self.stages = call, list(stages)
    names = [s.name for s in self.stages]
    if len(set(names)) != len(names):
      raise ValueError(f"stage names repeat: {names}")
    artifacts = [a for s in self.stages for a in s.artifacts]
    if len(OUT_FILES) + len(artifacts) > MAX_OUT_FILES or len(set(artifacts)) != len(artifacts):
      raise ValueError(f"OUT would hold {len(OUT_FILES) + len(artifacts)} files ({list(OUT_FILES) + artifacts}); "
                       f"the device returns at most {MAX_OUT_FILES}, each name once.")
    self.out, self.work = pathlib.Path(out_dir), pathlib.Path(work_dir)
    self.budget_s, self.grace_s = float(budget_s), float(grace_s)
    self.stamp = dict(stamp or {})
    self.render = render or summary_markdown
    self.env = dict(os.environ if env is None else env)
    self.echo = echo
    self.on_result = on_result
    self.cwd = cwd  # the stages' working directory (None: the runner's)
    self.t0 = time.monotonic()
    self.results: list[StageResult] = []
    self._stopped_by = None  # the signal that stopped the runner
    self.out.mkdir(parents=True, exist_ok=True)
    self.work.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
      (self.out / name).unlink(missing_ok=True)

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def run(self) -> list[StageResult]:
    """Runs every stage. A SIGTERM or SIGINT to the runner (the device tool's own timeout) cuts the running stage as
    its deadline would and skips the rest, so that the lines written so far stay complete."""
    def stop(signum, _):
      self._stopped_by = signum

    previous = {}
    try:
      for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: no handlers
      pass
    try:
      for stage in self.stages:
        result = self._run_stage(stage)
        self._record(result)
        if self.on_result is not None:
          self.on_result(self, result)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    return self.results

  def _run_stage(self, stage: Stage) -> StageResult:
    work = self.work / stage.name
    fill = lambda text: text.replace("{work}", str(work)).replace("{root}", str(self.work))
    argv = [sys.executable if (i == 0 and a == "python") else fill(a) for i, a in enumerate(stage.command)]
    result = StageResult(stage.name, "skipped", stage.what, " ".join(stage.command), stage.cap_s,
                         show=None if stage.show is None else list(stage.show))
    left = self.left() - self.grace_s
    missing = [n for n in stage.needs if not pathlib.Path(n).is_file()]
    if self._stopped_by is not None:
      result.reason = f"the suite was stopped (signal {self._stopped_by})"
    elif missing:
      result.reason = f"missing {', '.join(missing)}"
    elif left < stage.min_s:
      result.reason = (f"needs at least {stage.min_s:.0f} s, {max(left, 0):.0f} s left before the deadline "
                       f"({self.budget_s:.0f} s budget)")
    if result.reason:
      self.echo(f"[{self.elapsed():6.1f} s] {stage.name}: skipped, {result.reason}")
      return result
    limit = min(stage.cap_s, left)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    result.started_at_s = round(self.elapsed(), 2)
    self.echo(f"[{self.elapsed():6.1f} s] {stage.name}: started (at most {limit:.0f} s; {self.left():.0f} s left)")
    start, launched_at = time.monotonic(), time.time()
    with open(log, "wb") as f:
      env = {**self.env, **{k: fill(v) for k, v in stage.env}}
      # Its own process group (so that a cut reaches its children: pytest's workers), in the runner's session (so
      # that whatever ends the runner's session ends it too).
      proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, process_group=0, cwd=self.cwd)
      while True:
        try:
          result.rc = proc.wait(timeout=0.1)
          result.status = "ok" if result.rc == 0 else "failed"
          break
        except subprocess.TimeoutExpired:
          if self._stopped_by is not None:
            result.reason = f"the suite was stopped (signal {self._stopped_by})"
          elif time.monotonic() - start >= limit:
            result.reason = f"ran past {limit:.0f} s ({'its cap' if limit == stage.cap_s else 'the deadline'})"
          else:
            continue
          result.status = "cut"
          result.reason += f": SIGTERM, SIGKILL after {self.grace_s:.0f} s"
          result.rc = _stop(proc, self.grace_s)
          break
    result.wall_s = round(time.monotonic() - start, 2)
    if result.status == "failed":
      result.reason = f"exit status {result.rc}: {last_line(log)}"
    if stage.collect is not None:
      try:
        result.metrics = stage.collect(StageContext(work, log, launched_at, result.status))
      except Exception as e:  # a collector must not lose the other stages' rows
        result.metrics = {"collect_error": f"{type(e).__name__}: {e}"}
    for name in stage.artifacts:
      if (work / name).is_file():
        _copy_capped(work / name, self.out / name)
    self._append_log(stage.name, result, log)
    figures = ", ".join(f"{k}={_short(v)}" for k, v in result.metrics.items() if not isinstance(v, (dict, list)))
    self.echo(f"[{self.elapsed():6.1f} s] {stage.name}: {result.status} in {result.wall_s:.1f} s"
              f"{f' ({result.reason})' if result.reason else ''}{f': {figures}' if figures else ''}")
    return result

  def _record(self, result: StageResult):
    self.results.append(result)
    with open(self.out / "results.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps({"call": self.call, **self.stamp, **result.to_json()}, default=str) + "\n")
    _write_atomic(self.out / "summary.md", self.render(self.call, self.stamp, self.results, self.budget_s))

  def _append_log(self, name: str, result: StageResult, log: pathlib.Path):
    data = log.read_bytes() if log.is_file() else b""
    cut = len(data) > LOG_TAIL_BYTES
    header = (f"\n===== {name}: {result.status}, {result.wall_s} s, `{result.command}`"
              f"{f' (last {LOG_TAIL_BYTES // 1024} KiB of {len(data) // 1024} KiB)' if cut else ''} =====\n")
    with open(self.out / "suite.log", "ab") as f:
      f.write(header.encode() + data[-LOG_TAIL_BYTES:])


def _stop(proc: subprocess.Popen, grace_s: float) -> int:
  """SIGTERM to the process group, SIGKILL `grace_s` later if it still runs; the exit status."""
  for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      pass
    try:
      return proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
      continue
  return proc.wait()


def _copy_capped(src: pathlib.Path, dst: pathlib.Path):
  data = src.read_bytes()
  if len(data) > MAX_OUT_FILE_BYTES:
    data = data[:MAX_OUT_FILE_BYTES - 64] + b"\n[cut at the device's 16 MiB file limit]\n"
  dst.write_bytes(data)


def _write_atomic(path: pathlib.Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def _short(value) -> str:
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  text = str(value)
  return text if len(text) <= 300 else text[:297] + "..."


def last_line(log: pathlib.Path) -> str:
  """The last non-empty line of a log (a failed stage's error), at most 300 characters."""
  if not log.is_file():
    return ""
  lines = [l for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
  return lines[-1][:300] if lines else ""


def summary_markdown(call: str, stamp: dict, results, budget_s: float, extra: str = "") -> str:
  """summary.md: the call's stamp, one table row per stage (status, wall time, figures), then `extra`."""
  head = ", ".join(f"{k} {v}" for k, v in stamp.items() if not isinstance(v, dict))
  rows = []
  for r in results:
    keys = [k for k, v in r.metrics.items() if not isinstance(v, (dict, list))] if r.show is None else r.show
    figures = "; ".join(f"{k} {_short(r.metrics[k])}" for k in keys if k in r.metrics)
    note = r.reason.replace("|", "/")
    rows.append(f"| {r.stage} | {r.status} | {'' if r.wall_s is None else f'{r.wall_s:.1f}'} | "
                f"{'; '.join(x for x in (figures.replace('|', '/'), note) if x)} |")
  return (f"# GPU suite: {call}\n\n{head}; budget {budget_s:.0f} s\n\n"
          "| stage | status | wall s | figures |\n|---|---|---|---|\n" + "\n".join(rows) + "\n" + extra)


# ---- Readers of what stages write (used by the collectors) ----

def read_json(path) -> dict:
  path = pathlib.Path(path)
  return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_jsonl(path) -> list[dict]:
  """The complete lines of a JSONL file that a cut process may have left with a partial last line."""
  path = pathlib.Path(path)
  rows = []
  if path.is_file():
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


def training_figures(workdir, launched_at: float | None = None, targets=()) -> dict:
  """What a training run's WORKDIR/metrics.jsonl says of it: steps done, the best validation NELBO (nats/token) and
  its step, the wall seconds to that evaluation from the first step's metrics row (written once the first step has
  run: compilation excluded) and, with `launched_at` (time.time() at the launch), from the launch; for each of
  `targets` (nats/token) the seconds, from the launch and from the first step, at which an evaluation first reached it
  (None: never); the median training tokens/s of the console rows."""
  rows = read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
  train = [r for r in rows if "train/loss" in r]
  evals = [r for r in rows if "eval/nll_per_token" in r]
  out: dict = {"steps": max((r["step"] for r in train), default=0), "evaluations": len(evals)}
  speeds = sorted(r["train/tokens_per_s"] for r in train if "train/tokens_per_s" in r)
  if speeds:
    out["train_tokens_per_s"] = speeds[len(speeds) // 2]
  if train:
    out["last_train_loss"] = train[-1]["train/loss"]
    if launched_at is not None:
      out["first_step_s_from_launch"] = round(train[0]["time"] - launched_at, 2)
  if not evals:
    return out
  best = min(evals, key=lambda r: r["eval/nll_per_token"])
  out.update(best_nll=best["eval/nll_per_token"], best_step=best["step"], last_nll=evals[-1]["eval/nll_per_token"])
  since = lambda row, t: None if (row is None or t is None) else round(row["time"] - t, 2)
  first = train[0]["time"] if train else None
  out.update(best_s_from_first_step=since(best, first), best_s_from_launch=since(best, launched_at))
  for target in targets:
    hit = next((r for r in evals if r["eval/nll_per_token"] <= target), None)
    out[f"s_to_{target}_from_launch"] = since(hit, launched_at)
    out[f"s_to_{target}_from_first_step"] = since(hit, first)
  return out


def pytest_figures(report_jsonl, expected_files=()) -> dict:
  """Counts of a pytest run from the per-test report lines `tests/conftest.py` writes (DLM_TEST_REPORT): passed,
  failed, skipped, the failing test ids, seconds per file, and the `expected_files` from which no test reported
  (not reached before a cut)."""
  reports = read_jsonl(report_jsonl)
  counts = {"passed": 0, "failed": 0, "skipped": 0}
  failing, per_file = [], {}
  for r in reports:
    counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    file = r["nodeid"].split("::")[0]
    per_file[file] = round(per_file.get(file, 0.0) + r.get("duration", 0.0), 2)
    if r["outcome"] == "failed":
      failing.append(r["nodeid"])
  return {**counts, "failing": failing, "seconds_per_file": per_file,
          "files_not_reached": [f for f in expected_files if f not in per_file]}


def now_stamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def copy_tree_files(paths, dest) -> int:
  """Copies each (source, relative name) pair into `dest`, making folders; the total bytes copied."""
  total = 0
  for src, rel in paths:
    target = pathlib.Path(dest) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    total += target.stat().st_size
  return total
