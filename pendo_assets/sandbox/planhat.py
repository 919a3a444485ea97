"""In-memory Planhat tenant state: End Users, Companies, Assets, Projects and stored metric points.

Thread-safe. Lists behave like Planhat's (insertion order by default, ``sort`` by ``_id`` or any
field, ``select`` projections, archived records hidden); ``upsert`` follows the bulk-upsert
contract (keyables ``_id``, ``externalId``, ``sourceId``; creates when the required fields are
given). Matching for the analytics endpoints is exact and case-sensitive on ``externalId``.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from pendo_assets.types import MODELS, JSONDict, Model

__all__ = [
    "COLLECTIONS",
    "MAX_LIMIT",
    "PlanhatStore",
]

COLLECTIONS: dict[str, Model] = {
    "endusers": "EndUser",
    "companies": "Company",
    "assets": "Asset",
    "projects": "Project",
}
MAX_LIMIT: dict[Model, int] = {"Company": 5000, "EndUser": 2000, "Asset": 2000, "Project": 2000}
_KEYABLES = ("_id", "externalId", "sourceId")
_ID_BATCH = 4096
_EPOCH = date(1970, 1, 1)


def _sort_key(value: Any) -> tuple[int, str, Any]:
    if value is None:
        return (0, "", "")
    if isinstance(value, bool | int | float):
        return (1, "n", float(value))
    return (2, "s", str(value))


class PlanhatStore:
    """One Planhat tenant's objects and stored custom-metric points."""

    def __init__(self, *, seed: int) -> None:
        self._seed = seed
        self._lock = threading.RLock()
        self._records: dict[Model, list[JSONDict]] = {m: [] for m in MODELS}
        self._by_id: dict[Model, dict[str, JSONDict]] = {m: {} for m in MODELS}
        self._pending_ids: dict[str, list[str]] = {}
        self._id_batches: dict[str, int] = {}
        self._points: list[JSONDict] = []
        self._points_version = 0
        # The last filtered listing of the points: consecutive pages of one read reuse it.
        self._points_cache: tuple[tuple[Any, ...], list[JSONDict]] | None = None
        self._version = 0
        self._indexes: dict[tuple[Model, str], tuple[int, dict[str, list[JSONDict]]]] = {}
        self._sorted_cache: dict[tuple[Model, str | None], tuple[int, list[JSONDict]]] = {}

    @property
    def version(self) -> int:
        """Bumps on every change to the objects."""
        return self._version

    def new_id(self, namespace: str) -> str:
        """Return a fresh, deterministic 24-hex ``_id`` (one sequence per model or namespace)."""
        with self._lock:
            pending = self._pending_ids.setdefault(namespace, [])
            if not pending:
                # Ids come in seeded batches: per-id hashing dominated building large tenants.
                batch = self._id_batches.get(namespace, 0)
                self._id_batches[namespace] = batch + 1
                rng = np.random.default_rng([self._seed, zlib.crc32(namespace.encode()), batch])
                hexed = rng.bytes(12 * _ID_BATCH).hex()
                pending.extend(hexed[i : i + 24] for i in range(len(hexed) - 24, -1, -24))
            return pending.pop()

    def add(self, model: Model, record: JSONDict) -> JSONDict:
        """Insert ``record`` (given an ``_id`` when it has none) and return it."""
        with self._lock:
            if "_id" not in record:
                record["_id"] = self.new_id(model)
            self._records[model].append(record)
            self._by_id[model][record["_id"]] = record
            self._touch(model, record, None)
            return record

    def add_many(self, model: Model, records: Iterable[JSONDict]) -> int:
        """Insert several records; return how many."""
        n = 0
        with self._lock:
            for record in records:
                self.add(model, record)
                n += 1
        return n

    def _index(self, model: Model, field: str) -> dict[str, list[JSONDict]]:
        """Visible records by a string field (rebuilt lazily after any change)."""
        cached = self._indexes.get((model, field))
        if cached is not None and cached[0] == self._version:
            return cached[1]
        index: dict[str, list[JSONDict]] = {}
        for r in self._records[model]:
            value = r.get(field)
            if isinstance(value, str) and value and not r.get("archived"):
                index.setdefault(value, []).append(r)
        self._indexes[(model, field)] = (self._version, index)
        return index

    def _touch(self, model: Model, record: JSONDict, before: Mapping[str, Any] | None) -> None:
        """Bump the version after ``record`` was added or changed, keeping built indexes current
        (a bulk upsert of thousands of records must not rebuild them once per record)."""
        version = self._version + 1
        for key, (built, index) in list(self._indexes.items()):
            if built != self._version:
                continue  # stale: rebuilt on next use
            if key[0] == model:
                field = key[1]
                old = (
                    before.get(field) if before is not None and not before.get("archived") else None
                )
                if isinstance(old, str) and old in index:
                    kept = [r for r in index[old] if r is not record]
                    if kept:
                        index[old] = kept
                    else:
                        del index[old]
                new = record.get(field)
                if isinstance(new, str) and new and not record.get("archived"):
                    index.setdefault(new, []).append(record)
            self._indexes[key] = (version, index)
        self._version = version

    def _ext_index(self, model: Model) -> dict[str, list[JSONDict]]:
        return self._index(model, "externalId")

    def match_external(self, model: Model, external_id: Any) -> list[JSONDict]:
        """Visible records of ``model`` whose ``externalId`` equals ``external_id`` exactly."""
        if not isinstance(external_id, str) or not external_id:
            return []
        with self._lock:
            return list(self._ext_index(model).get(external_id, ()))

    def external_counts(self, model: Model) -> dict[str, int]:
        """How many visible records of ``model`` carry each ``externalId``."""
        with self._lock:
            return {k: len(v) for k, v in self._ext_index(model).items()}

    def company_external_id(self, company_id: Any) -> Any:
        """The ``externalId`` of the Company with ``_id`` ``company_id`` (None if unknown)."""
        with self._lock:
            company = (
                self._by_id["Company"].get(company_id) if isinstance(company_id, str) else None
            )
            return company.get("externalId") if company is not None else None

    def match_email(self, email: Any) -> list[JSONDict]:
        """Visible End Users with this exact email."""
        if not isinstance(email, str) or not email:
            return []
        with self._lock:
            return list(self._index("EndUser", "email").get(email, ()))

    def records(self, model: Model, *, include_archived: bool = False) -> list[JSONDict]:
        """Copies of all records of ``model``, in insertion order."""
        with self._lock:
            return [
                dict(r) for r in self._records[model] if include_archived or not r.get("archived")
            ]

    def get(self, model: Model, key: str) -> JSONDict | None:
        """One record by ``_id``, ``extid-<externalId>`` or ``srcid-<sourceId>``."""
        with self._lock:
            for prefix, field in (("extid-", "externalId"), ("srcid-", "sourceId")):
                if key.startswith(prefix):
                    hits = self._index(model, field).get(key[len(prefix) :], [])
                    return dict(hits[0]) if hits else None
            hit = self._by_id[model].get(key)
            return dict(hit) if hit is not None else None

    def page(
        self,
        model: Model,
        *,
        offset: int = 0,
        limit: int = 100,
        select: Sequence[str] | None = None,
        sort: str | None = None,
        filters: Mapping[str, set[str]] | None = None,
    ) -> list[JSONDict]:
        """One page of visible records, the way ``GET /<collection>`` returns it.

        Args:
            model: which collection.
            offset: rows to skip.
            limit: page size.
            select: fields to return (``_id`` is always included); all fields when None.
            sort: ``_id``, ``-_id``, or any field with an optional ``-`` prefix.
            filters: field -> accepted values (e.g. ``companyId``).

        Returns:
            The page (copies).
        """
        with self._lock:
            ordered = self._ordered(model, sort)
            if filters:
                ordered = [
                    r for r in ordered if all(r.get(f) in vals for f, vals in filters.items())
                ]
            page = ordered[offset : offset + limit]
            if select is None:
                return [dict(r) for r in page]
            fields = ["_id", *[f for f in select if f != "_id"]]
            return [{f: r[f] for f in fields if f in r} for r in page]

    def _ordered(self, model: Model, sort: str | None) -> list[JSONDict]:
        key = (model, sort or None)
        cached = self._sorted_cache.get(key)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        visible = [r for r in self._records[model] if not r.get("archived")]
        if sort:
            field = sort.lstrip("-")
            visible.sort(key=lambda r: _sort_key(r.get(field)), reverse=sort.startswith("-"))
        self._sorted_cache[key] = (self._version, visible)
        return visible

    def _resolve_company(self, value: Any) -> JSONDict | None:
        if not isinstance(value, str) or not value:
            return None
        if value.startswith("extid-") or value.startswith("srcid-"):
            found = self.get("Company", value)
            return self._by_id["Company"].get(found["_id"]) if found else None
        return self._by_id["Company"].get(value)

    def _find(self, model: Model, item: Mapping[str, Any]) -> tuple[JSONDict | None, str | None]:
        for keyable in _KEYABLES:
            value = item.get(keyable)
            if value is None or value == "":
                continue
            if keyable == "_id":
                hit = self._by_id[model].get(value) if isinstance(value, str) else None
                return hit, None if hit else f"no {model} with _id {value!r}"
            hits = self._index(model, keyable).get(value, []) if isinstance(value, str) else []
            if hits:
                return hits[0], None
        return None, None

    def upsert(
        self, model: Model, items: Sequence[Any], *, outcomes: list[str] | None = None
    ) -> JSONDict:
        """Apply a bulk upsert (``PUT /<collection>``) and return Planhat's summary.

        Args:
            model: which collection.
            items: the request's JSON array.
            outcomes: when given, receives one of ``created``, ``updated``, ``unchanged`` or
                ``error`` per item, in order.

        Returns:
            ``{created, createdErrors, insertsKeys, updated, updatedErrors, updatesKeys,
            nonupdates, modified, upsertedIds, permissionErrors}``.
        """
        report: JSONDict = {
            "created": 0,
            "createdErrors": [],
            "insertsKeys": [],
            "updated": 0,
            "updatedErrors": [],
            "updatesKeys": [],
            "nonupdates": 0,
            "modified": [],
            "upsertedIds": [],
            "permissionErrors": [],
        }
        with self._lock:
            for item in items:
                before = (report["created"], report["updated"], report["nonupdates"])
                if not isinstance(item, Mapping):
                    report["createdErrors"].append(
                        {"item": item, "error": "item must be an object"}
                    )
                else:
                    existing, error = self._find(model, item)
                    if error:
                        report["updatedErrors"].append({"item": dict(item), "error": error})
                    elif existing is not None:
                        self._update(model, existing, item, report)
                    else:
                        self._create(model, item, report)
                if outcomes is not None:
                    after = (report["created"], report["updated"], report["nonupdates"])
                    changed = [a > b for a, b in zip(after, before, strict=True)]
                    outcomes.append(
                        "created"
                        if changed[0]
                        else "updated"
                        if changed[1]
                        else "unchanged"
                        if changed[2]
                        else "error"
                    )
        return report

    def _apply_company(self, fields: dict[str, Any]) -> str | None:
        if "companyId" not in fields:
            return None
        company = self._resolve_company(fields["companyId"])
        if company is None:
            return f"companyId {fields['companyId']!r} matches no Company"
        fields["companyId"] = company["_id"]
        fields["companyName"] = company.get("name")
        return None

    def _update(
        self, model: Model, existing: JSONDict, item: Mapping[str, Any], report: JSONDict
    ) -> None:
        fields = {k: v for k, v in item.items() if k != "_id"}
        error = self._apply_company(fields)
        if error:
            report["updatedErrors"].append({"item": dict(item), "error": error})
            return
        changes = {k: v for k, v in fields.items() if existing.get(k) != v}
        keys = {
            k: existing.get(k)
            for k in ("_id", "externalId", "sourceId")
            if existing.get(k) is not None
        }
        if not changes:
            report["nonupdates"] += 1
            return
        before = dict(existing)
        existing.update(changes)
        existing["updatedAt"] = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        self._touch(model, existing, before)
        report["updated"] += 1
        report["updatesKeys"].append(keys)
        report["modified"].append(existing["_id"])

    def _create(self, model: Model, item: Mapping[str, Any], report: JSONDict) -> None:
        fields = dict(item)
        required = {"EndUser": ("email", "companyId"), "Company": ("name",)}.get(
            model, ("name", "companyId")
        )
        missing = [f for f in required if not fields.get(f)]
        if missing:
            report["createdErrors"].append(
                {"item": dict(item), "error": f"missing required field(s): {', '.join(missing)}"}
            )
            return
        error = self._apply_company(fields)
        if error:
            report["createdErrors"].append({"item": dict(item), "error": error})
            return
        if model == "EndUser" and "name" not in fields:
            fields["name"] = (
                " ".join(str(fields.get(k, "")) for k in ("firstName", "lastName")).strip()
                or fields["email"]
            )
        if model == "EndUser":
            fields.setdefault("archived", False)
        record = self.add(model, fields)
        report["created"] += 1
        report["insertsKeys"].append(
            {k: record[k] for k in ("_id", "externalId", "sourceId") if record.get(k) is not None}
        )
        report["upsertedIds"].append(record["_id"])

    # ------------------------------------------------------------------ metric points

    def store_metric(
        self, *, target: JSONDict, model: Model, dimension_id: str, value: float, day: str | None
    ) -> JSONDict:
        """Store one accepted metric point on ``target`` (a record of ``model``)."""
        when = day or datetime.now(UTC).date().isoformat()
        if model == "Company":
            company_id = target["_id"]
            company_name = target.get("name")
        else:
            company_id = target.get("companyId")
            company_name = target.get("companyName")
        point: JSONDict = {
            "_id": self.new_id("dimensiondata"),
            "dimensionId": dimension_id,
            "time": f"{when[:10]}T00:00:00.000Z",
            "value": value,
            "model": model,
            "parentId": target["_id"],
            "companyId": company_id,
            "companyName": company_name,
        }
        with self._lock:
            self._points.append(point)
            self._points_version += 1
        return point

    def metric_points(
        self,
        *,
        company_id: str | None = None,
        dimension_id: str | None = None,
        from_day: int | None = None,
        to_day: int | None = None,
        offset: int = 0,
        limit: int = 2000,
    ) -> list[JSONDict]:
        """Stored points, the way ``GET /dimensiondata`` filters them (days since 1970-01-01, inclusive)."""
        with self._lock:
            key = (self._points_version, company_id, dimension_id, from_day, to_day)
            if self._points_cache is not None and self._points_cache[0] == key:
                return [dict(p) for p in self._points_cache[1][offset : offset + limit]]
            out = []
            for p in self._points:
                if company_id is not None and p["companyId"] != company_id:
                    continue
                if dimension_id is not None and p["dimensionId"] != dimension_id:
                    continue
                day_no = (date.fromisoformat(p["time"][:10]) - _EPOCH).days
                if from_day is not None and day_no < from_day:
                    continue
                if to_day is not None and day_no > to_day:
                    continue
                out.append(p)
            self._points_cache = (key, out)
            return [dict(p) for p in out[offset : offset + limit]]

    def set_metric_day(
        self,
        *,
        dimension_id: str,
        model: Model,
        external_id: str,
        day: date | str,
        value: float | None,
    ) -> int:
        """Change a metric day on the Planhat side, as a Planhat user could: the day's points
        on the object with this ``externalId`` are replaced by one point of ``value`` (so the
        day shows ``value`` whether the metric sums or takes the last point), or all removed
        when ``value`` is None. What the sandbox received (`Recorder`) is left as it was.

        Returns:
            How many points were removed.

        Raises:
            KeyError: No visible ``model`` record has this ``externalId``.
        """
        when = day if isinstance(day, str) else day.isoformat()
        with self._lock:
            targets = self.match_external(model, external_id)
            if not targets:
                raise KeyError(f"no {model} with externalId {external_id!r}")
            parents = {t["_id"] for t in targets}
            kept, removed = [], 0
            for p in self._points:
                if (
                    p["dimensionId"] == dimension_id
                    and p["model"] == model
                    and p["parentId"] in parents
                    and p["time"][:10] == when[:10]
                ):
                    removed += 1
                else:
                    kept.append(p)
            self._points = kept
            self._points_version += 1
            if value is not None:
                self.store_metric(
                    target=targets[0],
                    model=model,
                    dimension_id=dimension_id,
                    value=float(value),
                    day=when,
                )
            return removed
