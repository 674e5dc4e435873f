"""Registry schema, spec parsing and task resolution: user mistakes are one-line UserErrors."""

from __future__ import annotations

from typing import Literal

import pytest

from lossbench.errors import UserError
from lossbench.registry import Registry, parse_spec
from lossbench.spec import apply_override, parse_value, resolve_task, task_names


def make_registry() -> Registry[dict]:
    reg: Registry[dict] = Registry("thing")

    @reg.register("widget", paper="none")
    def widget(
        num_classes: int, lambda_: float = 1.0, kind: Literal["a", "b"] = "a", on: bool = False
    ) -> dict:
        if lambda_ <= 0:
            raise ValueError(f"lambda must be > 0, got {lambda_}")
        return {"K": num_classes, "lambda": lambda_, "kind": kind, "on": on}

    return reg


def test_schema_reads_signature_and_context() -> None:
    entry = make_registry().get("widget")
    assert [p.name for p in entry.params] == ["lambda", "kind", "on"]
    assert entry.context == ("num_classes",)
    assert entry.param("kind").choices == ("a", "b")
    built = entry.build({"lambda": "0.5", "kind": "b", "on": "true"}, num_classes=3, other=1)
    assert built == {"K": 3, "lambda": 0.5, "kind": "b", "on": True}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lambda": "abc"}, "parameter 'lambda' got 'abc'; expected float"),
        ({"kind": "c"}, "accepted: a, b"),
        ({"lamda": "1"}, "unknown parameter 'lamda'; accepted: lambda, kind, on"),
        ({"lambda": "-1"}, "widget: lambda must be > 0, got -1.0"),
        ({"lambda": "nan"}, "got NaN"),
        ({"on": "maybe"}, "expected bool"),
    ],
)
def test_bad_params_are_user_errors(params: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make_registry().get("widget").build(params, num_classes=3)


def test_unknown_name_lists_accepted() -> None:
    with pytest.raises(UserError, match="unknown thing 'gizmo'; accepted: widget"):
        make_registry().get("gizmo")


def test_parse_spec() -> None:
    assert parse_spec("gce:q=0.7") == ("gce", {"q": "0.7"})
    assert parse_spec("ldr:lambda=1, margin=0.2") == ("ldr", {"lambda": "1", "margin": "0.2"})
    assert parse_spec("ce") == ("ce", {})
    with pytest.raises(UserError, match="expected key=value"):
        parse_spec("gce:q")


def test_parse_value_is_toml_with_string_fallback() -> None:
    assert parse_value("0.3") == 0.3
    assert parse_value("[10, 20]") == [10, 20]
    assert parse_value("true") is True
    assert parse_value("asym") == "asym"
    assert parse_value("/tmp/data dir") == "/tmp/data dir"


def test_resolve_task_budget_and_overrides() -> None:
    assert {"digits", "digits-noisy", "cifar10", "cifar100-noisy", "cifar100n"} <= set(task_names())
    spec = resolve_task("digits-noisy", "smoke", ["noise.kind=asym", "noise.rate=0.3"])
    assert spec["train"]["epochs"] == 3  # from the smoke overlay
    assert spec["noise"] == {"kind": "asym", "rate": 0.3}
    assert spec["budget"] == "smoke" and spec["task"] == "digits-noisy"
    assert "budget" not in resolve_task("cifar100-noisy", "paper")["train"]
    paper = resolve_task("cifar100-noisy", "paper")
    assert paper["model"]["name"] == "resnet18"
    assert paper["train"]["milestones"] == [10, 20] and paper["train"]["batch_size"] == 64


@pytest.mark.parametrize(
    ("task", "budget", "override", "message"),
    [
        ("nope", "quick", None, "unknown task 'nope'; accepted: .*digits"),
        ("digits", "huge", None, "unknown budget 'huge'; accepted: smoke, quick, paper"),
        ("digits", "quick", "trian.epochs=3", "no table 'trian'"),
        ("digits", "quick", "epochs=3", "top-level fields"),
        ("digits", "quick", "noise.rate", "expected key=value"),
    ],
)
def test_resolve_errors(task: str, budget: str, override: str | None, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_task(task, budget, [override] if override else [])


def test_override_creates_leaf_in_existing_table() -> None:
    spec = {"data": {"source": "x"}}
    apply_override(spec, "data.dir=/tmp/cifar")
    assert spec["data"]["dir"] == "/tmp/cifar"
