"""The files Pulumi and GitHub read, checked by their own rules: Pulumi.yaml and the stack
files by Pulumi's project schema and the CLI's loader (tests/pulumi_project_rules.py), the
workflow by GitHub's workflow schema (action-validator). Each check is also run on a broken
copy, to show it can fail. The files are read at run time: settings change, these rules don't.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import pulumi_project_rules as rules
from tests.conftest import DEV_STACK, ROOT, need

PROJECT = ROOT / "Pulumi.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "preview.yml"
ACTION_VALIDATOR = ROOT / ".tools" / "node_modules" / ".bin" / "action-validator"
STACK_FILES = sorted(ROOT.glob("Pulumi.*.yaml"))


def need_jsonschema() -> None:
    need(importlib.util.find_spec("jsonschema") is not None,
         "jsonschema is not installed (bash scripts/setup.sh installs requirements-dev.txt)")


def project() -> dict:
    return rules.load_yaml(PROJECT)


def declared(project: dict, type_name: str) -> str:
    """A project key declared with this type, so a broken copy can break it."""
    keys = [k for k, e in project["config"].items() if isinstance(e, dict) and e.get("type") == type_name]
    assert keys, f"Pulumi.yaml declares no key of type {type_name}; these tests need one to break"
    return keys[0]


def write_project(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "Pulumi.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def with_secret_placeholders(project: dict, stack: dict) -> dict:
    """The example stack holds no secrets: the README has the user set them with
    `pulumi config set --secret`. Add what that leaves behind, so every other key must pass."""
    stack = copy.deepcopy(stack)
    for key, entry in project["config"].items():
        full_key = key if ":" in key else f"{project['name']}:{key}"
        if isinstance(entry, dict) and entry.get("secret"):
            stack["config"].setdefault(full_key, {"secure": "v1:placeholder"})
    return stack


# --- Pulumi.yaml --------------------------------------------------------------------------

def test_pulumi_yaml_passes_pulumis_project_schema():
    need_jsonschema()
    assert rules.schema_problems(project()) == []


def test_pulumi_yaml_passes_the_cli_loader_checks():
    need_jsonschema()
    assert rules.project_file_problems(PROJECT) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        pytest.param(lambda p, k: p["config"][k].update(type="str"),
                     "/type: 'str' is not one of", id="unknown-type"),
        pytest.param(lambda p, k: p["config"][k].update(descripton="x"),
                     "'descripton' was unexpected", id="unknown-attribute"),
        pytest.param(lambda p, k: p["config"][k].update(secret="yes"),
                     "/secret: 'yes' is not of type 'boolean'", id="secret-not-boolean"),
        pytest.param(lambda p, k: p.update(name=""), "#/name: '' should be non-empty", id="empty-name"),
    ],
)
def test_schema_refuses_a_broken_pulumi_yaml(tmp_path, break_it, expected):
    need_jsonschema()
    broken = project()
    break_it(broken, declared(broken, "string"))
    problems = rules.project_file_problems(write_project(tmp_path, broken))
    assert any(expected in p for p in problems), problems


def test_loader_refuses_an_array_without_items(tmp_path):
    need_jsonschema()
    broken = project()
    key = declared(broken, "array")
    del broken["config"][key]["items"]
    assert rules.project_file_problems(write_project(tmp_path, broken)) == [
        f"The configuration key '{key}' declares an array but does not specify the underlying type "
        "via the 'items' attribute"
    ]


def test_loader_refuses_a_default_of_the_wrong_type(tmp_path):
    need_jsonschema()
    broken = project()
    string_key, array_key = declared(broken, "string"), declared(broken, "array")
    broken["config"][string_key]["default"] = ["a", "list"]
    broken["config"][array_key]["default"] = ["fine", 25]  # a number among strings
    items = broken["config"][array_key]["items"]["type"]
    expected = "The default value specified for configuration key '{}' is not of the expected type '{}'"
    assert sorted(rules.project_file_problems(write_project(tmp_path, broken))) == sorted([
        expected.format(string_key, "string"),
        expected.format(array_key, f"array<{items}>"),
    ])


def test_loader_refuses_default_with_value_and_a_typed_foreign_key(tmp_path):
    need_jsonschema()
    broken = project()
    key = declared(broken, "string")
    broken["config"][key].update(default="a", value="b")
    broken["config"]["oci:region"] = {"type": "string", "value": "eu-frankfurt-1"}
    problems = rules.project_file_problems(write_project(tmp_path, broken))
    assert f"project config '{key}' cannot have both a 'default' and 'value' attribute" in problems
    assert ("Configuration key 'oci:region' is not namespaced by the project and should not define a type"
            in problems)


# --- Stack files ---------------------------------------------------------------------------

@pytest.mark.parametrize("stack_file", STACK_FILES, ids=lambda p: p.name)
def test_stack_file_values_have_the_declared_types(stack_file):
    stack_name = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    stack = with_secret_placeholders(project(), rules.load_yaml(stack_file))
    problems = rules.stack_problems(project(), stack, stack_name)
    assert problems == [], f"`pulumi preview --stack {stack_name}` would refuse {stack_file.name}"


def test_the_example_stack_lacks_only_the_secrets():
    secrets = sorted(k for k, e in project()["config"].items() if isinstance(e, dict) and e.get("secret"))
    problems = rules.stack_file_problems(PROJECT, DEV_STACK)
    if secrets:
        plural = "values" if len(secrets) > 1 else "value"
        assert problems == [f"Stack 'dev' is missing configuration {plural} " + ", ".join(f"'{k}'" for k in secrets)]
    else:
        assert problems == []


def test_stack_checks_refuse_wrong_types_plain_secrets_and_missing_keys(tmp_path):
    proj = project()
    name = proj["name"]
    string_key, array_key = declared(proj, "string"), declared(proj, "array")
    secret_key = next(k for k, e in proj["config"].items() if isinstance(e, dict) and e.get("secret"))
    proj["config"]["exampleRequired"] = {"type": "integer", "description": "declared without a default"}
    stack = with_secret_placeholders(proj, rules.load_yaml(DEV_STACK))
    stack["config"][f"{name}:{string_key}"] = ["not", "a", "string"]
    stack["config"][f"{name}:{array_key}"] = "not-a-list"
    stack["config"][f"{name}:{secret_key}"] = "typed-in-plain-text"
    stack_path = tmp_path / "Pulumi.broken.yaml"
    stack_path.write_text(yaml.safe_dump(stack, sort_keys=False), encoding="utf-8")
    items = proj["config"][array_key]["items"]["type"]
    assert sorted(rules.stack_file_problems(write_project(tmp_path, proj), stack_path)) == sorted([
        "Stack 'broken' is missing configuration value 'exampleRequired'",
        f"Stack 'broken' with configuration key '{string_key}' must be of type 'string'",
        f"Stack 'broken' with configuration key '{array_key}' must be of type 'array<{items}>'",
        f"Stack 'broken' with configuration key '{secret_key}' must be encrypted as it's secret",
    ])


def test_a_secret_with_a_default_is_refused_on_a_stack_that_does_not_set_it():
    proj = {"name": "p", "config": {"token": {"type": "string", "secret": True, "default": "x"}}}
    assert rules.loader_problems(proj) == []  # the project loads ...
    assert rules.stack_problems(proj, {"config": {}}, "s") == [  # ... but no stack without the key runs
        "Stack 's' with configuration key 'token' must be encrypted as it's secret"
    ]


@pytest.mark.parametrize(
    ("type_name", "stack_text", "accepted"),
    [
        # A plain stack value reaches the CLI as its text: any scalar is a string.
        ("string", "6", True),
        ("string", "[a]", False),
        ("string", "2026-01-31", True),
        ("string", "''", True),
        ("string", "", False),  # empty is null, not ""
        ("integer", "6", True),
        ("integer", "6.0", True),
        ("integer", "6.5", False),
        ("integer", "six", False),
        ("boolean", "true", True),
        ("boolean", "True", True),
        ("boolean", "yes", False),  # YAML 1.1 reads a boolean; the CLI's yaml.v3 a string
        ("boolean", "1", False),
        ("object", "{a: 1}", True),
        ("object", "[a]", False),
    ],
)
def test_stack_values_are_typed_the_way_the_cli_types_them(type_name, stack_text, accepted):
    proj = {"name": "p", "config": {"k": {"type": type_name}}}
    stack = yaml.load(f"config:\n  p:k: {stack_text}\n", Loader=rules.Yaml12Loader)
    assert (rules.stack_problems(proj, stack, "s") == []) is accepted


@pytest.mark.parametrize(
    ("items", "stack_text", "accepted"),
    [
        ("string", "[a, b]", True),
        ("string", "[a, 25]", False),  # inside a list, numbers stay numbers
        ("integer", "[1, '2']", True),
        ("boolean", "[true, 'false']", True),
    ],
)
def test_array_items_are_typed_the_way_the_cli_types_them(items, stack_text, accepted):
    proj = {"name": "p", "config": {"k": {"type": "array", "items": {"type": items}}}}
    stack = yaml.load(f"config:\n  p:k: {stack_text}\n", Loader=rules.Yaml12Loader)
    assert (rules.stack_problems(proj, stack, "s") == []) is accepted


# --- The workflow --------------------------------------------------------------------------

def action_validator(path: Path) -> subprocess.CompletedProcess:
    need(ACTION_VALIDATOR.exists(),
         "action-validator is not installed (bash scripts/setup.sh installs it into .tools/)")
    # cwd: it checks `paths:` filters against the files of the repository it runs in.
    return subprocess.run([str(ACTION_VALIDATOR), str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_workflow_passes_githubs_workflow_schema():
    result = action_validator(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        pytest.param(lambda w: w.update(permisions=w.pop("permissions")),
                     "'permisions' is not allowed", id="top-level-typo"),
        pytest.param(lambda w: w["jobs"][next(iter(w["jobs"]))].update({"runs-onn": "ubuntu-24.04"}),
                     "'runs-onn' is not allowed", id="job-level-typo"),
    ],
)
def test_action_validator_refuses_a_broken_workflow(tmp_path, break_it, expected):
    # PyYAML reads the key `on:` as the boolean True; load it as YAML 1.2 to write it back.
    workflow = yaml.load(WORKFLOW.read_text(encoding="utf-8"), Loader=rules.Yaml12Loader)
    break_it(workflow)
    broken = tmp_path / "preview.yml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
    result = action_validator(broken)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and expected in output, output
