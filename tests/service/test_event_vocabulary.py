"""One event vocabulary, ``topology.EventType``: the API schema and the CLI option derive from
it, and the SQL CHECK (written in migrations, so it can drift) is held to it."""

from __future__ import annotations

import re
from typing import get_args

from sqlalchemy import Engine, text

from fintegrate_cli.events import EventType as CliEventType
from service.events.schemas import EventType as ApiEventType
from service.messaging import topology


def test_api_schema_and_cli_offer_exactly_the_topology_event_types() -> None:
    assert get_args(topology.EventType) == topology.EVENT_TYPES
    assert get_args(ApiEventType) == topology.EVENT_TYPES
    assert tuple(member.value for member in CliEventType) == topology.EVENT_TYPES


def test_the_sql_check_allows_exactly_the_topology_event_types(engine: Engine) -> None:
    with engine.connect() as connection:
        definition = connection.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'customer_events_type_check' "
                "AND conrelid = 'customer_events'::regclass"
            )
        ).scalar_one()
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == set(topology.EVENT_TYPES)


def test_every_event_type_has_its_binding() -> None:
    bindings = topology.queue_bindings("acme")
    assert bindings == [topology.routing_key(t, "acme") for t in topology.EVENT_TYPES]
    assert topology.dlq_routing_key("acme") not in bindings
