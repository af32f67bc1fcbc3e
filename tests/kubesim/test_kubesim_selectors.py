"""Selector parsing, as kube-apiserver reads labelSelector and fieldSelector."""

from __future__ import annotations

import pytest

from binderhub_guard.lab.kubesim.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

POD = {
    "metadata": {"name": "jupyter-alice", "namespace": "hub", "labels": {"app": "jh", "tier": "a"}},
    "status": {"phase": "Running"},
    "spec": {"hostNetwork": False},
}


@pytest.mark.parametrize(
    "selector, matches",
    [
        ("", True),
        (None, True),
        ("app=jh", True),
        ("app==jh", True),
        ("app!=jh", False),
        ("app", True),
        ("!app", False),
        ("!missing", True),
        ("tier in (a, b)", True),
        ("tier notin (a,b)", False),
        ("app=jh,tier in (b,c)", False),
        ("app=jh, tier", True),
        ("missing!=x", True),
    ],
)
def test_label_selector(selector, matches):
    assert parse_label_selector(selector)(POD) is matches


@pytest.mark.parametrize(
    "selector, matches",
    [
        ("", True),
        ("metadata.name=jupyter-alice", True),
        ("metadata.namespace=other", False),
        ("status.phase!=Running", False),
        ("metadata.name=jupyter-alice,status.phase=Running", True),
        ("spec.hostNetwork=false", True),
        ("spec.nodeName=", True),
    ],
)
def test_field_selector(selector, matches):
    assert parse_field_selector(selector)(POD) is matches


@pytest.mark.parametrize("selector", ["a in b", "=x", "a b"])
def test_bad_label_selector(selector):
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_bad_field_selector():
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name")
