"""A stage whose key (the config values it reads, the files they name, the earlier stages' manifests, raftune's code)
is the key of its finished run is skipped with one line, by `raftune demo` and by the stage commands; --force reruns
it. The session's mini run is copied for each test, so that no test changes what the others read."""

import json
import shutil

import pandas as pd

import raftune
from raftune import manifest
from raftune.cli import main
from raftune.models import NAMED_BASES
from raftune.pipeline import run_all

from conftest import MINI_OVERRIDES, ROOT, copy_run, mini_config

STAGES = list(manifest.STAGES)


def snapshot(config, stages):
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for stage in stages
            for p in sorted(config.stage_dir(stage).rglob("*")) if p.is_file()}


def skip_line(config, stage):
    return f"{stage}: up to date ({config.stage_dir(stage) / 'manifest.json'}); --force reruns it"


def skip_lines(out):
    return [line for line in out.splitlines() if ": up to date (" in line]


def cli_args(runs, *extra):
    return ["--config", str(ROOT / "configs" / "demo-tiny.yaml"), *MINI_OVERRIDES, f"runs_dir={runs}", "run=mini",
            *extra]


def test_a_second_demo_skips_every_stage_and_writes_nothing(mini_run, tmp_path, capfd):
    config = mini_config(copy_run(mini_run, tmp_path))
    before = snapshot(config, STAGES)
    capfd.readouterr()
    summary, _ = run_all(config)
    out = capfd.readouterr().out
    assert skip_lines(out) == [skip_line(config, stage) for stage in STAGES]
    assert not any(f"=== {stage} ===" in out for stage in STAGES)
    assert snapshot(config, STAGES) == before
    pd.testing.assert_frame_equal(summary, mini_run[1], check_dtype=False)  # the table of the finished run


def test_an_evaluation_setting_reruns_evaluate_and_plots_only(mini_run, tmp_path, capfd):
    config = mini_config(copy_run(mini_run, tmp_path), "evaluate.max_new_tokens=5")
    upstream, plots = STAGES[:4], config.stage_dir("plots") / "manifest.json"
    before, plots_before = snapshot(config, upstream), plots.read_bytes()
    capfd.readouterr()
    run_all(config)
    out = capfd.readouterr().out
    assert skip_lines(out) == [skip_line(config, stage) for stage in upstream]
    assert "=== evaluate ===" in out and "=== plots ===" in out
    assert snapshot(config, upstream) == before
    answers = [json.loads(line) for line in (config.stage_dir("evaluate") / "answers.jsonl").read_text().splitlines()]
    assert max(a["new_tokens"] for a in answers) == 5  # 12 in the finished run
    assert plots.read_bytes() != plots_before
    run_all(config)  # the new evaluation is the finished one now
    assert skip_lines(capfd.readouterr().out) == [skip_line(config, stage) for stage in STAGES]


def test_a_skipped_stage_command_prints_one_line_and_force_reruns_it(mini_run, tmp_path, capfd, monkeypatch):
    runs = copy_run(mini_run, tmp_path)
    config = mini_config(runs)
    evaluate = snapshot(config, ["evaluate"])
    capfd.readouterr()
    assert main(["evaluate", *cli_args(runs)]) == 0  # after an evaluation it prints the summary table
    assert capfd.readouterr().out == skip_line(config, "evaluate") + "\n"
    assert main(["data", "build", *cli_args(runs)]) == 0
    assert capfd.readouterr().out == skip_line(config, "data") + "\n"
    assert snapshot(config, ["evaluate"]) == evaluate

    plots = config.stage_dir("plots") / "manifest.json"
    before = plots.read_bytes()
    assert main(["plots", "--force", *cli_args(runs)]) == 0
    assert "up to date" not in capfd.readouterr().out and plots.read_bytes() != before

    # --force on the demo: no stage is up to date for it (run_all skips only what `skip` says)
    assert [manifest.skip(config, stage, force=True) for stage in STAGES] == [False] * len(STAGES)
    assert capfd.readouterr().out == ""
    import raftune.pipeline

    forced = []
    monkeypatch.setattr(raftune.pipeline, "run_all", lambda config, force: forced.append(force))
    monkeypatch.setattr(raftune.pipeline, "checked_config", lambda path, overrides: None)
    assert main(["demo", "--force"]) == 0 and main(["demo"]) == 0
    assert forced == [True, False]


def test_a_data_setting_reruns_every_stage(mini_run, tmp_path, capfd):
    runs = copy_run(mini_run, tmp_path)
    config = mini_config(runs, "data.rows_per_question=1")  # half the rows: a shorter training
    before = {stage: (config.stage_dir(stage) / "manifest.json").read_bytes() for stage in STAGES}
    capfd.readouterr()
    run_all(config)
    out = capfd.readouterr().out
    assert skip_lines(out) == [] and all(f"=== {stage} ===" in out for stage in STAGES)
    assert all((config.stage_dir(stage) / "manifest.json").read_bytes() != before[stage] for stage in STAGES)
    assert json.loads((config.stage_dir("data") / "manifest.json").read_text())["outputs"]["train_rows"] == 5


def test_a_failed_export_is_never_up_to_date(mini_run, tmp_path):
    config = mini_config(copy_run(mini_run, tmp_path))
    path = config.stage_dir("export") / "manifest.json"
    assert manifest.up_to_date(config, "export") == path
    written = json.loads(path.read_text())
    path.write_text(json.dumps({**written, "failed": ["q8_0: top-1 0.5 < 0.99"]}))
    assert manifest.up_to_date(config, "export") is None


def test_the_key_holds_no_credentials_and_input_files_by_content(tmp_path):
    spec = "[{name: remote, kind: openai, base_url: 'http://user:hunter2@127.0.0.1:9/v1', model: m}]"
    config = mini_config(tmp_path, "data.generator_base_url=http://user:hunter2@127.0.0.1:9/v1", f"evaluate.models={spec}")
    keys = {stage: manifest.stage_key(config, stage) for stage in STAGES}
    assert "hunter2" not in json.dumps(keys)
    assert keys["data"]["config"]["data"]["generator_base_url"] == "http://127.0.0.1:9/v1"
    assert keys["evaluate"]["config"]["evaluate"]["models"][0]["base_url"] == "http://127.0.0.1:9/v1"

    # a copy of the test set: the same content is the same key, a changed byte another
    testset = tmp_path / "testset.json"
    shutil.copy(config.evaluate.testset, testset)
    moved = mini_config(tmp_path, f"evaluate.testset={testset}")
    assert manifest.stage_key(moved, "export")["files"]["evaluate.testset"] == keys["export"]["files"]["evaluate.testset"]
    testset.write_text(testset.read_text().replace("?", "? "))
    assert manifest.stage_key(moved, "export")["files"]["evaluate.testset"] != keys["export"]["files"]["evaluate.testset"]


def test_code_version_covers_a_stages_layer_and_those_below(tmp_path, monkeypatch):
    package = tmp_path / "raftune"
    shutil.copytree(ROOT / "src" / "raftune", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(raftune, "__file__", str(package / "__init__.py"))

    def versions():
        manifest.code_version.cache_clear()
        return {stage: manifest.code_version(reads.module) for stage, reads in manifest.STAGES.items()}

    before = versions()
    with (package / "evaluate" / "metrics.py").open("a") as handle:
        handle.write("# an edit\n")
    after = versions()
    assert [stage for stage in STAGES if after[stage] != before[stage]] == ["evaluate", "plots"]
    with (package / "manifest.py").open("a") as handle:
        handle.write("# an edit\n")
    assert all(versions()[stage] != after[stage] for stage in STAGES)
    manifest.code_version.cache_clear()


def test_every_packaged_base_is_among_the_recorded_libraries():
    """A new version of a base's package reruns the stages that read it. A base assembled from part packages is pinned
    in raftune's code (version and sha256 of the whole file), which is in the key already."""
    assert {spec.package for spec in NAMED_BASES.values() if spec.module} <= set(manifest.LIBRARIES)
