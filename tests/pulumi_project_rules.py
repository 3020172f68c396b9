"""The Pulumi CLI's checks on Pulumi.yaml and a stack file, for tests on a machine without the CLI.

The CLI loads a project in two steps (LoadProjectBytes, sdk/go/common/workspace/loaders.go):
the JSON schema (fixtures/pulumi/project.json), then Go checks the schema cannot express.
Before a stack runs it merges the project's config into the stack's and checks the stack's
values (ValidateStackConfigAndApplyProjectConfig, pkg/workspace/config.go). Both Go steps
are mirrored here, one function per Go function, read at pulumi/pulumi
1b5949891b3cefcb9974752b24a5ecef0acc86c8 (the commit fixtures/pulumi/README.md names).

Where the CLI stops at the first problem, these functions list them all. Messages are the
CLI's, so a failing test reads like the `pulumi preview` it stands for.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILE = Path(__file__).resolve().parent / "fixtures" / "pulumi" / "project.json"
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class Yaml12Loader(yaml.SafeLoader):
    """Reads YAML as the CLI's yaml.v3 does. PyYAML reads YAML 1.1, where yes/no/on/off are
    booleans and 2026-01-31 is a date; yaml.v3 reads both as strings, so a boolean key set
    to `yes` is refused there and must be refused here."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Yaml12Loader)


# --- Pulumi.yaml: the schema -----------------------------------------------------------

def schema_problems(project: Any) -> list[str]:
    """ValidateProject (sdk/go/common/workspace/project.go): the document against the schema."""
    import jsonschema  # here, so a machine without it skips (or, under CI, fails) only these checks
    from jsonschema.exceptions import best_match

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    problems = []
    for error in validator.iter_errors(project):
        # A oneOf error ("... is not valid under any of the given schemas") says little;
        # best_match descends to the branch that says what is wrong.
        cause = best_match([error])
        problems.append(f"#/{'/'.join(map(str, cause.absolute_path))}: {cause.message}")
    return sorted(problems)


# --- Pulumi.yaml: the loader's Go checks --------------------------------------------------

def key_is_project_namespaced(project_name: str, key: str) -> bool:
    """configKeyIsNamespacedByProject (sdk/go/common/workspace/project.go)."""
    return ":" not in key or key.startswith(project_name + ":")


def declarations(project: dict) -> dict[str, dict]:
    """RewriteShorthandConfigValues (sdk/go/common/workspace/project.go): `key: value`
    is a default for a project key, a value for another namespace's key. Only string, int,
    bool and list shorthands are rewritten (isPrimitiveValue, isArray)."""
    declared = {}
    for key, entry in (project.get("config") or {}).items():
        if isinstance(entry, (str, int, bool, list)):
            slot = "default" if key_is_project_namespaced(project["name"], key) else "value"
            entry = {slot: entry}
        declared[key] = entry
    return declared


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # Go has no bool-is-int


def config_value_matches(type_name: str, items: dict | None, value: Any) -> bool:
    """ValidateConfigValue (sdk/go/common/workspace/project.go)."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if _is_int(value):
            return True
        # YAML and JSON numbers may reach Go as float64; a whole one counts.
        if isinstance(value, float):
            return math.isfinite(value) and value == math.trunc(value)
        if isinstance(value, str):
            return re.fullmatch(r"[+-]?[0-9]+", value) is not None  # strconv.Atoi
        return False
    if type_name == "boolean":
        return value in ("true", "false") if isinstance(value, str) else isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    # Any other type name, "array" included, must be an array with an item type.
    if not isinstance(value, list) or items is None:
        return False
    return all(config_value_matches(items.get("type", ""), items.get("items"), item) for item in value)


def full_type_name(type_name: str, items: dict | None) -> str:
    """InferFullTypeName (sdk/go/common/workspace/project.go): array<string>, ..."""
    if items is not None:
        return f"array<{full_type_name(items.get('type', ''), items.get('items'))}>"
    return type_name


def loader_problems(project: dict) -> list[str]:
    """(*Project).Validate (sdk/go/common/workspace/project.go), run on the declarations
    after the shorthand rewrite. A `default: null` is no default (Go's nil `any`)."""
    problems = []
    for key, entry in declarations(project).items():
        type_name, items = entry.get("type"), entry.get("items")
        default, value = entry.get("default"), entry.get("value")
        if default is not None and value is not None:
            problems.append(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
        if key_is_project_namespaced(project["name"], key):
            if type_name == "array" and items is None:
                problems.append(
                    f"The configuration key '{key}' declares an array but does not specify the "
                    "underlying type via the 'items' attribute"
                )
            elif type_name is not None and default is not None \
                    and not config_value_matches(type_name, items, default):
                problems.append(
                    f"The default value specified for configuration key '{key}' is not of the "
                    f"expected type '{full_type_name(type_name, items)}'"
                )
        elif type_name is not None:
            problems.append(
                f"Configuration key '{key}' is not namespaced by the project and should not define a type"
            )
        elif default is not None:
            problems.append(
                f"Configuration key '{key}' is not namespaced by the project and should not define a "
                "default value. Did you mean to use the 'value' attribute instead of 'default'?"
            )
        elif value is None:
            problems.append(f"Configuration key '{key}' is namespaced and must provide an attribute 'value'")
    return problems


# --- A stack file against the project --------------------------------------------------

def _is_secure(value: Any) -> bool:
    """isSecureValue and object.Secure (sdk/go/common/resource/config/object.go): a
    `{secure: ...}` mapping, or an object holding one."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("secure"), str):
            return True
        return any(_is_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_secure(v) for v in value)
    return False


def _as_the_cli_sees_it(value: Any) -> Any:
    """What validateStackConfigValue checks: a scalar as its text (object.MarshalString,
    sdk/go/common/resource/config/object.go: `6` is "6", `true` is "true"), a list or a
    mapping decoded from its JSON, where every number is a float64."""
    if value is None:
        return None  # an empty value is JSON null to the CLI, which no type accepts
    if isinstance(value, (dict, list)):
        return json.loads(json.dumps(value), parse_int=float)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))  # Go's JSON writes 6.0 as 6
    return value if isinstance(value, str) else json.dumps(value)


def stack_problems(project: dict, stack: Any, stack_name: str) -> list[str]:
    """mergeConfig, validateStackConfigValues and validateStackConfigValue
    (pkg/workspace/config.go) for a stack file with no ESC environment.

    The project's defaults fill the keys the stack does not set, then every typed key is
    checked: a secret one must be encrypted (so a secret with a default is refused on any
    stack that does not set it), and its value must have the declared type. Encrypted
    values are not decrypted here, so only their presence is checked."""
    name = project["name"]
    values = dict((stack or {}).get("config") or {})
    problems = []
    missing = []
    for key, entry in sorted(declarations(project).items()):
        full_key = key if ":" in key else f"{name}:{key}"  # parseConfigKey
        if full_key in values:
            continue
        fallback = entry.get("value") if entry.get("value") is not None else entry.get("default")
        if fallback is None:
            if full_key.split(":", 1)[0] == name:
                missing.append(key)
            continue
        values[full_key] = fallback
    if missing:
        # missingStackConfigurationKeysError (formatting simplified)
        plural = "values" if len(missing) > 1 else "value"
        listed = ", ".join(f"'{k}'" for k in missing)
        problems.append(f"Stack '{stack_name}' is missing configuration {plural} {listed}")

    for key, entry in sorted(declarations(project).items()):
        full_key = key if ":" in key else f"{name}:{key}"
        if entry.get("type") is None or full_key not in values:
            continue
        value = values[full_key]
        if entry.get("secret") and not _is_secure(value):
            problems.append(
                f"Stack '{stack_name}' with configuration key '{key}' must be encrypted as it's secret"
            )
            continue
        if _is_secure(value):
            continue  # the CLI checks the decrypted value; we cannot decrypt
        if not config_value_matches(entry["type"], entry.get("items"), _as_the_cli_sees_it(value)):
            problems.append(
                f"Stack '{stack_name}' with configuration key '{key}' must be of type "
                f"'{full_type_name(entry['type'], entry.get('items'))}'"
            )
    return problems


def project_file_problems(path: Path) -> list[str]:
    """Everything `pulumi` refuses in a Pulumi.yaml, schema first, as the loader runs."""
    project = load_yaml(path)
    problems = schema_problems(project)
    return problems or loader_problems(project)


def stack_file_problems(project_path: Path, stack_path: Path) -> list[str]:
    """Everything `pulumi preview --stack <name>` refuses in Pulumi.<name>.yaml."""
    stack_name = stack_path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return stack_problems(load_yaml(project_path), load_yaml(stack_path), stack_name)
