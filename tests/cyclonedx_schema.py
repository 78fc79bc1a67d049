"""The official CycloneDX 1.5 JSON schema, as cyclonedx-python-lib ships it
(a [test] extra), with the SPDX licence-id and JSF schemas it refers to
resolved from the same folder: validation needs no network."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

NAMES = ("bom-1.5.SNAPSHOT.schema.json", "spdx.SNAPSHOT.schema.json",
         "jsf-0.82.SNAPSHOT.schema.json")
BASE = "http://cyclonedx.org/schema/"


def folder() -> Path:
    import cyclonedx.schema
    return Path(cyclonedx.schema.__file__).parent / "_res"


@cache
def validator() -> Draft7Validator:
    schemas = {n: json.loads((folder() / n).read_text()) for n in NAMES}
    registry = Registry()
    for name, schema in schemas.items():
        resource = Resource.from_contents(schema, default_specification=DRAFT7)
        # by the name the bom schema refers to (relative to its $id), and by its own $id
        registry = registry.with_resource(BASE + name, resource)
        if schema.get("$id"):
            registry = registry.with_resource(schema["$id"], resource)
    bom = schemas[NAMES[0]]
    Draft7Validator.check_schema(bom)
    return Draft7Validator(bom, registry=registry)


def errors(doc: dict) -> list[str]:
    """Every way `doc` breaks the schema, one line each (empty: valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
            for e in validator().iter_errors(doc)]
