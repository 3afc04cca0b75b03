"""Serverless: the Lambda handler on real event documents, the SAM template under cfn-lint,
the Azure Functions app called with azure.functions.HttpRequest, the Cloud Run service."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlharbor.deploy.base import DeploymentSource, default_image
from mlharbor.deploy.environment import replica_environment
from mlharbor.deploy.handlers import aws_lambda
from mlharbor.deploy.handlers.predictions import PredictionService
from mlharbor.deploy.serverless import (
    AzureFunctionsOptions,
    AzureFunctionsTarget,
    CloudRunOptions,
    CloudRunTarget,
    LambdaOptions,
    LambdaTarget,
)
from tests.deploy.conftest import Deployed
from tests.deploy.validators import crd_errors, load_docs

EVENTS = Path(__file__).parent / "events"


def source_of(deployed: Deployed) -> DeploymentSource:
    return DeploymentSource("churn@champion", deployed.version, default_image(deployed.version))


@pytest.fixture(scope="module")
def service(deployed: Deployed) -> PredictionService:
    return PredictionService.from_settings(deployed.settings, "churn@champion")


@pytest.fixture
def lambda_service(service: PredictionService) -> Iterator[PredictionService]:
    aws_lambda.install(service)
    yield service
    aws_lambda.install(None)


def event(name: str, body: Any, *, method: str = "POST", path: str = "/invocations"
          ) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EVENTS / name).read_text())
    text = json.dumps(body)
    if doc.get("isBase64Encoded"):
        text = base64.b64encode(text.encode()).decode()
    doc["body"] = text
    if "httpMethod" in doc:
        doc["httpMethod"], doc["path"] = method, path
    else:
        doc["rawPath"] = path
        doc["requestContext"]["http"].update(method=method, path=path)
    return doc


@pytest.mark.parametrize("name", ["apigateway-rest-v1.json", "apigateway-http-v2.json",
                                  "function-url.json"])
def test_lambda_answers_every_event_kind_like_the_python_api(
        deployed: Deployed, lambda_service: PredictionService, name: str) -> None:
    reply = aws_lambda.handler(event(name, {"dataframe_records": deployed.rows}), None)
    assert reply["statusCode"] == 200, reply
    body = json.loads(reply["body"])
    assert body["predictions"] == deployed.expected
    assert np.allclose(body["probabilities"], deployed.expected_proba, rtol=0, atol=1e-12)
    assert (body["model"], body["version"]) == ("churn", deployed.version.version)


def test_lambda_health_errors_and_unknown_routes(deployed: Deployed,
                                                 lambda_service: PredictionService) -> None:
    ping = aws_lambda.handler(event("apigateway-rest-v1.json", None, method="GET",
                                    path="/ping"), None)
    assert ping["statusCode"] == 200 and json.loads(ping["body"])["status"] == "ready"
    bad_rows = [{**deployed.rows[0], "tenure": "long"}]
    bad = aws_lambda.handler(event("apigateway-http-v2.json", {"inputs": bad_rows}), None)
    assert bad["statusCode"] == 400
    assert "tenure" in json.loads(bad["body"])["error"]["message"]
    not_json = event("function-url.json", None)
    not_json["body"] = "{oops"
    assert aws_lambda.handler(not_json, None)["statusCode"] == 400
    missing = aws_lambda.handler(event("function-url.json", {}, path="/nope"), None)
    assert missing["statusCode"] == 404
    assert aws_lambda.handler({"Records": []}, None)["statusCode"] == 400


def test_lambda_cold_start_reads_the_baked_registry(deployed: Deployed, tmp_path: Path) -> None:
    from mlharbor.deploy.bake import bake_version

    baked = tmp_path / "model"
    bake_version(deployed.registry, deployed.version, baked, actor="test")
    fresh = PredictionService.from_environment({
        "MLHARBOR_MODEL_REF": "churn@champion", "MLHARBOR_BAKED_DIR": str(baked),
        "MLHARBOR_HOME": str(tmp_path / "home")})
    assert fresh.version == deployed.version.version
    assert fresh.predict(deployed.rows)["predictions"] == deployed.expected


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    return subprocess.run([exe, "--", str(path)], capture_output=True, text=True, check=False)


def test_sam_template_passes_cfn_lint_and_a_broken_one_fails(deployed: Deployed,
                                                            tmp_path: Path) -> None:
    plan = LambdaTarget().plan(source_of(deployed), LambdaOptions(), tmp_path)
    text = plan.file("template.yaml").content
    template = yaml.safe_load(text)
    function = template["Resources"]["ModelFunction"]["Properties"]
    assert function["PackageType"] == "Image"
    assert function["ImageConfig"]["Command"] == ["mlharbor.deploy.handlers.aws_lambda.handler"]
    assert function["Environment"]["Variables"]["MLHARBOR_MODEL_REF"] == "churn@champion"
    assert {e["Type"] for e in function["Events"].values()} == {"Api", "HttpApi"}
    assert function["FunctionUrlConfig"]["AuthType"] == "AWS_IAM"
    good = tmp_path / "template.yaml"
    good.write_text(text)
    result = cfn_lint(good)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(template)
    broken["Resources"]["ModelFunction"]["Properties"]["MemorySize"] = "lots"
    broken["Resources"]["ModelFunction"]["Properties"]["Timeout"] = 5000
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(broken))
    failed = cfn_lint(bad)
    assert failed.returncode != 0 and "E" in failed.stdout


def test_azure_functions_app_answers_http_requests(deployed: Deployed,
                                                   service: PredictionService,
                                                   tmp_path: Path) -> None:
    func = pytest.importorskip("azure.functions", reason="pip install azure-functions")
    from mlharbor.deploy.handlers.azure_functions import create_function_app

    app = create_function_app(lambda: service)
    functions = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
    assert set(functions) == {"predict", "score", "health"}
    body = json.dumps({"dataframe_records": deployed.rows}).encode()
    for name in ("predict", "score"):
        request = func.HttpRequest("POST", f"http://localhost/api/{name}", body=body,
                                   headers={"content-type": "application/json"})
        reply = functions[name](request)
        assert reply.status_code == 200
        assert json.loads(reply.get_body())["predictions"] == deployed.expected
    health = functions["health"](func.HttpRequest("GET", "http://localhost/api/health",
                                                  body=b""))
    assert health.status_code == 200
    bad = functions["predict"](func.HttpRequest("POST", "http://localhost/api/predict",
                                                body=b"[1, 2]"))
    assert bad.status_code == 400
    assert json.loads(bad.get_body())["error"]["code"] == "schema_mismatch"


def test_azure_functions_app_folder(deployed: Deployed, tmp_path: Path) -> None:
    env = replica_environment(deployed.settings, "baked")
    target = AzureFunctionsTarget()
    result = target.deploy(source_of(deployed), AzureFunctionsOptions(env, deployed.registry),
                           output=tmp_path / "app", registry=deployed.registry, actor="test")
    app = tmp_path / "app"
    assert (app / "function_app.py").read_text().count("create_function_app()") == 1
    assert json.loads((app / "host.json").read_text())["version"] == "2.0"
    assert "azure-functions" in (app / "requirements.txt").read_text()
    assert (app / "model" / "mlharbor.db").is_file()
    settings = json.loads((app / "app-settings.json").read_text())
    assert settings["MLHARBOR_MODEL_REF"] == "churn@champion"
    assert result.applied == {"baked": True}
    compile((app / "function_app.py").read_text(), "function_app.py", "exec")
    # The Functions host starts the worker in the app root and names it in the environment.
    cold = PredictionService.from_environment({
        "MLHARBOR_MODEL_REF": "churn@champion", "AzureWebJobsScriptRoot": str(app),
        "MLHARBOR_HOME": str(tmp_path / "home")})
    assert cold.predict(deployed.rows)["predictions"] == deployed.expected


def test_cloud_run_service_matches_the_knative_schema(deployed: Deployed,
                                                      tmp_path: Path) -> None:
    env = replica_environment(deployed.settings, "baked")
    plan = CloudRunTarget().plan(source_of(deployed), CloudRunOptions(env), tmp_path)
    (doc,) = load_docs(plan.file("service.yaml").content)
    assert crd_errors(doc) == []
    template = doc["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/minScale"] == "0"
    (container,) = template["spec"]["containers"]
    assert container["image"] == "mlharbor/churn:1"
    assert container["ports"][0]["containerPort"] == 8080
    assert "PORT" not in {e["name"] for e in container["env"]}  # Cloud Run owns PORT
    container["ports"][0]["containerPort"] = "eighty"
    assert crd_errors(doc) != []
