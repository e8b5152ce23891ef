import subprocess
import sys

from raftune.cli import main


def test_help_describes_every_option(capsys):
    for argv in (["--help"], ["demo", "--help"], ["train", "--help"]):
        try:
            main(argv)
        except SystemExit as stop:
            assert stop.code == 0
        out = capsys.readouterr().out
        assert "usage: raftune" in out
    assert "--config" in out and "key=value" in out


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "raftune", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout


def test_wrong_key_is_one_line_and_non_zero(tmp_path, capsys):
    bad = tmp_path / "x.yaml"
    bad.write_text("run: x\nloraa: {}\n")
    assert main(["data", "build", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'loraa'" in err and str(bad) in err


def test_missing_file_is_one_line_and_non_zero(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"raftune: error: config file not found: {tmp_path / 'missing.yaml'}"
    assert main(["data", "build", f"data.corpus={tmp_path / 'nowhere'}"]) == 2
    assert "corpus folder not found" in capsys.readouterr().err


def test_config_errors_print_no_credentials(tmp_path, capsys):
    """A URL's user:password@ never reaches the terminal: not in a value echoed whole, nor in one shortened to 80
    characters (which could cut the `@` that marks the credentials)."""
    long_user = "u" * 61  # repr "['http://uuu...:secret" ends at character 77, where a long value is cut
    recipes = {
        "kind.yaml": "evaluate:\n  models:\n    - {name: remote, kind: opnai, base_url: 'http://user:secret@host/v1', "
                     "model: m}\n",
        "cut.yaml": f"data:\n  generator_base_url: ['http://{long_user}:secret@host/v1']\n",
    }
    for name, text in recipes.items():
        (tmp_path / name).write_text(text)
        assert main(["data", "build", "--config", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "secret" not in err and str(tmp_path / name) in err
    assert err == (f"raftune: error: {tmp_path / 'cut.yaml'}: data.generator_base_url=['http://host/v1']: expected a "
                   "string or null\n")


def test_bitsandbytes_kernels_notice_is_not_printed():
    """bitsandbytes 0.50 logs a missing `kernels` package when imported on CPUs with AVX512-BF16; raftune drops that
    message (here it is also logged by hand, so that any CPU shows it) and no other of the same logger."""
    code = ("import logging, raftune.train; log = logging.getLogger('bitsandbytes.backends.cpu.ops'); "
            "log.warning(\"Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.\"); "
            "log.warning('another bitsandbytes warning')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0
    assert "gemm_4bit_forward" not in result.stderr and "another bitsandbytes warning" in result.stderr


def test_flag_that_needs_another_is_refused_alone(tmp_path, capsys):
    """`evaluate --out DIR` without `--answers` used to run the recipe's evaluation and replace runs/<run>/evaluate;
    such a flag alone now stops before any work with exit status 2, naming the flag it needs."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: r\nruns_dir: {tmp_path / 'runs'}\n")
    cases = {("evaluate", "--out", "x"): "evaluate --out applies only with --answers",
             ("plots", "--out", "x"): "plots --out applies only with --results",
             ("merge", "--unsafe-4bit"): "merge --unsafe-4bit applies only with --adapter",
             ("export", "--type", "q8_0"): "export --type applies only with --model or --adapter"}
    for argv, message in cases.items():
        assert main([*argv, "--config", str(recipe)]) == 2
        assert capsys.readouterr().err == f"raftune: error: {message}\n"
    assert not (tmp_path / "runs").exists()
