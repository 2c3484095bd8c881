import subprocess
import sys

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
