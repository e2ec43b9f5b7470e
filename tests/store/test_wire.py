"""The agent's msgspec records (contract/wire.py) read and write what the reconciler's pydantic models do.

Three ways they could differ, each tested here: the generated file is stale (a model changed since); a valid
document is read or written differently (random documents of every kind the agent uses, both ways); an invalid
document is accepted by one side only (a list of the ways a document can be wrong).
"""

from __future__ import annotations

import enum
import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from types import UnionType
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from contract import models, wire, wiregen

#: Floats both libraries print alike (no exponent); any float is compared by value in another test.
_PLAIN_FLOATS = st.sampled_from([0.5, 1.0, 2.0, 2.5, 10.0, 60.0, 300.0, 1234.125])
_ANY_FLOATS = st.floats(min_value=1e-9, max_value=1e300, allow_nan=False, allow_infinity=False)
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def _strategy(annotation: Any, metadata: list[Any], floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """Values of a model's field, within its constraints."""
    limits = {name: getattr(item, name) for item in metadata for name in ("min_length", "max_length", "pattern",
              "gt", "ge") if getattr(item, name, None) is not None}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _strategy(args[0], [*metadata, *annotation.__metadata__], floats)
    if annotation is str:
        if "pattern" in limits:
            return st.from_regex(limits["pattern"].rstrip("$") + r"\Z")
        return st.text(min_size=limits.get("min_length", 0), max_size=limits.get("max_length", 12))
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-(2**53), max_value=2**53)
    if annotation is float:
        return floats
    if annotation is datetime:
        return st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                            timezones=st.one_of(st.none(), _ZONES))  # None: a naive time
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation, floats)
    if origin in (typing.Union, UnionType):
        return st.one_of(*(_strategy(arg, metadata, floats) for arg in args))
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(_strategy(args[0], [], floats), max_size=min(3, limits.get("max_length", 3)))
    if origin is dict:
        return st.dictionaries(_TEXT, _strategy(args[1], [], floats), max_size=2)
    raise AssertionError(f"no strategy for {annotation!r}")


def _model(model: type[BaseModel], floats: st.SearchStrategy[float]) -> st.SearchStrategy[BaseModel]:
    fields = {}
    for name, field in model.model_fields.items():
        value = _strategy(field.annotation, list(field.metadata), floats)
        required = field.default is PydanticUndefined and field.default_factory is None
        fields[name] = value if required else st.one_of(st.just(PydanticUndefined), value)

    def build(values: dict[str, Any]) -> BaseModel | None:
        try:
            return model(**{name: value for name, value in values.items() if value is not PydanticUndefined})
        except ValidationError:
            return None  # e.g. a revision with two sources: drawn, then refused by the model

    return st.fixed_dictionaries(fields).map(build).filter(lambda made: made is not None)  # type: ignore[return-value]


def _pair(root: type[models.Document], floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.tuples(st.just(root), _model(root, floats))


_ROOTS = st.sampled_from(wiregen.ROOTS)


def test_contract_wire_is_generated_from_the_current_models() -> None:
    with open(wiregen.OUTPUT, encoding="utf-8") as current:
        assert current.read() == wiregen.generate(), "contract/wire.py is stale: run python -m contract.wiregen"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_ROOTS.flatmap(lambda root: _pair(root, _PLAIN_FLOATS)))
def test_a_document_is_read_and_written_byte_for_byte_alike(pair: tuple[type[models.Document], BaseModel]) -> None:
    root, document = pair
    written = document.to_json()  # type: ignore[attr-defined]
    record = getattr(wire, root.__name__).model_validate_json(written)
    assert record.to_json() == written
    assert root.model_validate_json(record.to_json()) == document


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_ROOTS.flatmap(lambda root: _pair(root, _ANY_FLOATS)))
def test_any_float_is_read_back_as_the_same_value(pair: tuple[type[models.Document], BaseModel]) -> None:
    """`1e+20` (pydantic) and `1e20` (msgspec) are the same number: compared as JSON values, not bytes."""
    root, document = pair
    written = document.to_json()  # type: ignore[attr-defined]
    record = getattr(wire, root.__name__).model_validate_json(written)
    assert json.loads(record.to_json()) == json.loads(written)
    assert root.model_validate_json(record.to_json()) == document


_COMMAND: dict[str, Any] = {
    "schemaVersion": 1, "hostId": "web-1", "generation": 3, "deploymentId": "d-1", "application": "shop",
    "deploymentGroup": "web", "deploymentGroupId": "shop/web",
    "revision": {"git": {"repository": "https://example.com/shop.git", "commit": "a" * 40}},
    "createdAt": "2026-11-29T00:00:00Z",
}


def _changed(path: list[str | int], value: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(_COMMAND))
    target: Any = document
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("why", "document"),
    [
        ("an unknown field", _changed(["colour"], "red")),
        ("a required field missing", _changed(["createdAt"], KeyError)),
        ("a float for an int", _changed(["generation"], 3.5)),
        ("not a time", _changed(["createdAt"], "yesterday")),
        ("an unknown enum value", _changed(["fileExistsBehavior"], "MERGE")),
        ("a short commit", _changed(["revision", "git", "commit"], "a" * 7)),
        ("a commit with a newline after it", _changed(["revision", "git", "commit"], "a" * 40 + "\n")),
        ("two sources", _changed(["revision", "local"], {"path": "/srv", "bundleType": "zip"})),
        ("no source", _changed(["revision"], {})),
        ("a bad bundle type", _changed(["revision", "git"], None) | {"revision": {"local": {"path": "/x",
                                                                                    "bundleType": "rar"}}}),
        ("an empty repository", _changed(["revision", "git", "repository"], "")),
        ("a zero health interval", _changed(["healthCheck"], {"url": "http://h/", "intervalSeconds": 0})),
        ("an unknown field deep down", _changed(["revision", "git", "branch"], "main")),
        ("null for a list", _changed(["events"], None)),
    ],
)
def test_a_document_one_side_refuses_the_other_refuses_too(why: str, document: dict[str, Any]) -> None:
    data = json.dumps(document).encode()
    with pytest.raises(ValidationError):
        models.HostCommand.model_validate_json(data)
    with pytest.raises(msgspec.ValidationError):
        wire.HostCommand.model_validate_json(data)


@pytest.mark.parametrize(
    ("why", "document"),
    [
        ("a number in a string", _changed(["generation"], "3")),
        ("a whole float for an int", _changed(["generation"], 3.0)),
        ("a word for a boolean", _changed(["isRollback"], "true")),
        ("a number for a time", _changed(["createdAt"], 1_796_000_000)),
        ("a date without a time", _changed(["createdAt"], "2026-11-29")),
        ("a field by its Python name", {**{key: value for key, value in _COMMAND.items() if key != "hostId"},
                                        "host_id": "web-1"}),
    ],
)
def test_the_agent_refuses_what_pydantic_would_convert(why: str, document: dict[str, Any]) -> None:
    """The one intended difference: pydantic's lax mode converts these, msgspec refuses them. Neither side writes
    them; a document that has them was edited by hand or written by a foreign tool, and a host should not act on a
    command whose fields are not what the reconciler writes."""
    data = json.dumps(document).encode()
    models.HostCommand.model_validate_json(data)
    with pytest.raises(msgspec.ValidationError):
        wire.HostCommand.model_validate_json(data)


def test_the_valid_command_above_is_read_by_both() -> None:
    data = json.dumps(_COMMAND).encode()
    assert wire.HostCommand.model_validate_json(data).to_json() == models.HostCommand.model_validate_json(
        data
    ).to_json()


def test_too_many_refusals_are_refused_by_both() -> None:
    refusal = {"at": "2026-11-29T00:00:00Z", "key": "commands/h.json", "version": "1", "reason": "unsigned"}
    data = json.dumps({"hostId": "h", "heartbeatAt": "2026-11-29T00:00:00Z", "agentVersion": "1",
                       "refusals": [refusal] * (models.MAX_REFUSALS + 1)}).encode()
    with pytest.raises(ValidationError):
        models.HostStatus.model_validate_json(data)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.refusals"):
        wire.HostStatus.model_validate_json(data)


def test_the_generator_refuses_what_it_cannot_carry_over() -> None:
    """A model field of a type with no faithful msgspec form stops generation instead of loosening it."""

    class Odd(models.Model):
        when: timedelta

    with pytest.raises(wiregen.GenerationError, match=r"Odd\.when"):
        wiregen._type(Odd.model_fields["when"].annotation, "Odd.when", set())
    with pytest.raises(wiregen.GenerationError, match="None"):
        wiregen._type(dict[str, str | None], "Odd.tags", set())


def test_the_generator_refuses_validators_serializers_and_metadata_it_does_not_carry() -> None:
    """A validator next to a carried one, a carried one that does more than call its check, a serializer, an
    output-only alias, a config of its own, a `model_post_init`, an `AfterValidator`: each would make the agent's
    record differ from the model, so none is generated."""
    from pydantic import AfterValidator, ConfigDict, Field, field_serializer, field_validator, model_validator

    from contract.vocabulary import RevisionBehaviour

    class Revision(RevisionBehaviour, models.Model):  # the name the carried validator is listed under
        s3: str | None = None
        git: str | None = None
        local: str | None = None
        sha256: str | None = None

        @model_validator(mode="after")
        def _exactly_one_source(self) -> Revision:
            self.check_sources()
            return self

    class ExtraValidator(Revision):
        @field_validator("sha256")
        @classmethod
        def _lower(cls, value: str | None) -> str | None:
            return value.lower() if value else value

    wiregen._refuse_what_is_not_carried(Revision)  # as the real one: its validator only calls the check
    wiregen._refuse_what_is_not_carried(models.Revision)
    with pytest.raises(wiregen.GenerationError, match="field validator _lower is not carried"):
        wiregen._refuse_what_is_not_carried(ExtraValidator)

    def revision_doing_more() -> type[models.Model]:
        class Revision(RevisionBehaviour, models.Model):
            s3: str | None = None
            git: str | None = None
            local: str | None = None
            sha256: str | None = None

            @model_validator(mode="after")
            def _exactly_one_source(self) -> Revision:
                self.check_sources()
                if self.sha256 is not None and self.sha256 != self.sha256.lower():
                    raise ValueError("lower case")
                return self

        return Revision

    with pytest.raises(wiregen.GenerationError, match="model validator _exactly_one_source is not carried"):
        wiregen._refuse_what_is_not_carried(revision_doing_more())

    class Serialized(models.Model):
        when: str

        @field_serializer("when")
        def _upper(self, value: str) -> str:
            return value.upper()

    class OutputAlias(models.Model):
        name: str = Field(serialization_alias="title")

    class Open(models.Model):
        model_config = ConfigDict(extra="allow")

    class Stripped(models.Model):
        model_config = ConfigDict(str_strip_whitespace=True)

    class PostInit(models.Model):
        name: str = ""

        def model_post_init(self, context: Any) -> None:
            pass

    for model, problem in ((Serialized, "field serializer _upper"), (OutputAlias, "alias for validation or "
                           "serialization only"), (Open, "model_config of its own"), (Stripped, "model_config of its "
                           "own"), (PostInit, "model_post_init")):
        with pytest.raises(wiregen.GenerationError, match=problem):
            wiregen._refuse_what_is_not_carried(model)

    class Checked(models.Model):
        name: Annotated[str, AfterValidator(str.strip)]

    with pytest.raises(wiregen.GenerationError, match="AfterValidator"):
        wiregen._meta(list(Checked.model_fields["name"].metadata), "Checked.name")


def test_model_copy_and_behaviour_work_as_on_the_models() -> None:
    command = wire.HostCommand.model_validate_json(json.dumps(_COMMAND).encode())
    again = command.model_copy(update={"generation": 4})
    assert (again.generation, command.generation) == (4, 3)
    assert command.revision.kind == "git"
    assert command.revision.identity() == models.HostCommand.model_validate(_COMMAND).revision.identity()
    targets = wire.CommandTargets(tag_sets=[[wire.TagMatch(key="app", value="shop")]])
    assert targets.admits("web-1", {"app": "shop"}, None)
    assert not targets.admits("web-1", {"app": "blog"}, None)
