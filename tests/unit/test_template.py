"""The AWS SAM template (deploy/aws/template.yaml): cfn-lint accepts it, and the settings that
make the stream lose nothing and score once are there and agree with the code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import decode

from mlpipe.stream.function import ENVIRONMENT, FunctionSettings
from mlpipe.stream.ledger import DynamoLedger

TEMPLATE = Path(__file__).parents[2] / "deploy/aws/template.yaml"


@pytest.fixture(scope="module")
def template() -> dict:
    parsed, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return parsed


@pytest.fixture(scope="module")
def function(template) -> dict:
    return template["Resources"]["ScoringFunction"]["Properties"]


@pytest.fixture(scope="module")
def mapping(function) -> dict:
    (event,) = function["Events"].values()
    assert event["Type"] == "Kinesis"
    return event["Properties"]


def resource_type(template: dict, reference: dict) -> str:
    """The type of the resource a !Ref or !GetAtt names."""
    name = reference.get("Ref") or reference["Fn::GetAtt"][0]
    return template["Resources"][name]["Type"]


def test_cfn_lint_finds_nothing():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_mapping_reports_partial_failures_bisects_and_gives_up_in_bounded_time(
    template, mapping
):
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    # -1 (Lambda's default) means forever: a poison batch would block its shard for a week
    assert 0 <= mapping["MaximumRetryAttempts"] <= 10_000
    assert 60 <= mapping["MaximumRecordAgeInSeconds"] <= 604_800
    failure = mapping["DestinationConfig"]["OnFailure"]
    assert resource_type(template, failure["Destination"]) == "AWS::SQS::Queue"
    assert resource_type(template, mapping["Stream"]) == "AWS::Kinesis::Stream"
    assert mapping["StartingPosition"] == "TRIM_HORIZON"  # lose nothing already on the stream


def test_the_function_runs_the_handler_from_the_image(function):
    assert function["PackageType"] == "Image"
    assert function["ImageConfig"]["EntryPoint"] == ["python", "-m", "awslambdaric"]
    (handler,) = function["ImageConfig"]["Command"]
    module, name = handler.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
    assert importlib.util.find_spec("awslambdaric") is not None  # installed with mlpipe


def test_the_environment_configures_the_function_completely(template, function):
    variables = function["Environment"]["Variables"]
    unknown = set(variables) - set(ENVIRONMENT.values()) - {"HOME"}
    assert not unknown, f"variables the function does not read: {unknown}"
    required = [
        ENVIRONMENT[name]
        for name, field in FunctionSettings.model_fields.items()
        if field.is_required()
    ]
    assert set(required) <= set(variables)
    for name in ("MLPIPE_OUTPUT_STREAM", "MLPIPE_DEAD_LETTER_STREAM"):
        assert resource_type(template, variables[name]) == "AWS::Kinesis::Stream"
    table = template["Resources"][variables["MLPIPE_IDEMPOTENCY_TABLE"]["Ref"]]["Properties"]
    # the table DynamoLedger writes
    assert table["KeySchema"] == list(DynamoLedger.KEY_SCHEMA)
    assert table["AttributeDefinitions"] == list(DynamoLedger.ATTRIBUTES)
    ttl = {"AttributeName": DynamoLedger.TTL_ATTRIBUTE, "Enabled": True}
    assert table["TimeToLiveSpecification"] == ttl


def test_the_function_may_write_where_it_writes(template, function):
    variables = function["Environment"]["Variables"]
    granted = {
        (kind, next(iter(target.values())).get("Ref", ""))
        for policy in function["Policies"]
        for kind, target in policy.items()
        if kind != "Fn::If"
    }
    assert ("KinesisCrudPolicy", variables["MLPIPE_OUTPUT_STREAM"]["Ref"]) in granted
    assert ("KinesisCrudPolicy", variables["MLPIPE_DEAD_LETTER_STREAM"]["Ref"]) in granted
    assert ("DynamoDBCrudPolicy", variables["MLPIPE_IDEMPOTENCY_TABLE"]["Ref"]) in granted
    assert any("SQSSendMessagePolicy" in policy for policy in function["Policies"])


def test_the_function_may_read_only_the_artifact_prefix_when_given_a_bucket(template, function):
    assert template["Parameters"]["ArtifactBucket"]["Default"] == ""  # proxied: no S3 access
    [conditional] = [p["Fn::If"] for p in function["Policies"] if "Fn::If" in p]
    condition, policy, otherwise = conditional
    assert otherwise == {"Ref": "AWS::NoValue"}
    assert template["Conditions"][condition] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ArtifactBucket"}, ""]}]
    }
    actions = {s["Action"]: s for s in policy["Statement"]}
    assert set(actions) == {"s3:GetObject", "s3:ListBucket"}  # nothing that writes
    assert actions["s3:GetObject"]["Resource"]["Fn::Sub"].endswith(
        ":s3:::${ArtifactBucket}/${ArtifactPrefix}/*"
    )
    listing = actions["s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${ArtifactPrefix}/*"}}}
