"""Reading segment features from an OpenRTB 2.5/2.6 bid request, normalised like the logs.

A run's features come with the macro each is read from (``opt_feature_macros``):
``request_field`` names the bid-request field (``device.geo.region``,
``site.domain|app.bundle`` for alternatives). The value is then normalised for
its feature so that it equals what the optimizer saw in the logs:

* ``geo_region_name``: ISO 3166-2 region (``CA`` or ``US-CA``) -> the state's name
  (``california``), as the logs store region names;
* ``os_code``: ``iOS`` -> ``ios``, ``Mac OS X`` / ``macOS`` -> ``macos``, ...;
* ``browser_code``: the browser family parsed from ``device.ua``;
* ``device_type``: OpenRTB ``devicetype`` 1/4 -> ``mobile``, 2 -> ``desktop``,
  5 -> ``tablet``, 3/6/7 -> ``ctv``;
* ``npi_matched``: truthy -> ``true``, else ``false``;
* ``floor_bucket`` (no macro): the impression's ``bidfloor`` in the warehouse's bands;
* anything else: ``normalise_feature_value`` (lower case, trimmed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bidopt.warehouse.contract import UNKNOWN, floor_bucket_label, normalise_feature_value

US_STATES = {
    "AL": "alabama",
    "AK": "alaska",
    "AZ": "arizona",
    "AR": "arkansas",
    "CA": "california",
    "CO": "colorado",
    "CT": "connecticut",
    "DE": "delaware",
    "DC": "district of columbia",
    "FL": "florida",
    "GA": "georgia",
    "HI": "hawaii",
    "ID": "idaho",
    "IL": "illinois",
    "IN": "indiana",
    "IA": "iowa",
    "KS": "kansas",
    "KY": "kentucky",
    "LA": "louisiana",
    "ME": "maine",
    "MD": "maryland",
    "MA": "massachusetts",
    "MI": "michigan",
    "MN": "minnesota",
    "MS": "mississippi",
    "MO": "missouri",
    "MT": "montana",
    "NE": "nebraska",
    "NV": "nevada",
    "NH": "new hampshire",
    "NJ": "new jersey",
    "NM": "new mexico",
    "NY": "new york",
    "NC": "north carolina",
    "ND": "north dakota",
    "OH": "ohio",
    "OK": "oklahoma",
    "OR": "oregon",
    "PA": "pennsylvania",
    "RI": "rhode island",
    "SC": "south carolina",
    "SD": "south dakota",
    "TN": "tennessee",
    "TX": "texas",
    "UT": "utah",
    "VT": "vermont",
    "VA": "virginia",
    "WA": "washington",
    "WV": "west virginia",
    "WI": "wisconsin",
    "WY": "wyoming",
}
_OS = {
    "ios": "ios",
    "iphone os": "ios",
    "ipados": "ios",
    "android": "android",
    "windows": "windows",
    "windows phone": "windows",
    "mac os x": "macos",
    "macos": "macos",
    "os x": "macos",
    "mac": "macos",
    "linux": "linux",
    "ubuntu": "linux",
    "chrome os": "linux",
}
_DEVICE_TYPES = {1: "mobile", 4: "mobile", 2: "desktop", 5: "tablet", 3: "ctv", 6: "ctv", 7: "ctv"}


def normalise_geo(value: Any) -> str:
    if value is None:
        return UNKNOWN
    text = str(value).strip()
    # ASCII only: other scripts' letters can upper-case into a state code (the long s into S)
    code = text.upper().removeprefix("US-") if text.isascii() else None
    return US_STATES.get(code, normalise_feature_value(text))


def normalise_os(value: Any) -> str:
    text = normalise_feature_value(value)
    return _OS.get(text, text)


def browser_from_ua(ua: Any) -> str:
    """The browser family of a user agent, as the logs name it."""
    if not isinstance(ua, str) or not ua:
        return UNKNOWN
    if "SamsungBrowser/" in ua:
        return "samsung"
    if "Edg/" in ua or "Edge/" in ua or "EdgA/" in ua or "EdgiOS/" in ua:
        return "edge"
    if "Firefox/" in ua or "FxiOS/" in ua:
        return "firefox"
    if "CriOS/" in ua or "Chrome/" in ua or "Chromium/" in ua:
        return "chrome"
    if "Safari/" in ua:
        return "safari"
    return "other"


def normalise_device_type(value: Any) -> str:
    if isinstance(value, bool):
        return UNKNOWN
    if isinstance(value, int):
        return _DEVICE_TYPES.get(value, UNKNOWN)
    return normalise_feature_value(value)


def normalise_flag(value: Any) -> str:
    return "true" if value in (True, 1, "1", "true", "True", "yes") else "false"


NORMALISERS: dict[str, Callable[[Any], str]] = {
    "geo_region_name": normalise_geo,
    "os_code": normalise_os,
    "browser_code": browser_from_ua,
    "device_type": normalise_device_type,
    "npi_matched": normalise_flag,
}


def get_path(obj: Any, path: str) -> Any:
    """``get_path(req, "device.geo.region")``; None where any step is missing or not an object."""
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


FeatureReader = Callable[[dict, dict], str]  # (request, impression) -> normalised value


def feature_reader(feature_name: str, request_field: str | None) -> FeatureReader:
    """How to read one feature from a request (and its impression)."""
    if feature_name == "floor_bucket":

        def read_floor(_req: dict, imp: dict) -> str:
            floor = imp.get("bidfloor")
            return floor_bucket_label(float(floor) if isinstance(floor, (int, float)) else None)

        return read_floor
    if not request_field:
        raise ValueError(f"feature {feature_name} has no macro telling which request field it is")
    alternatives = [p.strip() for p in request_field.split("|") if p.strip()]
    normalise = NORMALISERS.get(feature_name, normalise_feature_value)

    def read(req: dict, _imp: dict) -> str:
        for path in alternatives:
            value = get_path(req, path)
            if value is not None and value != "":
                return normalise(value)
        return normalise(None) if feature_name == "npi_matched" else UNKNOWN

    return read


def request_domain(req: dict) -> str | None:
    """``site.domain``, else ``app.bundle``, normalised; None when neither is there."""
    for path in ("site.domain", "app.bundle"):
        value = get_path(req, path)
        if isinstance(value, str) and value.strip():
            return normalise_feature_value(value)
    return None


# Where a decision event reads a contract feature the run does not use and the entity's supply
# source has no active macro for (the demo catalogue's ADX macros name the same fields).
DEFAULT_REQUEST_FIELDS = {
    "geo_region_name": "device.geo.region",
    "os_code": "device.os",
    "browser_code": "device.ua",
    "device_type": "device.devicetype",
    "domain": "site.domain|app.bundle",
    "npi_matched": "user.ext.npi_matched",
}


EventReaders = tuple[tuple[int, FeatureReader], ...]  # per contract column: (position in the run's values, reader)


def event_readers(
    columns: tuple[str, ...],
    run_features: tuple[str, ...],
    run_readers: tuple[FeatureReader, ...],
    source_fields: dict[str, str | None],
) -> EventReaders:
    """How a decision event reads each contract feature column: the run's own (pinned) reader where
    the run has the feature, so the event says what the key was built from (its position in the
    run's features too: the value the bid's lookup already read is reused); else the entity's supply
    source's active macro; else ``DEFAULT_REQUEST_FIELDS``."""
    out = []
    for name in columns:
        if name in run_features:
            i = run_features.index(name)
            out.append((i, run_readers[i]))
        else:
            field = source_fields.get(name) or DEFAULT_REQUEST_FIELDS[name]
            out.append((-1, feature_reader(name, field)))
    return tuple(out)


def read_event_features(readers: EventReaders, values, req: dict, imp: dict) -> list[str]:
    """The contract feature values of one decision: from ``values`` (what the run's lookup read, in the
    run's feature order; empty when there was no lookup) where they are there, else read now."""
    n = len(values)
    return [values[i] if 0 <= i < n else read(req, imp) for i, read in readers]
