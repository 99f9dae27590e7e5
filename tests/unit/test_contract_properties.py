"""Property tests: every valid SloEvent, IncidentAttribution and ProbeEvent round-trips.

The examples in ``contracts/examples/`` check one document per contract; here Hypothesis
generates many. The strategies are derived from the Structs themselves
(``msgspec.inspect``): required fields are always set, optional ones sometimes, Literal
fields draw from their enum, and numbers stay inside their ``msgspec.Meta`` bounds. A
field of a type the derivation does not know fails the test rather than being skipped, so
a contract cannot grow a field these properties silently leave out.

For each generated Struct: ``msgspec.json.encode`` gives a document the generated JSON
Schema accepts, strict decoding of those bytes gives an equal Struct, and encoding that
again gives the same bytes.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from llm_slo import contracts

# The contracts whose documents the agent writes (config is read, not written).
CONTRACTS = ["v1/slo-event.schema.json", "v1/incident-attribution.schema.json",
             "v1alpha1/probe-event.schema.json"]
# msgspec encodes and decodes integers in [-2**63, 2**64 - 1]; the schemas set no upper
# bound, so unbounded ints are drawn from that whole range.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of one msgspec type, inside its constraints.

    Floats are finite: JSON has no NaN or infinity, and msgspec writes them as ``null``,
    which neither the schema nor a strict decode accepts (the writers never emit them).
    """
    match t:
        case mi.StructType():
            return _struct(t)
        case mi.StrType(min_length=None, max_length=None, pattern=None):
            return st.text(max_size=20)
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.LiteralType(values=values):
            return st.sampled_from(values)
        case mi.IntType(gt=gt, ge=ge, lt=lt, le=le, multiple_of=None):
            lo = ge if ge is not None else gt + 1 if gt is not None else INT_MIN
            hi = le if le is not None else lt - 1 if lt is not None else INT_MAX
            return st.integers(min_value=max(lo, INT_MIN), max_value=min(hi, INT_MAX))
        case mi.FloatType(gt=gt, ge=ge, lt=lt, le=le, multiple_of=None):
            return st.floats(min_value=ge if ge is not None else gt,
                             max_value=le if le is not None else lt,
                             exclude_min=gt is not None, exclude_max=lt is not None,
                             allow_nan=False, allow_infinity=False)
        case mi.UnionType(types=types):
            return st.one_of([_strategy(u) for u in types])
        case mi.ListType(item_type=item, min_length=None, max_length=None):
            return st.lists(_strategy(item), max_size=3)
        case mi.DictType(key_type=key, value_type=value, min_length=None, max_length=None):
            return st.dictionaries(_strategy(key), _strategy(value), max_size=3)
    raise TypeError(f"no strategy for {t!r}: extend _strategy for this contract field")


def _struct(t: mi.StructType) -> st.SearchStrategy[Any]:
    """Instances of a Struct: every required field, any subset of the optional ones."""
    required = {f.name: _strategy(f.type) for f in t.fields if f.required}
    optional = {f.name: _strategy(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))


@cache
def struct_of(path: str) -> type[Any]:
    """The Struct the contract at ``path`` is generated from."""
    return contracts.SCHEMAS[path][0]


@cache
def strategy_of(path: str) -> st.SearchStrategy[Any]:
    """Valid instances of the contract's Struct."""
    return _strategy(mi.type_info(struct_of(path)))


@cache
def validator_of(path: str) -> Draft202012Validator:
    """A validator for the schema rendered from the Struct, as ``python -m
    llm_slo.contracts`` writes it (``test_contracts.py`` checks the committed file is that
    text). Its ``$ref``s point into its own ``$defs``, which the validator resolves
    against the document itself."""
    return Draft202012Validator(json.loads(contracts.render(path)))


def test_contracts_are_the_written_ones() -> None:
    """The properties cover every contract but the (read-only) config."""
    assert sorted(CONTRACTS) == sorted(set(contracts.SCHEMAS) - {"config.schema.json"})


@pytest.mark.parametrize("path", CONTRACTS)
@SETTINGS
@given(data=st.data())
def test_encoded_struct_validates_against_its_schema(path: str, data: st.DataObject) -> None:
    """Whatever valid Struct a writer holds, the JSON it encodes passes the schema that
    consumers validate against."""
    obj = data.draw(strategy_of(path))
    doc = json.loads(msgspec.json.encode(obj))
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in validator_of(path).iter_errors(doc)]
    assert errors == []


@pytest.mark.parametrize("path", CONTRACTS)
@SETTINGS
@given(data=st.data())
def test_strict_decode_round_trips(path: str, data: st.DataObject) -> None:
    """Encoded bytes decode strictly into an equal Struct (no field lost, no value
    changed, every bound the decoder enforces met), and encoding that again gives
    identical bytes: the encoding is a fixed point, so a re-written record is unchanged."""
    obj = data.draw(strategy_of(path))
    raw = msgspec.json.encode(obj)
    again = msgspec.json.decode(raw, type=struct_of(path), strict=True)
    assert again == obj
    assert msgspec.json.encode(again) == raw
