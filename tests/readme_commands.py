"""The commands the README tells a user to type, and what is wrong with them.

`pulumi config set` and `pulumi config get` lines are checked against the settings models
(every `mailgate:` key path must exist, a secret must be set with --secret) and the
providers' keys;
`python -m mailgate ...` lines against the command line's real subcommands and options.
"""

from __future__ import annotations

import re
import shlex
import typing

from pydantic import BaseModel

from mailgate import cli
from mailgate.settings import NAMESPACE, SECRET_KEYS, SECRET_OBJECT_KEYS, Settings

# The provider configuration keys the README may name (pulumi-oci's and pulumi-tailscale's).
PROVIDER_KEYS = {
    "oci": {"tenancyOcid", "userOcid", "fingerprint", "region", "privateKey", "privateKeyPath",
            "privateKeyPassword", "configFileProfile", "auth"},
    "tailscale": {"tailnet", "oauthClientId", "oauthClientSecret", "apiKey", "baseUrl", "scopes"},
}
FENCE = re.compile(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", re.S | re.M)  # also inside list items
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
PATH_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def commands(readme: str) -> list[str]:
    """Every command line in fenced blocks and inline code, inline ones joined across lines."""
    found = []
    for block in FENCE.findall(readme):
        joined = block.replace("\\\n", " ")
        found += [line.split(" # ")[0].strip() for line in joined.splitlines()]
    without_blocks = FENCE.sub("", readme)
    found += [" ".join(span.split()) for span in INLINE.findall(without_blocks)]
    return [line for line in found if line]


def _words(line: str) -> list[str]:
    """The command's words, up to a redirection, a pipe or `&&` (quotes as the shell reads them)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    try:
        for word in lexer:
            if word and all(c in "();<>|&" for c in word):
                break
            words.append(word)
    except ValueError:  # an unclosed quote: a line cut short in prose
        return line.split()
    return words


def _model_path_problem(parts: list[str], model: type[BaseModel] = Settings) -> str | None:
    for index, part in enumerate(parts):
        match = PATH_PART.fullmatch(part)
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if match is None or match[1] not in fields:
            return f"no key {'.'.join(parts[:index + 1])!r}"
        annotation = fields[match[1]].annotation
        for arg in (annotation, *typing.get_args(annotation)):
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
                break
        else:
            if index != len(parts) - 1:
                return f"{'.'.join(parts[:index + 1])!r} holds no keys"
    return None


def config_problems(line: str) -> list[str]:
    """What is wrong with one `pulumi config set` or `pulumi config get` line (empty: nothing)."""
    words = _words(line)
    if words[:2] != ["pulumi", "config"] or words[2:3] not in (["set"], ["get"]):
        return []
    setting = words[2] == "set"
    options = [w for w in words[3:] if w.startswith("--")]
    rest = [w for w in words[3:] if not w.startswith("--")]
    if not rest:
        return []  # prose naming the command, not a line to type
    namespace, _, path = rest[0].partition(":")
    if namespace in PROVIDER_KEYS:
        return [] if path in PROVIDER_KEYS[namespace] else [f"{line}: {namespace} has no key {path!r}"]
    if namespace != NAMESPACE:
        return [f"{line}: unknown namespace {namespace!r}"]
    parts = path.split(".")
    if parts[0] in SECRET_KEYS:
        problems = []
        if setting and "--secret" not in options:
            problems.append(f"{line}: {parts[0]} is a secret; --secret is missing")
        if len(parts) > 1 and (parts[0] not in SECRET_OBJECT_KEYS or "--path" not in options):
            problems.append(f"{line}: {parts[0]} is not an object set with --path")
        return problems
    problems = []
    if len(parts) > 1 or "[" in path:
        if "--path" not in options:
            problems.append(f"{line}: a nested key needs --path")
    problem = _model_path_problem(parts)
    if problem:
        problems.append(f"{line}: {problem}")
    if "--secret" in options:
        problems.append(f"{line}: {path} is not a secret; the stack would refuse it encrypted")
    return problems


def mailgate_command_problems(line: str) -> list[str]:
    """What is wrong with one `python -m mailgate ...` line (empty: nothing)."""
    words = _words(line)
    try:
        start = words.index("mailgate", words.index("-m"))
    except ValueError:
        return []
    if words[start - 1] != "-m":
        return []
    args = [w for w in words[start + 1:] if not w.startswith("<")]
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    if not args:
        return []  # prose naming the command, not a line to type
    if args[0].startswith("-"):  # the program's own options, e.g. --help
        known = {option for action in parser._actions for option in action.option_strings}
        return [] if args[0] in known else [f"{line}: python -m mailgate has no option {args[0]}"]
    if args[0] not in subparsers:
        return [f"{line}: no subcommand {args[0]!r}"]
    sub = subparsers[args[0]]
    known = {option for action in sub._actions for option in action.option_strings}
    problems = [f"{line}: {args[0]} has no option {word}" for word in args[1:]
                if word.startswith("--") and word.split("=")[0] not in known]
    positional = [a for a in sub._actions if not a.option_strings and a.choices]
    values = [w for w in args[1:2] if not w.startswith("-")]
    if positional and values and values[0] not in positional[0].choices:
        problems.append(f"{line}: {args[0]} has no action {values[0]!r}")
    return problems


def readme_problems(readme: str) -> list[str]:
    problems = []
    for line in commands(readme):
        if "pulumi config set" in line or "pulumi config get" in line:
            for part in line.split("&&"):
                problems += config_problems(part.strip())
        if "-m mailgate" in line:
            for part in line.split("&&"):
                problems += mailgate_command_problems(part.strip())
    return problems
