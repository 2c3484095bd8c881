import subprocess
import sys
import time

from typer.testing import CliRunner

from mlpipe.cli import app
from mlpipe.spec import EXAMPLE_SPEC

runner = CliRunner()


def test_init_writes_the_example_and_will_not_overwrite(tmp_path):
    path = tmp_path / "mlpipe.yaml"
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 0 and path.read_text() == EXAMPLE_SPEC
    again = runner.invoke(app, ["init", str(path)])
    assert again.exit_code == 2 and "pass --force" in again.output


def test_version_lists_the_stack():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert "prefect 3.8.8" in result.output and "mlflow 3.17" in result.output


def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("search:\n  params:\n    n_trees: [1]\n")
    result = runner.invoke(app, ["train", "--config", str(spec)])
    assert result.exit_code == 2
    assert "unknown hyperparameter(s) n_trees" in result.output
    assert "Traceback" not in result.output


def test_a_bad_hyperparameter_value_fails_before_anything_runs_or_is_tracked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for values in ("n_estimators: [-3]", "max_depth: [deep]"):
        (tmp_path / "s.yaml").write_text(f"search:\n  params:\n    {values}\n")
        result = runner.invoke(app, ["train", "--config", "s.yaml"])
        assert result.exit_code == 2, result.output
        assert f"search.params.{values.split(':')[0]}:" in result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no store, no artifacts


def test_score_refuses_an_output_that_is_not_parquet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("a\n1\n")
    result = runner.invoke(app, ["score", "-m", "models:/m@a", "-i", "in.csv", "-o", "out/p.csv"])
    assert result.exit_code == 2
    assert "--output out/p.csv: predictions are written as Parquet; name the file p.parquet" in (
        result.output
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_commands_that_need_a_prefect_server_say_so_at_once_without_one(tmp_path):
    env = {"PREFECT_API_URL": None, "MLPIPE_HOME": str(tmp_path / "no-stack")}
    for command in (
        ["backfill", "batch_score", "--start", "2026-10-01", "--end", "2026-10-02"],
        ["deploy", "apply"],
        ["deploy", "triggers"],
    ):
        started = time.monotonic()
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 2, result.output
        needed = f"error: mlpipe {' '.join(command[:2] if command[0] == 'deploy' else command[:1])}"
        assert result.output.startswith(f"{needed} needs a Prefect server"), result.output
        assert "mlpipe up" in result.output and "PREFECT_API_URL=" in result.output
        assert time.monotonic() - started < 5  # no ephemeral server was started


def test_a_dask_cluster_without_a_prefect_server_is_refused_before_anything_starts(tmp_path):
    env = {"PREFECT_API_URL": None, "MLPIPE_HOME": str(tmp_path / "no-stack"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    result = runner.invoke(app, ["train", "--executor", "dask://127.0.0.1:8786"], env=env)
    assert result.exit_code == 2 and "set PREFECT_API_URL" in result.output, result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_data_errors_fail_before_any_server_starts(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none.csv"), "--target", "y"])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["train", "--cv", "500", "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "search.cv: 500 folds need at least 500 training rows; boston has 404" in result.output


def test_help_does_not_import_the_heavy_stack():
    heavy = "('prefect', 'mlflow', 'sklearn')"
    code = f"import sys; import mlpipe.cli; print(any(m in sys.modules for m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_command_and_option_the_readme_shows_exists():
    """Each `mlpipe CMD [SUB] --option` in the README's examples is one the CLI accepts."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    fenced = re.findall(r"```([a-z]*)\n(.*?)```", readme, re.S)
    blocks = "\n".join(text for lang, text in fenced if lang in ("", "bash", "console"))
    commands = [
        line.strip().removeprefix("$ ").removeprefix(".venv/bin/").removeprefix("mlpipe ")
        for line in blocks.replace("\\\n", " ").splitlines()
        if re.match(r"(\$ )?(\.venv/bin/)?mlpipe [a-z]+( |$)", line.strip())
    ]
    seen = set()
    for line in commands:
        words = line.split()
        group = words[0] in ("deploy", "stream") and len(words) > 1 and words[1][0] != "-"
        command = words[:2] if group else words[:1]
        helptext = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert helptext.exit_code == 0, f"mlpipe {' '.join(command)}: {helptext.output}"
        for option in re.findall(r"(?<!\S)(--[a-z-]+)", line):
            assert option in helptext.output, f"mlpipe {' '.join(command)} has no {option}"
        seen.add(" ".join(command))
    expected = {"score", "deploy apply", "deploy k8s", "deploy triggers", "backfill", "up"}
    expected |= {"status", "down", "serve"}
    expected |= {"stream", "train"}
    assert expected | {"stream put", "stream read"} <= seen


def test_score_says_which_options_go_with_a_database(tmp_path):
    cases = [
        (["-i", "x.csv", "-o", "y.parquet", "--table", "houses"], "for a database --input"),
        (["-i", "sqlite:///x.db", "--table", "h", "-o", "sqlite:///y.db"], "--output-table"),
        (["-i", "x.csv", "-o", "y.parquet", "--partition", "day=1"], "for a database --output"),
        (["-i", "sqlite:///x.db", "--table", "h", "--query", "SELECT 1", "-o", "y.parquet"],
         "(one)"),
        (["-i", "postgresql://u:pw@h/db", "--table", "h", "-o", "y.parquet"], "holds a password"),
        (["-i", "sqlite:///x.db", "--table", "h", "-o", "sqlite:///y.db", "--output-table", "t",
          "--partition", "2026-11-22"], "KEY=VALUE"),
    ]  # fmt: skip
    for args, words in cases:
        result = runner.invoke(app, ["score", "-m", str(tmp_path / "no-model"), *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "Traceback" not in result.output and "u:pw" not in result.output


def test_shard_flags_are_checked_before_any_backend_starts(tmp_path):
    def train(*args: str, **env: str):
        result = runner.invoke(app, ["train", "--artifacts-dir", str(tmp_path), *args], env=env)
        assert result.exit_code == 2, result.output
        return result.output

    assert "index must be 0..1" in train("--shard", "2/2")
    assert "JOB_COMPLETION_INDEX is 1" in train("--shard", "0/2", JOB_COMPLETION_INDEX="1")
    assert "this spec and data give search" in train("--finalize", "0000000000")
    assert "executor" in train("--executor", "ray://x")
    assert "--wait applies to --finalize and --shard only" in train("--wait", "5")
    assert "--wait -1.0: give seconds >= 0" in train("--shard", "0/2", "--wait", "-1")
    assert "--shard and --finalize are separate steps" in train("--shard", "0/2", "--finalize", "x")


def test_serve_refuses_a_model_that_is_not_one_before_it_starts():
    bad = runner.invoke(app, ["serve", "--model", "nowhere/"])
    assert bad.exit_code == 2 and "not a folder with an MLmodel file" in bad.output
    workers = runner.invoke(app, ["serve", "--model", "nowhere/", "--workers", "0"])
    assert workers.exit_code == 2 and "--workers" in workers.output


def test_every_command_takes_verbose_and_then_shows_the_traceback():
    from mlpipe.errors import UserError

    for group in ([], ["deploy"], ["stream"]):
        listed = runner.invoke(app, [*group, "--help"]).output
        assert "Commands" in listed
    commands = [["train"], ["serve"], ["score"], ["backfill"], ["up"], ["status"], ["down"],
                ["init"], ["version"], ["deploy", "apply"], ["deploy", "triggers"],
                ["deploy", "serve"], ["deploy", "k8s"], ["stream"], ["stream", "put"],
                ["stream", "read"], ["stream", "endpoint"]]  # fmt: skip
    for command in commands:
        assert "--verbose" in runner.invoke(app, [*command, "--help"]).output, command
    quiet = runner.invoke(app, ["serve", "--model", "nowhere/"])
    assert quiet.exit_code == 2 and quiet.exception is not None and "Traceback" not in quiet.output
    loud = runner.invoke(app, ["serve", "--model", "nowhere/", "--verbose"])
    assert isinstance(loud.exception, UserError)


def test_help_texts_are_paragraphs_not_the_docstrings_line_breaks():
    wide = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    listing = runner.invoke(app, ["--help"], env=wide).output
    assert "bad rows to rejects; the inputs' drift from the training data." in listing
    deploy = runner.invoke(app, ["deploy", "--help"], env=wide).output
    assert "re-scores the latest partition, tune runs weekly" in deploy
    score = runner.invoke(app, ["score", "--help"], env=wide).output
    assert "in bounded memory; bad rows to rejects;" in score


def test_the_ui_hints_work_without_the_venv_activated(monkeypatch):
    from pathlib import Path

    from mlpipe.cli import render

    venv_bin = Path(sys.executable).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a shell that did not `source .venv/...`
    assert render._command("mlflow") == str(venv_bin / "mlflow")
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    assert render._command("prefect") == "prefect"


def test_readers_in_an_empty_folder_name_the_store_and_create_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("a\n1\n")
    env = {"MLFLOW_TRACKING_URI": None, "MLPIPE_HOME": str(tmp_path / "no-stack")}
    for command in (
        ["serve", "--model", "models:/boston-rf@champion", "--port", "0"],
        ["score", "-m", "models:/boston-rf@champion", "-i", "in.csv", "-o", "p.parquet"],
    ):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 2, (command, result.output)
        assert result.output.startswith(
            f"error: the MLflow store sqlite:///mlflow.db ({tmp_path / 'mlflow.db'}; "
        ), result.output
        assert "does not exist: train one there with `mlpipe train`" in result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"], command  # no store
