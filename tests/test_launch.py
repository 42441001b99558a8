"""The thin entry points that other tests do not already run: tokenizer, evaluate, bench."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_config
from dlm_jax.data import tokenizers
from dlm_jax.benchmarks import throughput
from dlm_jax.training import metrics


def run(*args, timeout=300):
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_tokenizer_cli_writes_a_model_with_reserved_ids(tmp_path):
  corpus = tmp_path / "mixed.txt"
  corpus.write_text("The quick brown fox. यह एक वाक्य है। kya scene hai bhai?\n" * 200, encoding="utf-8")
  out = tmp_path / "spm" / "t.model"
  stdout = run("launch.tokenizer", f"--input={corpus}", "--vocab_size=300", f"--output={out}")
  assert "vocab" in stdout
  tok = tokenizers.SentencePieceTokenizer.from_file(str(out))
  text = "नया text 😀"
  assert tok.decode(tok.encode(text)) == text


def test_tokenizer_cli_reports_invalid_utf8(tmp_path):
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"ok\xff\xfe")
  result = subprocess.run([sys.executable, "-m", "launch.tokenizer", f"--input={bad}", f"--output={tmp_path}/x"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "invalid UTF-8 at byte offset 2" in result.stderr


def test_evaluate_cli_reports_nelbo_in_all_units(trained_run):
  workdir, summary = trained_run
  report = json.loads(run("launch.evaluate", f"--workdir={workdir}", "--num_windows=16", "--time_samples=2",
                          "--batch_size=8"))
  assert report["windows"] == 16 and report["objective"] == "elbo"
  np.testing.assert_allclose(report["bits_per_token"], report["nats_per_token"] / np.log(2), rtol=1e-9)
  np.testing.assert_allclose(report["bits_per_char"], report["bits_per_token"], rtol=1e-9)  # char tokenizer
  np.testing.assert_allclose(report["perplexity"], np.exp(report["nats_per_token"]), rtol=1e-9)
  assert report["mc_stderr"] > 0
  # With no flags it scores what the in-training evaluation scored: the same figure as the training log's last eval.
  default = json.loads(run("launch.evaluate", f"--workdir={workdir}"))
  np.testing.assert_allclose(default["nats_per_token"], summary["eval_nll_per_token"], rtol=1e-6)
  assert (default["windows"], default["time_samples"], default["mc_stderr"]) == (16, 1, None)
  assert (default["weights"], default["checkpoint"], default["step"]) == ("ema", "latest", 12)
  # The raw weights of the best checkpoint (the only evaluation, step 12): the training log's eval_raw figure.
  raw = json.loads(run("launch.evaluate", f"--workdir={workdir}", "--weights=raw", "--checkpoint=best"))
  assert (raw["weights"], raw["checkpoint"], raw["step"]) == ("raw", "best", 12)
  logged = [r for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "eval_raw/nll_per_token" in r]
  np.testing.assert_allclose(raw["nats_per_token"], logged[-1]["eval_raw/nll_per_token"], rtol=1e-6)
  # --score=training_loss: the run's own objective on the same windows and draws (all L tokens scored, not 2..L)
  loss = json.loads(run("launch.evaluate", f"--workdir={workdir}", "--score=training_loss"))
  assert loss["score"] == "training_loss" and default["score"] == "nelbo"
  assert np.isfinite(loss["nats_per_token"]) and loss["nats_per_token"] != default["nats_per_token"]


def test_benchmark_runs_end_to_end_on_cpu():
  config = tiny_config()
  config.bench.update(dict(train_steps=2, warmup_steps=1, sample_batch=2, sample_new_tokens=32, sample_steps=4))
  result = throughput.run(config)
  assert result["loss_finite"] and result["train_tokens_per_s"] > 0 and result["sample_tokens_per_s"] > 0
  if metrics.device_peak_flops() is None:  # CPU: no known peak, no MFU
    assert result["mfu"] is None
  else:
    assert 0 < result["mfu"] < 1
  assert result["flops_per_token"] > 0 and result["sample_step_over_forward"] > 0


def test_head_memory_mode_shows_the_chunked_loss_holds_less():
  config = tiny_config()
  config.bench.vocab_size = 512
  report = throughput.head_loss_memory(config, chunk=32)
  assert report["chunked_temp_GiB"] < report["full_logits_temp_GiB"]


def test_profile_mode_breaks_down_the_train_step_sampler_and_forward(tmp_path):
  config = tiny_config()
  config.bench.update(dict(warmup_steps=1, sample_batch=2, sample_new_tokens=32, sample_steps=4))
  summaries = throughput.profile(config, tmp_path, steps=2)
  assert list(summaries) == ["train step", "sampler call", "forward pass"]
  for summary in summaries.values():
    assert summary["total_ms"] > 0 and summary["top"]
  # A sampler call runs the model once per step: its busiest kernels run a multiple of 4 times.
  assert max(k["calls"] for k in summaries["sampler call"]["top"]) >= 4


def test_gen_eval_judges_a_continuation_past_the_context_window_window_by_window(trained_run, trained_ar_run):
  """--continue_windows=3 --continue_chunk=8 on a 32-token model: prompts of 24 real tokens, 3 windows of 8 new ones;
  each window's real-text NLL is the judge's on the real 8 tokens in the 32 that end with them (recomputed here through
  `generation.quality`, another path), and the drawn text is not the real text."""
  from dlm_jax.evaluation import generation
  from launch import judged
  workdir, _ = trained_run
  stdout = run("launch.gen_eval", f"--workdir={workdir}", f"--judge={trained_ar_run}", "--num_samples=4",
               "--continue_windows=3", "--continue_chunk=8", "--steps=4", "--json")
  *rows, cost = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  assert [r["window"] for r in rows] == [0, 1, 2] and cost["windows"] == 3
  assert cost["network_calls"] == 3 * 4  # 4 steps per window, one pass each (no cache, no guidance)
  assert "past its 32-token context: 4 prompts of 24 tokens, 3 windows of 8 new tokens" in stdout
  run_, judge, windows_WxT = judged.load_runs_and_windows(str(workdir), str(trained_ar_run), weights="ema",
                                                          which="latest", prompt_len=0, num_samples=4,
                                                          continue_chunk=8, continue_windows=3)
  assert windows_WxT.shape == (4, 24 + 3 * 8)
  judge_nll = generation.judge_for(run_, judge)
  for w, r in enumerate(rows):
    window = windows_WxT[:, 8 * w:8 * w + 32]
    generated = np.zeros(window.shape, bool)
    generated[:, 24:] = True
    real = generation.quality(window, generated, run_.tokenizer, judge_nll, prompt_len=24)["judge_nll"]
    np.testing.assert_allclose(r["real_judge_nll"], real, rtol=1e-6)
    assert abs(r["judge_nll"] - r["real_judge_nll"]) > 1e-3 and r["entropy"] > 0


def test_gen_eval_cli_judges_samples_with_an_ar_run(trained_run, trained_ar_run):
  workdir, _ = trained_run
  judge = trained_ar_run
  stdout = run("launch.gen_eval", f"--workdir={workdir}", f"--judge={judge}", "--num_samples=4", "--prompt_len=8",
               "--steps=4,24", "--json")
  rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  assert [r["steps"] for r in rows] == ["n/a", 4, 24]
  assert "with float64 draws; judge" in stdout  # the evaluation default: no tail of the draws cut
  assert rows[0]["sample_s"] is None and all(r["sample_s"] > 0 for r in rows[1:])
  for r in rows:
    assert np.isfinite(r["judge_nll"]) and 0 < r["entropy"] and r["words"] > 0
    assert 0 <= r["script_error_rate"] == r["mixed_word_rate"] + r["off_script_rate"] <= 1
  # The judge prefers the real text to the samples of a barely trained model (measured 4.22 against 4.60 and 4.66
  # nats: a judge that scored the wrong next tokens would not).
  assert all(rows[0]["judge_nll"] < r["judge_nll"] - 0.1 for r in rows[1:])
  # The judge must be a causal run: a diffusion run in its place is refused with one clear message.
  result = subprocess.run([sys.executable, "-m", "launch.gen_eval", f"--workdir={workdir}", f"--judge={workdir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "is not a causal (AR) run" in result.stderr
  assert "Traceback" not in result.stderr

  # launch.sample decodes the AR run left to right after its prompt, streaming token by token; infilling is refused.
  stdout = run("launch.sample", f"--workdir={judge}", "--prompt=The ", "--length=10", "--num_samples=2", "--stream",
               "--stream_delay=0")
  blocks = stdout.split("\n[")[0].split("--- sample ")[1:]  # each: "i ---\n" + text (+ the "\n" print adds)
  samples = [b.split("\n", 1)[1] for b in blocks]
  samples = [s[:-1] if i < len(samples) - 1 else s for i, s in enumerate(samples)]
  assert len(samples) == 2 and all(s.startswith("The ") and len(s) == 14 for s in samples), samples
  result = subprocess.run([sys.executable, "-m", "launch.sample", f"--workdir={judge}", "--prompt=a", "--suffix=b"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "--suffix (infilling) needs a diffusion model" in result.stderr

  # The diffusion run decodes in blocks with EOS stopping and the AR run as verifier; inconsistent strategies are
  # refused with one line naming the setting.
  stdout = run("launch.sample", f"--workdir={workdir}", "--prompt=The ", "--length=12", "--num_samples=2",
               "--block_length=4", "--steps=6", "--eos_stop", f"--verifier={judge}", "--verifier_rounds=2",
               "--verifier_threshold=0.2")
  assert "rejected per round" in stdout and stdout.count("--- sample ") == 2
  assert "network calls" in stdout and "lengths [" in stdout
  result = subprocess.run([sys.executable, "-m", "launch.sample", f"--workdir={workdir}", "--remasking=remdm_cap"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "use method='ancestral'" in result.stderr.strip().splitlines()[-1]


def test_sampler_suite_cli_rows_every_strategy_and_the_sweeps(trained_run, trained_ar_run, tmp_path):
  workdir, _ = trained_run
  output = tmp_path / "bench.md"
  # The strategies themselves are tested in tests/test_sampler.py; here one of each kind of row.
  strategies = ("confidence,ancestral_cache,blocks_dual_cache,blocks_prefix_cache,threshold_blocks_dual_cache,"
                "confidence_stop,remdm_cap")
  rows_out, table_out = tmp_path / "rows.jsonl", tmp_path / "table.md"
  stdout = run("launch.sampler_suite", f"--workdir={workdir}", f"--judge={trained_ar_run}", "--num_samples=4",
               "--prompt_len=8", "--steps=6", "--block_length=8", "--confidence_stops=0.5,0.99", "--verifier_rounds=1",
               f"--strategies={strategies}", "--json", "--record", f"--output={output}", f"--rows_out={rows_out}",
               f"--table_out={table_out}")
  rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  # Each row went to --rows_out (and the table so far to --table_out) as it was scored: the same rows as the end's.
  assert rows_out.read_text().splitlines() == [line for line in stdout.splitlines() if line.startswith("{")]
  table = table_out.read_text()
  assert table.startswith("| strategy |") and table.count("\n") == 2 + len(rows)
  names = [r["strategy"] for r in rows]
  assert names[0] == "real text" and names.count("confidence_stop") == 2 and "verifier" in names
  assert set(strategies.split(",")) <= set(names)
  for r in rows[1:]:
    assert r["tokens_per_s"] > 0 and r["network_calls"] >= 1 and r["judge_nll"] > rows[0]["judge_nll"] + 0.1
    assert 0 < r["distinct_2"] <= 1 and 0 < r["distinct_3"] <= 1
  agreement = {r["strategy"]: r["cache_agreement"] for r in rows[1:]}
  assert agreement["ancestral_cache"] == 1.0 and agreement["confidence"] is None  # MDLM's cache is exact
  # Reported for the KV caches (what they compute is counted in tests/test_sampler.py).
  assert all(isinstance(agreement[name], float) for name in ("blocks_dual_cache", "blocks_prefix_cache"))
  fixed_budget = [r for r in rows if r["strategy"] in ("confidence", "remdm_cap")]
  assert all(r["network_calls"] == 6 for r in fixed_budget)
  recorded = output.read_text()
  assert "Sampler suite:" in recorded and recorded.count("| threshold_blocks_dual_cache |") == 1
  assert ", float64 draws; " in recorded
  result = subprocess.run([sys.executable, "-m", "launch.sampler_suite", f"--workdir={workdir}",
                           f"--judge={trained_ar_run}", "--strategies=nucleus"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2 and "Unknown strategies ['nucleus']" in result.stderr.strip().splitlines()[-1]


def test_evaluate_searches_the_clipped_window_by_the_loss_estimators_noise(trained_run):
  """--window_search (BD3-LM's data-driven window): every grid window at least --window_min_width wide, each with the
  noise of the training loss under it, and the quietest; windows reaching down to t = 0 (where w(t) ~ 1/t) are the
  noisiest."""
  from dlm_jax.evaluation import likelihood
  assert likelihood.window_grid(0.25, 0.5) == [(0.0, 0.5), (0.0, 0.75), (0.0, 1.0), (0.25, 0.75), (0.25, 1.0),
                                               (0.5, 1.0)]
  with pytest.raises(ValueError, match="divide 1"):
    likelihood.window_grid(0.3, 0.5)
  workdir, _ = trained_run
  result = json.loads(run("launch.evaluate", f"--workdir={workdir}", "--window_search=0.25", "--window_min_width=0.5",
                          "--estimator_batches=2", "--num_windows=16"))["window_search"]
  rows = {(r["time_low"], r["time_high"]): r["loss_estimator_std"] for r in result["rows"]}
  assert sorted(rows) == likelihood.window_grid(0.25, 0.5) and all(std > 0 for std in rows.values())
  assert result["lowest"]["loss_estimator_std"] == min(rows.values())
  assert min(rows[(0.0, high)] for high in (0.5, 0.75, 1.0)) > max(rows[(low, 1.0)] for low in (0.25, 0.5)), rows


def test_evaluate_reports_the_calibration_of_reveal_confidences(trained_run):
  workdir, _ = trained_run
  result = json.loads(run("launch.evaluate", f"--workdir={workdir}", "--calibration_bins=5"))
  calibration = result["calibration"]
  assert len(calibration["bins"]) == 5 and sum(b["count"] for b in calibration["bins"]) == calibration["predictions"]
  assert calibration["predictions"] > 0
  # ECE is the count-weighted gap between each bin's accuracy and confidence, and the bins partition the predictions.
  ece = sum(b["count"] / calibration["predictions"] * abs(b["accuracy"] - b["confidence"])
            for b in calibration["bins"] if b["count"])
  assert calibration["ece"] == pytest.approx(ece, abs=1e-12)
  assert all(b["low"] <= b["confidence"] <= b["high"] for b in calibration["bins"] if b["count"])


LAUNCHERS = ("train", "sample", "evaluate", "gen_eval", "tokenizer", "bench", "summarize", "sampler_suite",
             "gpu_suite", "classifier", "control")


def assert_help_exits_zero(names):
  for name in names:
    result = subprocess.run([sys.executable, "-m", f"launch.{name}", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, (name, result.stderr[-500:])
    assert "flags" in result.stdout.lower()


# Launchers that import no model code (about a second and a half each); every other launcher runs in a default test of
# its own (train's --help in tests/test_first_contact.py), and its --help in the slow run.
LIGHT_LAUNCHERS = ("tokenizer", "summarize", "gpu_suite")


@pytest.mark.slow
def test_help_of_every_launcher_exits_zero():
  assert_help_exits_zero(LAUNCHERS)


def test_help_exits_zero_and_user_errors_are_one_line_with_status_2(tmp_path):
  assert_help_exits_zero(LIGHT_LAUNCHERS)
  missing = tmp_path / "no_such_run"
  for name in ("sample", "evaluate"):
    result = subprocess.run([sys.executable, "-m", f"launch.{name}", f"--workdir={missing}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: No run at {missing}")
    assert not missing.exists(), "a read-only command created the workdir"


def test_config_fields_are_listed_and_a_mistyped_one_is_named_with_the_closest(tmp_path):
  listing = subprocess.run([sys.executable, "-m", "launch.train", "--help_config"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
  assert listing.returncode == 0 and "num_steps: 900" in listing.stdout and "loss_chunk: 0" in listing.stdout
  result = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={tmp_path / 'run'}",
                           "--config=configs/shakespeare_char.py:ar", "--config.optimizer.learning_rat=1e-3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().startswith(
      "error: --config.optimizer.learning_rat: configs/shakespeare_char.py:ar has no field 'optimizer.learning_rat'. "
      "Did you mean --config.optimizer.learning_rate,")
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "run").exists()
  # A field that exists with a value the code cannot take: one line naming it (ConfigError), status 2.
  bad_value = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={tmp_path / 'run2'}",
                              "--config.model.remat=sometimes"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad_value.returncode == 2 and "Traceback" not in bad_value.stderr
  assert bad_value.stderr.strip().splitlines()[-1].startswith("error: model.remat must be one of")


def test_bench_prints_its_row_and_appends_only_with_record(tmp_path):
  output = tmp_path / "BENCH.md"
  small = ["--config.model.num_layers=1", "--config.model.width=32", "--config.model.num_heads=2",
           "--config.model.mlp_dim=64", "--config.bench.train_steps=1", "--config.bench.warmup_steps=1",
           "--config.bench.sample_steps=2", "--config.bench.sample_batch=2", f"--output={output}"]
  stdout = run("launch.bench", *small)
  assert "(not recorded; --record appends to" in stdout
  assert any(line.startswith("| 20") for line in stdout.splitlines())  # the row, printed
  assert not output.exists()
  run("launch.bench", *small, "--record", f"--json_out={tmp_path / 'row.json'}")
  rows = [line for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("| 20")]
  assert len(rows) == 1 and "`python -m launch.bench --config.model.num_layers=1" in rows[0]
  result = json.loads((tmp_path / "row.json").read_text())  # --json_out: the same row's figures, with its stamp
  assert f"| {result['train_tokens_per_s']:,.0f} |" in rows[0] and result["commit"] in rows[0]
  assert result["device"].startswith("cpu") and result["peak_flops"] is None and result["mfu"] is None


def test_scale_out_projection_takes_the_step_time_from_the_gpu_suite_results(tmp_path):
  """--step_ms_from reads the bench_base_110m row of a GPU suite call's results.jsonl; on one device nothing is sent,
  so the projected step is that step time exactly."""
  results = tmp_path / "results.jsonl"
  rows = [{"stage": "bench_base_110m", "status": "cut", "metrics": {}},
          {"stage": "bench_base_110m", "status": "ok", "metrics": {"train_step_ms": 12.5}}]
  results.write_text("".join(json.dumps(r) + "\n" for r in rows))
  small = ["--config.model.num_layers=1", "--config.model.width=32", "--config.model.num_heads=2",
           "--config.model.mlp_dim=64", "--scale_out", "--mesh_shapes=1x1x1", f"--json_out={tmp_path / 's.json'}"]
  stdout = run("launch.bench", *small, f"--step_ms_from={results}")
  (row,) = json.loads((tmp_path / "s.json").read_text())["rows"]
  assert row["step_ms_one_device"] == 12.5 and row["sent_bytes"] == 0 and row["projected_step_ms"] == [12.5, 12.5]
  assert "12.5 .. 12.5 (projection: t_1 = 12.5 ms" in stdout
  results.write_text(json.dumps(rows[0]) + "\n")
  bad = subprocess.run([sys.executable, "-m", "launch.bench", *small, f"--step_ms_from={results}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f"error: --step_ms_from={results}: no finished bench_base_110m stage with a train_step_ms in it (run the "
      "headline call: bash launch/gpu_suite.sh)."]


def test_evaluate_cli_out_of_vocabulary_policies_on_a_text_file(trained_run, tmp_path):
  from dlm_jax.data import corpus
  workdir, _ = trained_run
  text = "\n".join(corpus.embedded_documents("pydoc_topics"))[:4000]
  path = tmp_path / "foreign.txt"
  path.write_text("\ufeff" + text[:2000] + "😀 \u095f\u095f " + text[2000:], encoding="utf-8")
  refused = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}", f"--path={path}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
  assert "4 characters of 3 kinds" in refused.stderr and "'\u095f' (U+095F) x2" in refused.stderr
  for policy in ("skip", "unk"):
    report = json.loads(run("launch.evaluate", f"--workdir={workdir}", f"--path={path}", f"--oov={policy}",
                            "--num_windows=4"))
    assert report["oov"]["policy"] == policy and report["oov"]["characters"] == 4
    assert report["oov"]["distinct"] == {"\u095f (U+095F)": 2, "\ufeff (U+FEFF)": 1, "😀 (U+1F600)": 1}
    assert np.isfinite(report["nats_per_token"])


def test_script_table_means_over_seeds_and_lists_each_seed():
  from launch import script_table
  rows = [{"variant": "uniform", "seed": 0, "metric": "nelbo_hindi", "value": 2.0},
          {"variant": "uniform", "seed": 1, "metric": "nelbo_hindi", "value": 3.0},
          {"variant": "uniform", "seed": 0, "metric": "script_error_rate_deva", "value": 0.125},
          {"variant": "script_aware", "seed": 0, "metric": "nelbo_hindi", "value": 1.5}]
  lines = script_table.table(rows).splitlines()
  assert lines[0].startswith("| variant | NELBO English | NELBO Hindi |")
  assert lines[2].startswith("| uniform |  | 2.500 (2.000, 3.000) |  | 12.5% (12.5%) |")
  assert lines[3].startswith("| script_aware |  | 1.500 (1.500) |")
