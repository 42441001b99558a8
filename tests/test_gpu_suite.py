"""The GPU suite (launch/gpu_suite.{sh,py}, dlm_jax/benchmarks/suite.py): one deadline, stages cut or skipped, one JSON
line per stage as it ends, at most 8 files in OUT, and a CPU dry run of the calls, so that the suite cannot rot
between GPU leases."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from dlm_jax.benchmarks import suite
from dlm_jax.benchmarks.suite import Stage
from dlm_jax.data import corpus


def py(code: str) -> tuple[str, ...]:
  return ("python", "-c", textwrap.dedent(code))


def out_files(out: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_stages_run_in_order_under_one_deadline_cut_skip_and_record_as_they_end(tmp_path):
  out, work = tmp_path / "out", tmp_path / "work"
  writes_json = py("""
      import json, pathlib, sys
      pathlib.Path(sys.argv[1]).write_text(json.dumps({"tokens_per_s": 123.5}))
      print("measured")""") + ("{work}/r.json",)
  # On SIGTERM it writes what it has and exits: a cut stage keeps its figures.
  stops_on_sigterm = py("""
      import json, pathlib, signal, sys, time
      def stop(*_):
        pathlib.Path(sys.argv[1]).write_text(json.dumps({"rows": 2}))
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      time.sleep(60)""") + ("{work}/partial.json",)
  ignores_sigterm = py("""
      import signal, time
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
      time.sleep(60)""")
  read = lambda name: (lambda ctx: suite.read_json(ctx.work / name))
  stages = [
      Stage("quick", writes_json, cap_s=30, collect=read("r.json"), what="writes its figure"),
      Stage("fails", py("import sys; print('boom: bad input'); sys.exit(3)"), cap_s=30),
      Stage("overruns", stops_on_sigterm, cap_s=1.5, collect=read("partial.json")),
      Stage("stubborn", ignores_sigterm, cap_s=1.0),
      Stage("needs_data", writes_json, cap_s=30, needs=(str(tmp_path / "absent.txt"),)),
      Stage("too_long", writes_json, cap_s=30, min_s=1000),
      Stage("until_deadline", ignores_sigterm, cap_s=1000, env=(("WHERE", "{work}"),)),
  ]
  seen_lines = []

  def on_result(s, result):  # each stage's line is in results.jsonl (and summary.md has its row) as it ends
    lines = (out / "results.jsonl").read_text().splitlines()
    seen_lines.append((len(lines), json.loads(lines[-1])["stage"], f"| {result.stage} |" in
                       (out / "summary.md").read_text()))

  budget, grace = 9.0, 1.0
  start = time.monotonic()
  results = suite.Suite("test", stages, out, work, budget, grace_s=grace, stamp={"commit": "abc1234"},
                        on_result=on_result, echo=lambda line: None).run()
  elapsed = time.monotonic() - start
  assert elapsed <= budget + 1.0  # every stage ended by the deadline (a second for the last kill's bookkeeping)
  status = {r.stage: r.status for r in results}
  assert status == {"quick": "ok", "fails": "failed", "overruns": "cut", "stubborn": "cut", "needs_data": "skipped",
                    "too_long": "skipped", "until_deadline": "cut"}
  by = {r.stage: r for r in results}
  assert by["quick"].metrics == {"tokens_per_s": 123.5} and by["quick"].rc == 0
  assert by["fails"].rc == 3 and by["fails"].reason == "exit status 3: boom: bad input"
  assert by["overruns"].metrics == {"rows": 2} and by["overruns"].rc == 0  # stopped itself on SIGTERM
  assert 1.5 <= by["overruns"].wall_s < 1.5 + grace and "its cap" in by["overruns"].reason
  assert by["stubborn"].rc == -9 and 2.0 <= by["stubborn"].wall_s < 2.0 + 1.0  # SIGKILL after the grace
  assert by["needs_data"].reason == f"missing {tmp_path / 'absent.txt'}" and by["needs_data"].wall_s is None
  assert by["too_long"].reason.startswith("needs at least 1000 s,")
  assert "the deadline" in by["until_deadline"].reason
  assert seen_lines == [(i + 1, s.name, True) for i, s in enumerate(stages)]
  lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["stage"] for r in lines] == [s.name for s in stages]
  assert all(r["call"] == "test" and r["commit"] == "abc1234" for r in lines)
  # OUT holds the three suite files only; the stages' own files and logs stay in the work folder.
  assert out_files(out) == ["results.jsonl", "suite.log", "summary.md"]
  assert (work / "quick" / "r.json").is_file() and (work / "quick" / "log.txt").read_text() == "measured\n"
  assert "===== fails: failed" in (out / "suite.log").read_text()


def test_a_signal_to_the_runner_cuts_the_running_stage_and_skips_the_rest(tmp_path):
  """The device tool's own timeout (SIGTERM to the call) still leaves a complete results.jsonl."""
  runner = textwrap.dedent(f"""
      from dlm_jax.benchmarks.suite import Stage, Suite
      stages = [Stage("sleeps", ("python", "-c", "import time; time.sleep(60)"), cap_s=60),
                Stage("next", ("python", "-c", "pass"), cap_s=60)]
      Suite("test", stages, {str(tmp_path / 'out')!r}, {str(tmp_path / 'work')!r}, 120, grace_s=1.0).run()""")
  proc = subprocess.Popen([sys.executable, "-u", "-c", runner], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert "sleeps: started" in proc.stdout.readline()
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  rows = suite.read_jsonl(tmp_path / "out" / "results.jsonl")
  assert [(r["stage"], r["status"], r["reason"]) for r in rows] == [
      ("sleeps", "cut", "the suite was stopped (signal 15): SIGTERM, SIGKILL after 1 s"),
      ("next", "skipped", "the suite was stopped (signal 15)")]
  assert rows[0]["rc"] == -15  # the stage itself died of the SIGTERM it was passed


def test_out_never_holds_more_files_than_the_device_returns(tmp_path):
  stages = [Stage(f"s{i}", ("true",), cap_s=1, artifacts=(f"a{i}.md",)) for i in range(6)]
  with pytest.raises(ValueError, match="the device returns at most 8"):
    suite.Suite("test", stages, tmp_path / "out", tmp_path / "work", 10)
  stages = [Stage("s", ("python", "-c", "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text('x' * 100)",
                        "{work}/table.md"), cap_s=30, artifacts=("table.md", "never_written.md"))]
  suite.Suite("test", stages, tmp_path / "out", tmp_path / "work", 30, echo=lambda line: None).run()
  assert out_files(tmp_path / "out") == ["results.jsonl", "suite.log", "summary.md", "table.md"]
  assert (tmp_path / "out" / "table.md").read_text() == "x" * 100


def test_training_figures_read_the_best_evaluation_and_its_times(tmp_path):
  rows = [{"step": 1, "time": 105.0, "train/loss": 4.0, "train/tokens_per_s": 10.0},
          {"step": 2, "time": 106.0, "train/loss": 3.0, "train/tokens_per_s": 30.0},
          {"step": 2, "time": 107.0, "eval/nll_per_token": 1.60},
          {"step": 3, "time": 108.0, "train/loss": 2.5, "train/tokens_per_s": 20.0},
          {"step": 4, "time": 110.0, "eval/nll_per_token": 1.44},
          {"step": 6, "time": 115.0, "eval/nll_per_token": 1.47}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "ti')
  figures = suite.training_figures(tmp_path, launched_at=100.0, targets=(1.45, 1.5))
  assert figures == {"steps": 3, "evaluations": 3, "train_tokens_per_s": 20.0, "last_train_loss": 2.5,
                     "first_step_s_from_launch": 5.0, "best_nll": 1.44, "best_step": 4, "last_nll": 1.47,
                     "best_s_from_first_step": 5.0, "best_s_from_launch": 10.0,
                     "s_to_1.45_from_launch": 10.0, "s_to_1.45_from_first_step": 5.0,
                     "s_to_1.5_from_launch": 10.0, "s_to_1.5_from_first_step": 5.0}
  assert suite.training_figures(tmp_path / "nothing") == {"steps": 0, "evaluations": 0}


def test_pytest_figures_count_outcomes_and_name_the_files_not_reached(tmp_path):
  reports = [{"nodeid": "tests/test_a.py::test_x", "outcome": "passed", "duration": 1.5},
             {"nodeid": "tests/test_a.py::test_y", "outcome": "failed", "duration": 0.5},
             {"nodeid": "tests/test_b.py::test_z", "outcome": "skipped", "duration": 0.0}]
  (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
  figures = suite.pytest_figures(tmp_path / "r.jsonl", ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"])
  assert figures == {"passed": 1, "failed": 1, "skipped": 1, "failing": ["tests/test_a.py::test_y"],
                     "seconds_per_file": {"tests/test_a.py": 2.0, "tests/test_b.py": 0.0},
                     "files_not_reached": ["tests/test_c.py"]}


def test_the_test_report_hook_writes_one_line_per_test(tmp_path):
  report = tmp_path / "report.jsonl"
  result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_layout.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DLM_TEST_REPORT": str(report)})
  assert result.returncode == 0, result.stdout[-2000:]
  lines = suite.read_jsonl(report)
  names = sorted(line["nodeid"].split("::")[1] for line in lines)
  import test_layout
  assert names == sorted(n for n in dir(test_layout) if n.startswith("test_"))
  assert {line["outcome"] for line in lines} == {"passed"}


def test_targets_read_the_figures_against_the_goals():
  from launch import gpu_suite
  result = lambda stage, **metrics: suite.StageResult(stage, "ok", "", "", 1.0, metrics=metrics)
  results = [result("bench_base_110m", mfu=0.56, sample_step_over_forward=1.3, train_tokens_per_s=100.0),
             result("bench_eco", train_tokens_per_s=99.0), result("bench_hrm", train_tokens_per_s=61.0),
             result("anchor_ar", best_nll=1.44, **{"s_to_1.45_from_first_step": 58.0}),
             result("kernel_tests", failed=1, passed=9),
             result("solve_sudoku_hrm", confidence_exact=0.52, margin_exact=0.57, margin_blank_accuracy=0.9)]
  verdicts = {name: (figure, verdict) for name, figure, verdict in gpu_suite.targets(results)}
  assert verdicts == {
      "base_110m MFU >= 55%": ("56.0%", "met"),
      "sampler step <= 1.15x a forward": ("1.30x", "not met"),
      "EcoHybrid tok/s >= the baseline's at T=1024": ("0.99x the baseline", "not met"),
      "HRM tok/s >= 0.6x the baseline's": ("0.61x the baseline", "met"),
      "AR arm <= 1.45 nats/char within 60 s of training": ("reached at 58 s", "met"),
      "kernel_tests: 0 GPU test failures": ("1 failed, 9 passed", "not met"),
      "HRM-sized Sudoku >= 55% exact on 1,000 hard puzzles": ("57.0% (best policy)", "met")}
  skipped = [suite.StageResult("bench_base_110m", "skipped", "", "", 1.0), result("bench_eco", train_tokens_per_s=9.0)]
  assert {v for _, _, v in gpu_suite.targets(skipped)} == {"not measured"}


def test_a_copy_without_git_is_stamped_with_the_staged_commit(tmp_path, monkeypatch):
  from dlm_jax.benchmarks import report
  monkeypatch.delenv("DLM_COMMIT", raising=False)
  assert report.commit(tmp_path) == "unknown"
  monkeypatch.setenv("DLM_COMMIT", "abc1234+dirty\n")
  assert report.commit(tmp_path) == "abc1234+dirty"
  assert report.commit(REPO) != "abc1234+dirty"  # where git answers, git is asked


def test_stage_gpu_copies_the_wheels_corpora_and_commit_and_prints_the_call(tmp_path):
  if corpus.data_dir() is None:
    pytest.skip("../shared/data is absent (set DLM_DATA_DIR to the shared corpora)")
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  (wheels / "grain-0.2.18-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
  staged = tmp_path / "stage"
  env = {**os.environ, "GPU_STAGE_DIR": str(staged), "DLM_DEVICE_WHEELS": str(wheels),
         "DLM_DATA_DIR": str(corpus.data_dir())}
  # Staging runs the call's dry run first and stages nothing unless every stage ends ok: with a 1-second budget
  # every stage is skipped (its minimum is not left), so the staging is refused in one line.
  refused = subprocess.run(["bash", "launch/stage_gpu.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**env, "GPU_BUDGET_S": "1"})
  assert refused.returncode == 2 and not staged.exists(), refused.stderr[-2000:]
  assert refused.stderr.strip().splitlines()[-1].startswith(
      "error: the dry run of the 'headline' call failed (environment skipped, bench_base_110m skipped"), refused.stderr
  unknown = subprocess.run(["bash", "launch/stage_gpu.sh", "--stage_call=benchmark"], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env=env)
  assert unknown.returncode == 2 and "--stage_call='benchmark': choose one of headline, tests" in unknown.stderr
  # (the dry run that passes is tests/test_gpu_suite.py's slow test_dry_run_of_the_headline_call)
  result = subprocess.run(["bash", "launch/stage_gpu.sh", "--stage_call="], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("No dry run before staging (--stage_call='').\n")
  from launch import gpu_suite
  for rel in gpu_suite.DATA_FILES:
    assert (staged / "data" / rel).read_bytes() == (corpus.data_dir() / rel).read_bytes()
  assert (staged / "whl" / "grain-0.2.18-cp312-cp312-manylinux_2_28_x86_64.whl").read_bytes() == b"wheel"
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
  assert (staged / "COMMIT").read_text().startswith(head.strip())
  assert f'carry: ["{staged}"]' in result.stdout and "command: bash launch/gpu_suite.sh" in result.stdout
  empty = subprocess.run(["bash", "launch/stage_gpu.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPU_STAGE_DIR": str(staged), "DLM_DEVICE_WHEELS": str(tmp_path)})
  # (the wheels and corpora are checked before the dry run: a bad --wheels costs no dry run)
  assert empty.returncode == 2 and empty.stderr.strip().splitlines()[-1].startswith(f"error: --wheels={tmp_path}")


def test_an_unknown_call_is_one_line_naming_the_calls(tmp_path):
  result = subprocess.run(["bash", "launch/gpu_suite.sh", "benchmark"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OUT": str(tmp_path / "out"),
                                            "GPU_WORK_DIR": str(tmp_path / "work")})
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      "error: call 'benchmark': choose one of headline, tests, quality, sampling, pretrained, puzzles, profile, "
      "variants, hot_path (no argument: headline)."]
  assert not (tmp_path / "out").exists()


def test_docs_list_each_call_with_the_stages_minimums_and_caps_of_the_code():
  import re
  listing = subprocess.run([sys.executable, "-m", "launch.gpu_suite", "--list_calls"], cwd=REPO, capture_output=True,
                           text=True, timeout=120, check=True).stdout
  code = {}
  for line in listing.splitlines():
    call, stages = line.split(": ", 1)
    code[call] = re.findall(r"(\w+) \(min (\d+) s, cap (\d+) s\)", stages)
  docs = {}
  for row in (REPO / "docs" / "gpu.md").read_text().split("## The calls")[1].split("## What does not")[0].splitlines():
    if row.startswith("| `") or row.startswith("| *(none)*"):
      call = "headline" if row.startswith("| *(none)*") else row.split("`")[1]
      docs[call] = re.findall(r"(\w+) \((\d+)/(\d+)\)", row.split("|")[2])
  assert docs == code


def dry_run(call: str, tmp_path, budget_s: int = 510) -> tuple[list[dict], pathlib.Path]:
  out = tmp_path / "out"
  result = subprocess.run(["bash", "launch/gpu_suite.sh", *([call] if call else [])], cwd=REPO, capture_output=True,
                          text=True, timeout=budget_s + 120,
                          env={**os.environ, "GPU_DRY_RUN": "1", "OUT": str(out), "GPU_BUDGET_S": str(budget_s),
                               "GPU_WORK_DIR": str(tmp_path / "work")})
  assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  files = out_files(out)
  assert len(files) <= suite.MAX_OUT_FILES and all(f.count("/") <= 1 for f in files), files
  assert (out / "summary.md").read_text() in result.stdout
  return rows, out


@pytest.mark.slow
def test_dry_run_of_the_headline_call(tmp_path):
  """The headline call at a shrunk size on CPU: every stage runs its real command and returns its figures. (Slow: two
  minutes of subprocesses; launch/stage_gpu.sh runs this dry run before it stages any device call.)"""
  if corpus.data_dir() is None:
    pytest.skip("../shared/data is absent: the AR anchor stage trains on Tiny Shakespeare")
  rows, out = dry_run("", tmp_path)
  by = {r["stage"]: r for r in rows}
  assert [r["stage"] for r in rows] == ["environment", "bench_base_110m", "anchor_ar", "bench_eco", "bench_hrm",
                                        "kernel_tests", "scaling_eco", "scaling_diffusion"]
  assert {r["status"] for r in rows} == {"ok"}, {r["stage"]: (r["status"], r["reason"]) for r in rows}
  assert all(r["dry_run"] and r["call"] == "headline" for r in rows)
  assert by["environment"]["metrics"]["platform"] == "cpu" and by["environment"]["metrics"]["peak_flops"] is None
  assert all(r["device"].startswith("cpu x") for r in rows[1:])  # the environment's device stamps the later rows
  for stage in ("bench_base_110m", "bench_eco", "bench_hrm"):
    m = by[stage]["metrics"]
    assert m["train_tokens_per_s"] > 0 and m["sample_step_over_forward"] > 0 and m["loss_finite"]
    assert m["mfu"] is None  # no known peak on CPU
  ar = by["anchor_ar"]["metrics"]
  assert ar["steps"] == 12 and ar["evaluations"] == 2 and 0 < ar["best_s_from_first_step"] < ar["best_s_from_launch"]
  assert by["kernel_tests"]["metrics"]["failed"] == 0 and by["kernel_tests"]["metrics"]["passed"] > 0
  assert set(by["scaling_eco"]["metrics"]) == {"T64_step_ms", "T64_peak_GiB", "T128_step_ms", "T128_peak_GiB"}
  summary = (out / "summary.md").read_text()
  assert "## Targets (dry run" in summary and "| base_110m MFU >= 55% | n/a | not measured |" in summary


@pytest.mark.slow
@pytest.mark.parametrize("call", ["tests", "quality", "sampling", "pretrained", "puzzles", "profile", "variants",
                                  "hot_path"])
def test_dry_run_of_every_other_call(call, tmp_path):
  if corpus.data_dir() is None and call in ("quality", "sampling"):
    pytest.skip("../shared/data is absent: the call trains on Tiny Shakespeare")
  rows, out = dry_run(call, tmp_path)
  assert {r["status"] for r in rows} == {"ok"}, {r["stage"]: (r["status"], r["reason"]) for r in rows}
  if call == "sampling":
    assert (out / "sampler_suite.md").read_text().count("\n") >= 4
  if call == "profile":
    assert "## train step:" in (out / "profile.md").read_text()


def test_the_gpu_tests_call_runs_every_test_file():
  from launch import gpu_suite
  present = {p.stem for p in (REPO / "tests").glob("test_*.py")}
  assert set(gpu_suite.TEST_FILES) == present
