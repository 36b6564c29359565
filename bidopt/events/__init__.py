"""The bidder's own events: what it decided and what exchanges told it afterwards.

Bidders write *decisions* (one row per impression of every bid request, bid or not) and
*notices* (win, loss, billing, click) as Parquet to an events store chosen by URL
(``BIDOPT_EVENTS_URL``: ``file:///folder`` on the embedded default, ``s3://bucket/prefix`` in
production; the same scheme table as the artifact store), partitioned by kind, entity and hour:
``<kind>/entity_code=<code>/hour=<YYYYMMDDTHH>/``; a bidder's flush writes every entity's rows at
once under ``<kind>/mixed/hour=<YYYYMMDDTHH>/`` and splits them per entity a minute later. The
column schemas are in ``bidopt.events.schema``; the layout, reading and writing parts in
``bidopt.events.store``.
"""

from bidopt.events.schema import DECISION_SCHEMA, NOTICE_KINDS, NOTICE_SCHEMA
from bidopt.events.store import EventStore, open_event_store

__all__ = ["DECISION_SCHEMA", "NOTICE_KINDS", "NOTICE_SCHEMA", "EventStore", "open_event_store"]
