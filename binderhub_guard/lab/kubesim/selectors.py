"""Label and field selectors, as the API server parses them.

kubespawner always sends both selector parameters, often empty, so an empty selector must
match everything rather than be an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\((.*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=()]+)\s*(==|!=|=)\s*([^\s!=()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*$")


class SelectorError(ValueError):
    """A selector the API server would reject with 400 BadRequest."""


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses: ``a in (x,y),b`` is two terms."""
    terms, depth, current = [], 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth > 0:
        # kube-apiserver's lexer reaches the end looking for the set's next value or its end
        raise SelectorError("unable to parse requirement: found '', expected: ',' or ')'")
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def parse_label_selector(selector: str | None) -> Predicate:
    """Return a predicate on objects for ``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``."""
    checks = [_label_term(term) for term in _split_terms(selector or "")]
    return lambda obj: all(check(obj.get("metadata", {}).get("labels") or {}) for check in checks)


def _label_term(term: str) -> Callable[[dict[str, str]], bool]:
    match = _SET_RE.match(term)
    if match:
        key, operator, values = match.groups()
        allowed = {value.strip() for value in values.split(",") if value.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    match = _EQ_RE.match(term)
    if match:
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    match = _EXISTS_RE.match(term)
    if match:
        negate, key = match.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"unable to parse requirement: {term!r}")


_METADATA_FIELDS = {"metadata.name", "metadata.namespace"}
# field selector labels that name another field than their path says
_FIELD_ALIASES = {"source": "source.component"}


def parse_field_selector(
    selector: str | None, supported: set[str] | None = None, converted: bool = False
) -> Predicate:
    """Return a predicate for ``path=value`` / ``path!=value`` terms on dotted field paths.

    With `supported` (a kind's field labels besides metadata.name and metadata.namespace),
    another path is an error, worded as the API server words it: kinds with a field label
    conversion of their own (`converted`: pods, events, secrets, namespaces) and the others
    differ."""
    checks = []
    for term in _split_terms(selector or ""):
        match = _EQ_RE.match(term)
        if not match:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{term}'")
        path, operator, value = match.groups()
        if supported is not None and path not in _METADATA_FIELDS | supported:
            if converted:
                raise SelectorError(f"field label not supported: {path}")
            raise SelectorError(
                f'"{path}" is not a known field selector: only "metadata.name", '
                '"metadata.namespace"'
            )
        checks.append((_FIELD_ALIASES.get(path, path).split("."), operator == "!=", value))

    def predicate(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, path) == value) != negate for path, negate, value in checks)

    return predicate


def field_value(obj: dict[str, Any], path: list[str]) -> str:
    """The string form of a field, "" when absent, as field selectors compare it."""
    current: Any = obj
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return ""
        current = current[part]
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)
