"""Deterministic Pendo usage and Planhat objects for the sandbox, with labelled ground truth.

Everything is a pure function of :class:`SandboxSpec` plus the per-day revisions applied with
:meth:`Dataset.revise_day` (and :meth:`Dataset.add_late_endusers` / upserts on the Planhat side):
re-creating a :class:`Dataset` from the same spec gives byte-identical rows.

How a day is made (vectorised with numpy, strings gathered with Polars):

1. Usage keys ``(visitor, account, feature)`` are sampled with per-visitor activity and
   per-feature popularity weights; visitors with a second account use it for some keys.
2. Each key gets ``numEvents`` (>= 1) and ``numMinutes`` (>= 0), then is split into 1-4 Pendo rows
   that differ by ``remoteIp`` (IPv4/IPv6), ``userAgent`` and ``server``; the rows sum to the key.
3. ``hourRange`` rows split every daily row further into 1-3 local hours, so hourly rows always
   sum to the daily ones (DST days have 23 or 25 hours).

Visitors and accounts carry category labels (``matched``, ``missing``, ``case_variant``,
``ambiguous``, ``late``; ``anonymous`` for ``_PENDO_T_`` ids) that decide which Planhat objects
exist. The ``truth_*`` helpers compute what a correct sync must deliver from the labelled arrays
and the current Planhat state, independent of the product's code.

``pageEvents`` and ``trackEvents`` rows (pages and track types instead of features) come from
their own seeded streams, so they never change feature events. ``SandboxSpec.identity`` adds
visitor emails and End Users matched by email (:meth:`Dataset.identity_categories`); the
``truth_identity``, ``truth_created_end_users``, ``truth_activities_by_key`` and
``truth_unmatched_by_key`` helpers give the ground truth for each ``matching`` config.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import polars as pl

from pendo_assets.types import MODELS, JSONDict, Model

from ._time import as_date, day_start_ms, hour_starts_ms
from .pipeline import RANK_PREFIX, SourceSpec, evaluate_pipeline
from .planhat import PlanhatStore

__all__ = [
    "DEFAULT_APP_ID",
    "SECOND_APP_ID",
    "AccountCategory",
    "Dataset",
    "IdentityCategory",
    "IdentityMatch",
    "MatchedBy",
    "SandboxSpec",
    "UnmatchedAccountReason",
    "UnmatchedIdentityReason",
    "UnmatchedVisitorReason",
    "VisitorCategory",
]

DEFAULT_APP_ID = -323232
SECOND_APP_ID = 5629499534213120

VisitorCategory: TypeAlias = Literal[
    "matched", "missing", "case_variant", "ambiguous", "late", "anonymous"
]
AccountCategory: TypeAlias = Literal["matched", "missing", "case_variant", "ambiguous"]
UnmatchedVisitorReason: TypeAlias = Literal["anonymous", "no_enduser", "ambiguous"]
UnmatchedAccountReason: TypeAlias = Literal["no_object", "ambiguous"]
ItemSource: TypeAlias = Literal["pageEvents", "trackEvents"]

IdentityCategory: TypeAlias = Literal[
    "email_only", "email_shared", "email_ambiguous", "create", "no_company", "no_email"
]
MatchedBy: TypeAlias = Literal["externalId", "email", "created"]
UnmatchedIdentityReason: TypeAlias = Literal[
    "anonymous", "no_enduser", "ambiguous", "ambiguous_email"
]


class IdentityMatch(NamedTuple):
    """How a (visitor, account) pair resolves: matched (``matched_by``, ``key``) or ``reason``."""

    matched_by: MatchedBy | None
    key: str | None
    reason: UnmatchedIdentityReason | None


_ICATS: tuple[IdentityCategory, ...] = (
    "email_only",
    "email_shared",
    "email_ambiguous",
    "create",
    "no_company",
    "no_email",
)
_VCATS: tuple[VisitorCategory, ...] = ("matched", "missing", "case_variant", "ambiguous", "late")
_ACATS: tuple[AccountCategory, ...] = ("matched", "missing", "case_variant", "ambiguous")

IntArray: TypeAlias = npt.NDArray[Any]  # int32 in day cores, int64 for key codes
_Revision: TypeAlias = tuple[bool, float | None]  # (grow, share of rows changed or None)

_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_FEATURE_NAMES = (
    "Export report",
    "Create dashboard",
    "Share link",
    "Invite teammate",
    "Filter table",
    "Download CSV",
    "Schedule report",
    "Add widget",
    "Global search",
    "Upload file",
    "Comment on record",
    "Bulk edit",
    "Connect integration",
    "Run query",
    "Archive project",
    "Open settings",
    "Create workflow",
    "Assign task",
    "Tag record",
    "Print view",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
)
_SERVERS = ("app.example.com", "eu.app.example.com", "beta.example.com")
_PAGE_NAMES = (
    "Dashboard",
    "Billing",
    "Settings",
    "Reports",
    "Team members",
    "Integrations",
    "Onboarding checklist",
    "Search results",
)
_TRACK_TYPE_NAMES = (
    "Invited teammate",
    "Created project",
    "Upgraded plan",
    "Exported data",
    "Connected integration",
    "Completed onboarding",
)
_PAGE_TABS = ("overview", "details", "history")
_FIRST_NAMES = (
    "Ann",
    "Bob",
    "Chen",
    "Dana",
    "Eli",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Jo",
    "Kofi",
    "Lena",
    "Mateo",
    "Nia",
    "Omar",
    "Priya",
)
_LAST_NAMES = (
    "Lee",
    "Smith",
    "Kim",
    "Garcia",
    "Müller",
    "Okafor",
    "Rossi",
    "Sato",
    "Nowak",
    "Silva",
    "Haddad",
    "Berg",
)
_LONG_ID = ("long-" + "abcdefghijklmnopqrstuvwxyz0123456789" * 9)[:300]
# Identified visitors with awkward ids; each is active most days. (id, category)
_SPECIAL_VISITORS: tuple[tuple[str, VisitorCategory], ...] = (
    ("4", "matched"),
    ("0", "matched"),
    ("ann.lee@example.com", "matched"),
    ('xss"/*\\*/"onmouseover=alert(1)', "matched"),
    ("zoë-42", "matched"),
    ("用户-7", "matched"),
    (" padded-user ", "matched"),
    (_LONG_ID, "matched"),
    ("Dana.Kim@Example.com", "case_variant"),
)
_SPECIAL_ACCOUNTS = {1: "Société Générale Ω", 2: "acct 00002 legacy"}
_ROWS_PER_KEY = np.array([1, 2, 3, 4])
_ROWS_PER_KEY_P = np.array([0.4, 0.3, 0.2, 0.1])
_EVENTS_P = 0.25  # numEvents per (visitor, account, feature, day) ~ geometric, mean 4
_MINUTES_P = 0.4  # numMinutes ~ binomial(numEvents, 0.4): often 0 for light usage
_HOURLY_ROWS_PER_DAILY_ROW = 1.45  # each daily row spans 1-3 local hours (~1.42 on average)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


def _mean_rows_per_key() -> float:
    # E[min(K, N)] with K ~ _ROWS_PER_KEY_P and N ~ geometric(_EVENTS_P) on 1, 2, ...
    total = 0.0
    for k, pk in zip(_ROWS_PER_KEY, _ROWS_PER_KEY_P, strict=True):
        expect = sum((1 - _EVENTS_P) ** (j - 1) for j in range(1, int(k) + 1))
        total += float(pk) * expect
    return total


_MEAN_ROWS_PER_KEY = _mean_rows_per_key()


@dataclass(frozen=True)
class SandboxSpec:
    """What the sandbox generates. Defaults suit a quick demo; see :meth:`for_rows` for scale.

    Visitor fractions apply to identified visitors, account fractions to accounts; whatever is
    left is ``matched``.

    ``identity`` (off by default, so today's data stays as it is) gives identified visitors an
    email in ``metadata.agent.email`` and adds End Users matched by email only (see
    :meth:`Dataset.identity_categories`). ``pageEvents`` and ``trackEvents`` are always served
    (``n_pages`` pages, ``n_track_types`` track types; ``page_rows_per_day`` defaults to half of
    ``rows_per_day``, ``track_rows_per_day`` to a fifth); they never change feature events.
    """

    seed: int = 7
    timezone: str = "America/New_York"
    n_visitors: int = 2000
    n_accounts: int = 200
    n_features: int = 12
    rows_per_day: int = 5000
    n_apps: int = 2
    anonymous_fraction: float = 0.1
    anonymous_key_fraction: float = 0.06
    multi_account_fraction: float = 0.05
    visitor_missing: float = 0.06
    visitor_case_variant: float = 0.03
    visitor_ambiguous: float = 0.03
    visitor_late: float = 0.05
    account_missing: float = 0.08
    account_case_variant: float = 0.04
    account_ambiguous: float = 0.04
    asset_fraction: float = 0.5
    project_fraction: float = 0.33
    cache_rows: int | None = None
    identity: bool = False
    n_pages: int = 6
    n_track_types: int = 4
    page_rows_per_day: int | None = None
    track_rows_per_day: int | None = None

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        if self.n_visitors < 1 or self.n_accounts < 1 or self.n_features < 1:
            raise ValueError("n_visitors, n_accounts and n_features must be at least 1")
        if not 1 <= self.n_apps <= self.n_features:
            raise ValueError(f"n_apps must be between 1 and n_features ({self.n_features})")
        if self.rows_per_day < 0:
            raise ValueError("rows_per_day must be >= 0")
        if self.n_pages < 1 or self.n_track_types < 1:
            raise ValueError("n_pages and n_track_types must be at least 1")
        if (self.page_rows_per_day or 0) < 0 or (self.track_rows_per_day or 0) < 0:
            raise ValueError("page_rows_per_day and track_rows_per_day must be >= 0")
        for name in (
            "anonymous_fraction",
            "anonymous_key_fraction",
            "multi_account_fraction",
            "visitor_missing",
            "visitor_case_variant",
            "visitor_ambiguous",
            "visitor_late",
            "account_missing",
            "account_case_variant",
            "account_ambiguous",
            "asset_fraction",
            "project_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        if (
            self.visitor_missing
            + self.visitor_case_variant
            + self.visitor_ambiguous
            + self.visitor_late
            > 1
        ):
            raise ValueError("visitor category fractions add up to more than 1")
        if self.account_missing + self.account_case_variant + self.account_ambiguous > 1:
            raise ValueError("account category fractions add up to more than 1")
        keys = self.rows_per_day / _MEAN_ROWS_PER_KEY
        capacity = self.n_visitors * self.n_features
        if keys > 0.5 * capacity:
            need = math.ceil(2 * keys / self.n_features)
            raise ValueError(
                f"rows_per_day={self.rows_per_day} needs about {need} visitors at n_features="
                f"{self.n_features} (got n_visitors={self.n_visitors}); "
                "use SandboxSpec.for_rows(rows_per_day) to scale visitors and accounts"
            )

    @property
    def cache_budget(self) -> int:
        """Rows kept in each of the frame and result caches (``cache_rows``, else ~1.6 days)."""
        return (
            self.cache_rows
            if self.cache_rows is not None
            else max(2_000_000, int(1.6 * self.rows_per_day))
        )

    def item_rows_per_day(self, kind: ItemSource) -> int:
        """Approximate rows a day of ``pageEvents`` or ``trackEvents`` has."""
        if kind == "pageEvents":
            given, share = self.page_rows_per_day, 2
        else:
            given, share = self.track_rows_per_day, 5
        return given if given is not None else self.rows_per_day // share

    @classmethod
    def for_rows(cls, rows_per_day: int, **overrides: Any) -> SandboxSpec:
        """A spec sized for ``rows_per_day``: visitors and accounts grow with the row count.

        Args:
            rows_per_day: approximate feature-event rows per day (e.g. 4_000_000).
            **overrides: any other :class:`SandboxSpec` field.

        Returns:
            The spec.
        """
        n_visitors = max(2000, math.ceil(rows_per_day / 8))
        values: dict[str, Any] = {
            "rows_per_day": rows_per_day,
            "n_visitors": n_visitors,
            "n_accounts": max(200, n_visitors // 10),
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_tenant(
        cls, *, endusers: int, companies: int, rows_per_day: int = 5000, **overrides: Any
    ) -> SandboxSpec:
        """A spec whose Planhat tenant holds about ``endusers`` End Users and ``companies``
        Companies (within a few), e.g. a B2C-leaning tenant of 1M End Users and 50k Companies.

        Args:
            endusers: End Users listed by ``GET /endusers`` (late ones not counted).
            companies: Companies listed by ``GET /companies``.
            rows_per_day: approximate feature-event rows per day.
            **overrides: any other :class:`SandboxSpec` field (the category fractions too).

        Returns:
            The spec.
        """

        def given(name: str) -> float:
            return float(overrides.get(name, getattr(cls, name)))

        # Per visitor, `Dataset._build_planhat` makes one End User (matched, case variant), two
        # (ambiguous) or none (missing, late), plus 1 in 100 without externalId and 1 in 50
        # CRM-only; per account one Company, two (ambiguous) or none, plus 1 in 50 orphans and
        # 1 in 50 CRM-only.
        per_visitor = 1 - given("visitor_missing") - given("visitor_late")
        per_visitor += given("visitor_ambiguous") + 0.01 + 0.02
        per_account = 1 - given("account_missing") + given("account_ambiguous") + 0.04
        values: dict[str, Any] = {
            "rows_per_day": rows_per_day,
            "n_visitors": max(20, round(endusers / per_visitor)),
            "n_accounts": max(10, round(companies / per_account)),
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class _DayCore:
    """One day's Pendo rows as integer arrays (strings are gathered when a frame is built)."""

    vis: IntArray  # visitor index (identified first, then anonymous)
    acc: IntArray  # account index; n_accounts = "", n_accounts + 1 = null
    feat: IntArray
    slot: IntArray  # 0..3: which IP / user agent / server variant of the visitor
    nev: IntArray
    nmin: IntArray

    def __len__(self) -> int:
        return int(self.vis.shape[0])

    @classmethod
    def of(cls, *arrays: IntArray) -> _DayCore:
        """Build a core, storing every array as int32 (half the memory of int64)."""
        return cls(*(np.ascontiguousarray(a, dtype=np.int32) for a in arrays))

    def take(self, index: IntArray) -> _DayCore:
        """The rows at ``index`` (a permutation, a mask or a gather)."""
        return _DayCore(*(getattr(self, f)[index] for f in _CORE_FIELDS))


_CORE_FIELDS = ("vis", "acc", "feat", "slot", "nev", "nmin")


@dataclass(frozen=True)
class _Items:
    """Pages or track types: ids, names, apps and popularity (the features' counterpart)."""

    kind: ItemSource
    column: str  # pageId | trackTypeId
    ids: list[str]
    names: list[str]
    app: IntArray
    cdf: npt.NDArray[np.float64]
    series: pl.Series
    rank: pl.Series


def _make_items(spec: SandboxSpec, kind: ItemSource, app_ids: Sequence[int]) -> _Items:
    """Build the pages (``pageEvents``) or track types from their own seeded stream."""
    pages = kind == "pageEvents"
    rng = np.random.default_rng([spec.seed, 40 if pages else 41])
    n = spec.n_pages if pages else spec.n_track_types
    names_pool = _PAGE_NAMES if pages else _TRACK_TYPE_NAMES
    ids: list[str] = []
    while len(ids) < n:
        for s in _random_strings(rng, n, 27, _B64URL):
            if s not in ids and len(ids) < n:
                ids.append(s)
    names = [
        names_pool[i % len(names_pool)]
        + ("" if i < len(names_pool) else f" {i // len(names_pool) + 1}")
        for i in range(n)
    ]
    weights = 1.0 / (np.arange(n) + 1.0) ** 0.7
    column = "pageId" if pages else "trackTypeId"
    series = pl.Series(column, ids, dtype=pl.String)
    return _Items(
        kind=kind,
        column=column,
        ids=ids,
        names=names,
        app=np.array([app_ids[i % len(app_ids)] for i in range(n)], dtype=np.int64),
        cdf=np.cumsum(weights / weights.sum()),
        series=series,
        rank=series.rank("dense").cast(pl.UInt32),
    )


def _random_strings(rng: np.random.Generator, n: int, length: int, alphabet: bytes) -> list[str]:
    table = np.frombuffer(alphabet, dtype=np.uint8)
    codes = table[rng.integers(0, len(alphabet), size=(n, length))]
    return [s.decode() for s in np.ascontiguousarray(codes).view(f"S{length}").ravel()]


def _split(
    parts: IntArray, u: npt.NDArray[np.float64], totals: IntArray, *, min_one: bool
) -> IntArray:
    """Split ``totals[i]`` into ``parts[i]`` integers (>= 1 when ``min_one``) proportional to ``u``."""
    starts = np.cumsum(parts) - parts
    owner = np.repeat(np.arange(parts.shape[0]), parts)
    base = 1 if min_one else 0
    extra = totals - base * parts
    sums = np.add.reduceat(u, starts) if u.shape[0] else np.zeros(0)
    share: IntArray = np.floor(extra[owner] * (u / sums[owner])).astype(np.int64)
    if share.shape[0]:
        share[starts] += extra - np.add.reduceat(share, starts)
    share += base
    return share


def _sorted_unique(values: IntArray) -> IntArray:
    # np.unique's hash-based path is several times slower than sort + mask for int64 keys.
    ordered = np.sort(values)
    if ordered.shape[0] == 0:
        return ordered
    keep = np.empty(ordered.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _email_variant(email: str, code: int) -> str:
    """The email as a Pendo visitor carries it: mostly as is, else other case or padded."""
    if code == 6:
        return email.upper()
    if code == 7:
        return email[:1].upper() + email[1:]
    if code == 8:
        return f" {email} "
    if code == 9:
        return f"{email.upper()}  "
    return email


def _norm_email(value: Any) -> str | None:
    """An email as matching compares it: trimmed and lower-cased; None when empty."""
    if not isinstance(value, str):
        return None
    return value.strip().lower() or None


def _case_variant(value: str) -> str:
    lower = value.lower()
    return lower if lower != value else value.upper()


class _Population:
    """The static part: features, accounts, visitors, string pools (built once per spec)."""

    def __init__(self, spec: SandboxSpec) -> None:
        rng = np.random.default_rng([spec.seed, 0])
        n_f, n_a, n_v = spec.n_features, spec.n_accounts, spec.n_visitors
        self.n_features, self.n_accounts, self.n_visitors = n_f, n_a, n_v

        # Features
        ids: list[str] = []
        while len(ids) < n_f:
            for s in _random_strings(rng, n_f, 27, _B64URL):
                if s not in ids and len(ids) < n_f:
                    ids.append(s)
        self.feature_ids = ids
        self.feature_names = [
            _FEATURE_NAMES[i % len(_FEATURE_NAMES)]
            + ("" if i < len(_FEATURE_NAMES) else f" {i // len(_FEATURE_NAMES) + 1}")
            for i in range(n_f)
        ]
        self.app_ids = [
            DEFAULT_APP_ID,
            SECOND_APP_ID,
            *[SECOND_APP_ID + k for k in range(1, spec.n_apps - 1)],
        ][: spec.n_apps]
        self.feature_app = np.array(
            [self.app_ids[i % spec.n_apps] for i in range(n_f)], dtype=np.int64
        )
        fw = 1.0 / (np.arange(n_f) + 1.0) ** 0.8
        self.feature_cdf = np.cumsum(fw / fw.sum())
        self.feature_index = {fid: i for i, fid in enumerate(ids)}

        # Accounts
        self.account_ids = [
            _SPECIAL_ACCOUNTS.get(i, f"acct-{i:05d}") if n_a >= 10 else f"acct-{i:05d}"
            for i in range(n_a)
        ]
        specials_a = set(_SPECIAL_ACCOUNTS) if n_a >= 10 else set()
        self.account_cat = self._categories(
            rng,
            n_a,
            specials_a,
            [
                (1, spec.account_missing),
                (2, spec.account_case_variant),
                (3, spec.account_ambiguous),
            ],
        )

        # Identified visitors
        base_ids = pl.int_range(n_v, eager=True).cast(pl.String).str.zfill(6)
        visitor_ids = ("user-" + base_ids).to_list()
        specials_v: dict[int, VisitorCategory] = {}
        if n_v >= 20:
            for i, (vid, cat) in enumerate(_SPECIAL_VISITORS):
                visitor_ids[i] = vid
                specials_v[i] = cat
        self.visitor_cat = self._categories(
            rng,
            n_v,
            set(specials_v),
            [
                (1, spec.visitor_missing),
                (2, spec.visitor_case_variant),
                (3, spec.visitor_ambiguous),
                (4, spec.visitor_late),
            ],
        )
        for i, cat in specials_v.items():
            self.visitor_cat[i] = _VCATS.index(cat)
        aw = rng.lognormal(0.0, 1.0, n_a)
        self.visitor_home = rng.choice(n_a, size=n_v, p=aw / aw.sum()).astype(np.int64)
        self.visitor_second = np.full(n_v, -1, dtype=np.int64)
        if n_a >= 2:
            multi = rng.random(n_v) < spec.multi_account_fraction
            offset = 1 + rng.integers(0, n_a - 1, n_v)
            self.visitor_second[multi] = (self.visitor_home[multi] + offset[multi]) % n_a
        vw = rng.lognormal(0.0, 0.8, n_v)
        vw[: len(specials_v)] = vw.mean() * 6
        # Sampling table: each visitor repeated in proportion to its weight, so a draw is one
        # random index (searchsorted over a large CDF is the slow part at millions of rows).
        self.visitor_table = np.repeat(
            np.arange(n_v, dtype=np.int64),
            np.maximum(1, np.rint(vw / vw.mean() * 4)).astype(np.int64),
        )

        # Anonymous visitors: "" (half), null (a fifth) or a real account
        n_anon = round(spec.anonymous_fraction * n_v)
        self.n_anonymous = n_anon
        anon_ids = ["_PENDO_T_" + s for s in _random_strings(rng, n_anon, 11, _ALNUM)]
        draw = rng.random(n_anon)
        self.anon_account = np.where(
            draw < 0.5, n_a, np.where(draw < 0.7, n_a + 1, rng.integers(0, n_a, n_anon))
        ).astype(np.int64)

        n_all = n_v + n_anon
        self.visitor_ids = visitor_ids + anon_ids
        self.visitor_series = pl.Series("visitorId", self.visitor_ids, dtype=pl.String)
        self.account_series = pl.Series("accountId", [*self.account_ids, "", None], dtype=pl.String)
        self.feature_series = pl.Series("featureId", ids, dtype=pl.String)
        self.ua_series = pl.Series("userAgent", _USER_AGENTS, dtype=pl.String)
        self.server_series = pl.Series("server", _SERVERS, dtype=pl.String)
        self.visitor_hash = rng.integers(0, 1 << 20, n_all).astype(np.int64)
        octets = rng.integers(1, 255, size=(n_all * 4, 4))
        groups = rng.integers(0, 10000, size=(n_all * 4, 3))
        ips = pl.DataFrame(
            {
                "a": octets[:, 0],
                "b": octets[:, 1],
                "c": octets[:, 2],
                "d": octets[:, 3],
                "g1": groups[:, 0],
                "g2": groups[:, 1],
                "g3": groups[:, 2],
                "slot": np.tile(np.arange(4), n_all),
            }
        ).select(
            pl.when(pl.col("slot") == 2)
            # Decimal digits are valid hex digits: "2001:db8:17:9042::311" is a valid IPv6 address.
            .then(pl.format("2001:db8:{}:{}::{}", "g1", "g2", "g3"))
            .otherwise(pl.format("{}.{}.{}.{}", "a", "b", "c", "d"))
            .alias("remoteIp")
        )
        self.ip_series = ips.to_series()

    @functools.cached_property
    def ranks(self) -> dict[str, pl.Series]:
        """Dense lexical rank (UInt32; null for null) of every pool entry, per string column."""
        pools = {
            "accountId": self.account_series,
            "featureId": self.feature_series,
            "remoteIp": self.ip_series,
            "server": self.server_series,
            "userAgent": self.ua_series,
            "visitorId": self.visitor_series,
        }
        return {name: s.rank("dense").cast(pl.UInt32) for name, s in pools.items()}

    @staticmethod
    def _categories(
        rng: np.random.Generator, n: int, specials: set[int], fractions: Sequence[tuple[int, float]]
    ) -> npt.NDArray[np.int8]:
        cats = np.zeros(n, dtype=np.int8)
        pool = np.array([i for i in range(n) if i not in specials], dtype=np.int64)
        order = rng.permutation(pool)
        pos = 0
        for code, frac in fractions:
            k = round(frac * len(pool))
            if frac > 0 and k == 0 and len(pool) >= 10:
                k = 1
            cats[order[pos : pos + k]] = code
            pos += k
        return cats

    def account_value(self, code: int) -> str | None:
        if code < self.n_accounts:
            return self.account_ids[code]
        return "" if code == self.n_accounts else None


@dataclass
class _Truth:
    metrics: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    unmatched: dict[tuple[str, str, str, Any], UnmatchedAccountReason] = field(default_factory=dict)


class Dataset:
    """Generated Pendo data, the Planhat tenant built from the same seed, and ground truth.

    Thread-safe; the sandbox's HTTP threads read it concurrently.

    Args:
        spec: what to generate.
        now: the clock used for ``now()`` in pipelines (a fixed instant); ``None`` follows the
            wall clock. Settable later through :attr:`now`.
    """

    def __init__(self, spec: SandboxSpec | None = None, *, now: datetime | None = None) -> None:
        self.spec = spec or SandboxSpec()
        self._tz = ZoneInfo(self.spec.timezone)
        self._now: datetime | None = None
        self.now = now
        self._lock = threading.RLock()
        self._pop = _Population(self.spec)
        self._revisions: dict[date, list[_Revision]] = {}
        self._cores: OrderedDict[Hashable, _DayCore] = OrderedDict()
        self._frames: OrderedDict[Hashable, pl.DataFrame] = OrderedDict()
        self._static_frames: dict[str, pl.DataFrame] = {}
        self.planhat = PlanhatStore(seed=self.spec.seed)
        self._late_endusers: list[JSONDict] = []
        self._late_added = False
        self._emails: list[str | None] = [None] * self.spec.n_visitors
        self._identity_cat = np.full(self.spec.n_visitors, -1, dtype=np.int8)
        self._build_planhat()

    # ------------------------------------------------------------------ clock and calendar

    @property
    def tz(self) -> ZoneInfo:
        """The Pendo subscription timezone."""
        return self._tz

    @property
    def default_app_id(self) -> int:
        """Pendo's default app id."""
        return DEFAULT_APP_ID

    @property
    def now(self) -> datetime:
        """The sandbox clock (aware). Assign a datetime (naive = subscription-local) or ``None``."""
        return self._now if self._now is not None else datetime.now(UTC)

    @now.setter
    def now(self, value: datetime | date | None) -> None:
        if value is None:
            self._now = None
        elif isinstance(value, datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=self._tz)
            self._now = aware.astimezone(UTC)
        else:
            noon = datetime.combine(value, datetime.min.time(), tzinfo=self._tz) + timedelta(
                hours=12
            )
            self._now = noon.astimezone(UTC)

    @property
    def now_ms(self) -> int:
        """The clock as epoch milliseconds."""
        return int(self.now.timestamp() * 1000)

    def today(self) -> date:
        """The current local date in the subscription timezone."""
        return self.now.astimezone(self._tz).date()

    def day_start_ms(self, day: date | str) -> int:
        """Local midnight of ``day`` as epoch ms (Pendo's ``day`` value)."""
        return day_start_ms(as_date(day), self._tz)

    def hour_starts_ms(self, day: date | str) -> tuple[int, ...]:
        """Starts of the local hours of ``day`` (23, 24 or 25 of them)."""
        return hour_starts_ms(as_date(day), self._tz)

    # ------------------------------------------------------------------ labels

    @property
    def app_ids(self) -> list[int]:
        """App ids, the default app first."""
        return list(self._pop.app_ids)

    def features(self, *, app_id: int | None = None) -> list[JSONDict]:
        """Feature objects as ``GET /api/v1/feature?expand=*`` returns them (or one app's)."""
        return [f for f in self._feature_objects() if app_id is None or f["appId"] == app_id]

    def visitor_categories(self) -> dict[str, VisitorCategory]:
        """Visitor id -> category (``anonymous`` for ``_PENDO_T_`` ids)."""
        pop = self._pop
        out: dict[str, VisitorCategory] = {
            vid: _VCATS[int(pop.visitor_cat[i])]
            for i, vid in enumerate(pop.visitor_ids[: pop.n_visitors])
        }
        out.update(dict.fromkeys(pop.visitor_ids[pop.n_visitors :], "anonymous"))
        return out

    def account_categories(self) -> dict[str, AccountCategory]:
        """Account id -> Company category."""
        return {
            aid: _ACATS[int(c)]
            for aid, c in zip(self._pop.account_ids, self._pop.account_cat, strict=True)
        }

    def visitor_accounts(self) -> dict[str, tuple[str | None, ...]]:
        """Visitor id -> the account(s) its events carry (home first)."""
        pop = self._pop
        out: dict[str, tuple[str | None, ...]] = {}
        for i in range(pop.n_visitors):
            accs = [pop.account_ids[int(pop.visitor_home[i])]]
            if pop.visitor_second[i] >= 0:
                accs.append(pop.account_ids[int(pop.visitor_second[i])])
            out[pop.visitor_ids[i]] = tuple(accs)
        for j in range(pop.n_anonymous):
            out[pop.visitor_ids[pop.n_visitors + j]] = (
                pop.account_value(int(pop.anon_account[j])),
            )
        return out

    # ------------------------------------------------------------------ mutations

    def revisions(self, day: date | str) -> int:
        """How many times ``day`` was revised."""
        with self._lock:
            return len(self._revisions.get(as_date(day), []))

    def revision_log(self) -> dict[str, list[bool | JSONDict]]:
        """Every revised day (ISO) -> its revisions (True = grow; ``{"grow", "share"}`` when a
        share was given), to rebuild the data elsewhere."""
        with self._lock:
            return {
                d.isoformat(): [g if s is None else {"grow": g, "share": s} for g, s in r]
                for d, r in sorted(self._revisions.items())
            }

    def revise_day(self, day: date | str, *, grow: bool = True, share: float | None = None) -> int:
        """Change a day's data deterministically, like Pendo reprocessing late or re-tagged events.

        With ``grow=True`` every (visitor, account, feature) count only grows: some rows get more
        events and new keys appear. With ``grow=False`` some rows lose events and a few vanish, so
        some key counts shrink (drift). Metric values change either way.

        Args:
            day: the local day.
            grow: grow or shrink.
            share: the share of rows that change (default 0.15); a grow also adds new keys for
                a third of that share of the day's keys (default 0.05), a shrink drops a fifth of
                it of the rows (default 0.03).

        Returns:
            The day's revision number after the change.
        """
        d = as_date(day)
        if share is not None:
            _check_fraction("share", share)
        with self._lock:
            self._revisions.setdefault(d, []).append((grow, share))
            return len(self._revisions[d])

    def add_late_endusers(self) -> int:
        """Create the End Users of ``late`` visitors (idempotent). Returns how many were added."""
        with self._lock:
            if self._late_added:
                return 0
            self._late_added = True
            return self.planhat.add_many("EndUser", [dict(r) for r in self._late_endusers])

    # ------------------------------------------------------------------ Pendo rows

    def feature_events(self, day: date | str, *, hourly: bool = False) -> pl.DataFrame:
        """All feature-event rows of ``day`` (every app), exactly as the API serves them.

        Args:
            day: the local day.
            hourly: ``hourRange`` rows (with ``hour``) instead of ``dayRange`` rows.

        Returns:
            Columns ``accountId, appId, day, featureId, [hour,] numEvents, numMinutes, remoteIp,
            server, userAgent, visitorId``.
        """
        frame = self._frame(as_date(day), hourly)
        return frame.select([c for c in frame.columns if not c.startswith(RANK_PREFIX)])

    def page_events(self, day: date | str, *, hourly: bool = False) -> pl.DataFrame:
        """All ``pageEvents`` rows of ``day`` (every app): ``accountId, appId, day, [hour,]
        numEvents, numMinutes, pageId, parameters, remoteIp, server, userAgent, visitorId``."""
        return self._public(self._item_frame("pageEvents", as_date(day), hourly))

    def track_events(self, day: date | str, *, hourly: bool = False) -> pl.DataFrame:
        """All ``trackEvents`` rows of ``day`` (every app): ``accountId, appId, day, [hour,]
        numEvents, numMinutes, remoteIp, server, trackTypeId, userAgent, visitorId``."""
        return self._public(self._item_frame("trackEvents", as_date(day), hourly))

    @staticmethod
    def _public(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select([c for c in frame.columns if not c.startswith(RANK_PREFIX)])

    def pages(self, *, app_id: int | None = None) -> list[JSONDict]:
        """Page objects as ``GET /api/v1/page?expand=*`` returns them (or one app's)."""
        objects = self._item_objects("pageEvents")
        return [p for p in objects if app_id is None or p["appId"] == app_id]

    def track_types(self, *, app_id: int | None = None) -> list[JSONDict]:
        """Track types as the ``trackTypes`` aggregation source returns them (or one app's)."""
        objects = self._item_objects("trackEvents")
        return [t for t in objects if app_id is None or t["appId"] == app_id]

    @functools.cached_property
    def _item_pools(self) -> dict[ItemSource, _Items]:
        return {
            kind: _make_items(self.spec, kind, self._pop.app_ids)
            for kind in ("pageEvents", "trackEvents")
        }

    def _item_core(self, kind: ItemSource, day: date) -> _DayCore:
        """A day of page or track events, from its own seeded stream (revisions do not apply)."""
        with self._lock:
            key = (kind, day)
            hit = self._cores.get(key)
            if hit is not None:
                self._cores.move_to_end(key)
                return hit
            spec, items = self.spec, self._item_pools[kind]
            rng = np.random.default_rng(
                [spec.seed, 42 if kind == "pageEvents" else 43, day.toordinal()]
            )
            target_rows = spec.item_rows_per_day(kind) * rng.uniform(0.95, 1.05)
            n_keys = round(target_rows / _MEAN_ROWS_PER_KEY)
            n_anon = round(n_keys * spec.anonymous_key_fraction) if self._pop.n_anonymous else 0
            ident = self._sample_keys(rng, n_keys - n_anon, anonymous=False, items=items)
            anon = self._sample_keys(rng, n_anon, anonymous=True, items=items)
            keys = [np.concatenate([a, b]) for a, b in zip(ident, anon, strict=True)]
            core = self._rows_for_keys(rng, keys[0], keys[1], keys[2])
            core = core.take(rng.permutation(len(core)))
            self._cores[key] = core
            while len(self._cores) > 256:
                self._cores.popitem(last=False)
            return core

    def _item_frame(
        self, kind: ItemSource, day: date, hourly: bool, hours: frozenset[int] | None = None
    ) -> pl.DataFrame:
        """A day of page or track event rows (cached), or only some hours of it."""
        with self._lock:
            key = (kind, day, hourly)
            frame = self._frames.get(key)
            if frame is None:
                core = self._item_core(kind, day)
                items = self._item_pools[kind]
                day_ms = day_start_ms(day, self._tz)
                if hourly:
                    chunks, hour_ms = self._hourly(core, day, ())
                    frame = self._build_frame(chunks, day_ms, hour_ms, items)
                else:
                    frame = self._build_frame(core, day_ms, None, items)
                self._make_room(frame.height)
                self._frames[key] = frame
            else:
                self._frames.move_to_end(key)
            if hourly and hours is not None and len(hours) < len(hour_starts_ms(day, self._tz)):
                return frame.filter(pl.col("hour").is_in(sorted(hours)))
            return frame

    def _revs(self, day: date) -> tuple[_Revision, ...]:
        return tuple(self._revisions.get(day, ()))

    def _core(self, day: date, revs: tuple[_Revision, ...] | None = None) -> _DayCore:
        with self._lock:
            revs = self._revs(day) if revs is None else revs
            key = (day, revs)
            hit = self._cores.get(key)
            if hit is not None:
                self._cores.move_to_end(key)
                return hit
            if revs:
                grow, share = revs[-1]
                core = self._revise(self._core(day, revs[:-1]), day, len(revs), grow, share)
            else:
                core = self._generate(day)
            self._cores[key] = core
            total = sum(len(c) for c in self._cores.values())
            # Cores are narrow (24 bytes a row): keep as many rows as the frame cache, at least.
            while len(self._cores) > 1 and (
                total > self.spec.cache_budget or len(self._cores) > 256
            ):
                _, old = self._cores.popitem(last=False)
                total -= len(old)
            return core

    def _sample_keys(
        self,
        rng: np.random.Generator,
        n_keys: int,
        *,
        anonymous: bool,
        exclude: IntArray | None = None,
        items: _Items | None = None,
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Sample distinct (visitor, account, feature) keys; returns visitor, account, feature arrays.

        With ``items``, the third array indexes those pages or track types instead of features.
        """
        pop = self._pop
        n_f, n_codes = pop.n_features, pop.n_accounts + 2
        cdf = pop.feature_cdf
        if items is not None:
            n_f, cdf = len(items.ids), items.cdf
        if n_keys <= 0 or (anonymous and pop.n_anonymous == 0):
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        codes = np.zeros(0, dtype=np.int64)
        for _ in range(4):
            want = n_keys - codes.shape[0]
            if want <= 0:
                break
            m = int(want * 1.2) + 16
            if anonymous:
                vis = pop.n_visitors + rng.integers(0, pop.n_anonymous, m)
                acc = pop.anon_account[vis - pop.n_visitors]
            else:
                vis = pop.visitor_table[rng.integers(0, pop.visitor_table.shape[0], m)]
                alt = (pop.visitor_second[vis] >= 0) & (rng.random(m) < 0.4)
                acc = np.where(alt, pop.visitor_second[vis], pop.visitor_home[vis])
            feat = np.searchsorted(cdf, rng.random(m), side="right").clip(0, n_f - 1)
            new = (vis.astype(np.int64) * n_f + feat) * n_codes + acc
            if exclude is not None:
                pos = np.searchsorted(exclude, new).clip(0, max(exclude.shape[0] - 1, 0))
                new = new[exclude[pos] != new] if exclude.shape[0] else new
            codes = _sorted_unique(np.concatenate([codes, new]))
        if codes.shape[0] > n_keys:
            codes = np.sort(rng.permutation(codes)[:n_keys])
        acc = codes % n_codes
        rest = codes // n_codes
        return (rest // n_f).astype(np.int64), acc.astype(np.int64), (rest % n_f).astype(np.int64)

    def _rows_for_keys(
        self,
        rng: np.random.Generator,
        vis: IntArray,
        acc: IntArray,
        feat: IntArray,
        *,
        max_rows: int = 4,
    ) -> _DayCore:
        n = vis.shape[0]
        nev = np.asarray(rng.geometric(_EVENTS_P, n), dtype=np.int64)
        nmin = rng.binomial(nev, _MINUTES_P).astype(np.int64)
        p = _ROWS_PER_KEY_P[:max_rows] / _ROWS_PER_KEY_P[:max_rows].sum()
        parts = np.minimum(rng.choice(_ROWS_PER_KEY[:max_rows], size=n, p=p), nev).astype(np.int64)
        u = rng.random(int(parts.sum())) + 1e-6
        owner = np.repeat(np.arange(n), parts)
        slot = np.arange(owner.shape[0]) - (np.cumsum(parts) - parts)[owner]
        return _DayCore.of(
            vis[owner],
            acc[owner],
            feat[owner],
            slot,
            _split(parts, u, nev, min_one=True),
            _split(parts, u, nmin, min_one=False),
        )

    def _generate(self, day: date) -> _DayCore:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 1, day.toordinal()])
        target_rows = spec.rows_per_day * rng.uniform(0.95, 1.05)
        n_keys = round(target_rows / _MEAN_ROWS_PER_KEY)
        n_anon = round(n_keys * spec.anonymous_key_fraction) if self._pop.n_anonymous else 0
        ident = self._sample_keys(rng, n_keys - n_anon, anonymous=False)
        anon = self._sample_keys(rng, n_anon, anonymous=True)
        keys = [np.concatenate([a, b]) for a, b in zip(ident, anon, strict=True)]
        core = self._rows_for_keys(rng, keys[0], keys[1], keys[2])
        return core.take(rng.permutation(len(core)))

    def _revise(
        self, core: _DayCore, day: date, number: int, grow: bool, share: float | None
    ) -> _DayCore:
        rng = np.random.default_rng([self.spec.seed, 2, day.toordinal(), number])
        n = len(core)
        nev, nmin = core.nev.copy(), core.nmin.copy()
        changed = 0.15 if share is None else share
        if grow:
            sel = rng.random(n) < changed
            nev[sel] += rng.geometric(0.5, int(sel.sum()))
            nmin[sel] += rng.binomial(1, 0.5, int(sel.sum()))
            n_f, n_codes = self._pop.n_features, self._pop.n_accounts + 2
            existing = (core.vis.astype(np.int64) * n_f + core.feat) * n_codes + core.acc
            n_new = max(1, round(n / _MEAN_ROWS_PER_KEY * (0.05 if share is None else share / 3)))
            vis, acc, feat = self._sample_keys(
                rng, n_new, anonymous=False, exclude=_sorted_unique(existing)
            )
            extra = self._rows_for_keys(rng, vis, acc, feat, max_rows=2)
            grown = _DayCore(core.vis, core.acc, core.feat, core.slot, nev, nmin)
            return _DayCore.of(
                *(np.concatenate([getattr(grown, f), getattr(extra, f)]) for f in _CORE_FIELDS)
            )
        sel = (rng.random(n) < changed) & (nev >= 2)
        nev[sel] -= rng.integers(1, nev[sel])  # keeps >= 1
        nmin = np.minimum(nmin, nev)
        keep = rng.random(n) >= (0.03 if share is None else share / 5)
        return _DayCore(core.vis, core.acc, core.feat, core.slot, nev, nmin).take(keep)

    def _hourly(
        self, core: _DayCore, day: date, revs: tuple[_Revision, ...]
    ) -> tuple[_DayCore, IntArray]:
        rng = np.random.default_rng([self.spec.seed, 3, day.toordinal(), len(revs)])
        n = len(core)
        hours = np.array(hour_starts_ms(day, self._tz), dtype=np.int64)
        n_h = hours.shape[0]
        parts = np.minimum(core.nev, 1 + rng.integers(0, 3, n)).astype(np.int64)
        local_hour = np.arange(n_h)
        weights = np.exp(-(((local_hour - 13.0) / 4.0) ** 2)) + 0.05
        first = np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(n), side="right")
        first = np.minimum(first, n_h - parts)
        u = rng.random(int(parts.sum())) + 1e-6
        owner = np.repeat(np.arange(n), parts)
        offset = np.arange(owner.shape[0]) - (np.cumsum(parts) - parts)[owner]
        chunks = _DayCore.of(
            core.vis[owner],
            core.acc[owner],
            core.feat[owner],
            core.slot[owner],
            _split(parts, u, core.nev, min_one=True),
            _split(parts, u, core.nmin, min_one=False),
        )
        return chunks, hours[first[owner] + offset]

    def _build_frame(
        self,
        core: _DayCore,
        day_ms: int,
        hour_ms: IntArray | None,
        items: _Items | None = None,
    ) -> pl.DataFrame:
        """Pendo rows for a core, plus hidden ``__rank__<column>`` sort keys.

        Every string column comes from a pool, so its lexical order is the order of the pool
        entries' ranks: the engine sorts by these UInt32 columns, several times faster than a
        multi-column string sort, and drops them before answering.
        """
        pop = self._pop
        n = len(core)
        item_col = "featureId" if items is None else items.column
        index = {
            "accountId": core.acc,
            item_col: core.feat,
            "remoteIp": core.vis * 4 + core.slot,
            "server": (pop.visitor_hash[core.vis] // 7 + core.slot) % len(_SERVERS),
            "userAgent": (pop.visitor_hash[core.vis] + 3 * core.slot) % len(_USER_AGENTS),
            "visitorId": core.vis,
        }
        columns: dict[str, pl.Series] = {
            "accountId": pop.account_series.gather(index["accountId"]),
            "appId": pl.Series(
                (pop.feature_app if items is None else items.app)[core.feat], dtype=pl.Int64
            ),
            "day": pl.Series(np.full(n, day_ms, dtype=np.int64)),
            item_col: (pop.feature_series if items is None else items.series).gather(core.feat),
        }
        if hour_ms is not None:
            columns["hour"] = pl.Series(hour_ms, dtype=pl.Int64)
        columns["numEvents"] = pl.Series(core.nev, dtype=pl.Int64)
        columns["numMinutes"] = pl.Series(core.nmin, dtype=pl.Int64)
        columns["remoteIp"] = pop.ip_series.gather(index["remoteIp"])
        columns["server"] = pop.server_series.gather(index["server"])
        columns["userAgent"] = pop.ua_series.gather(index["userAgent"])
        columns["visitorId"] = pop.visitor_series.gather(index["visitorId"])
        ranks = pop.ranks
        if items is not None:
            ranks = {**ranks, item_col: items.rank}
            if items.kind == "pageEvents":
                columns["parameters"] = self._page_parameters(core)
            names = sorted(columns)  # Pendo's rows list their fields alphabetically
            columns = {name: columns[name] for name in names}
        for name, idx in index.items():
            columns[RANK_PREFIX + name] = ranks[name].gather(idx)
        return pl.DataFrame([s.alias(name) for name, s in columns.items()])

    def _page_parameters(self, core: _DayCore) -> pl.Series:
        """``parameters`` of page-event rows: ``{"tab": ...}`` on a quarter of them, else null."""
        code = (self._pop.visitor_hash[core.vis] + core.feat + core.slot) % 12
        tabs = pl.Series("tab", _PAGE_TABS, dtype=pl.String).gather(code % len(_PAGE_TABS))
        return (
            pl.DataFrame({"tab": tabs, "keep": code < 3})
            .select(pl.when(pl.col("keep")).then(pl.struct("tab")).alias("parameters"))
            .to_series()
        )

    def _estimate(self, day: date, hourly: bool, hours: frozenset[int] | None) -> int:
        core = self._cores.get((day, self._revs(day)))
        rows = float(len(core) if core is not None else self.spec.rows_per_day)
        if hourly:
            rows *= _HOURLY_ROWS_PER_DAILY_ROW
            if hours is not None:
                rows *= len(hours) / len(hour_starts_ms(day, self._tz))
        return int(rows)

    def _make_room(self, rows: int) -> None:
        # Evict before building, so two days of wide rows never coexist just for the cache.
        total = sum(f.height for f in self._frames.values())
        while self._frames and total + rows > self.spec.cache_budget:
            _, old = self._frames.popitem(last=False)
            total -= old.height

    def _frame(self, day: date, hourly: bool, hours: frozenset[int] | None = None) -> pl.DataFrame:
        """A day's rows (cached), or only some hours of it (built from the integer core, not cached)."""
        with self._lock:
            revs = self._revs(day)
            partial = (
                hourly and hours is not None and len(hours) < len(hour_starts_ms(day, self._tz))
            )
            key = (day, revs, hourly)
            hit = self._frames.get(key)
            if hit is not None:
                self._frames.move_to_end(key)
                return hit.filter(pl.col("hour").is_in(sorted(hours or ()))) if partial else hit
            self._make_room(self._estimate(day, hourly, hours if partial else None))
            core = self._core(day, revs)
            day_ms = day_start_ms(day, self._tz)
            if hourly:
                chunks, hour_ms = self._hourly(core, day, revs)
                if partial:
                    keep = np.isin(hour_ms, np.array(sorted(hours or ()), dtype=np.int64))
                    return self._build_frame(chunks.take(keep), day_ms, hour_ms[keep])
                frame = self._build_frame(chunks, day_ms, hour_ms)
            else:
                frame = self._build_frame(core, day_ms, None)
            self._frames[key] = frame
            total = sum(f.height for f in self._frames.values())
            while len(self._frames) > 1 and total > self.spec.cache_budget:
                _, old = self._frames.popitem(last=False)
                total -= old.height
            return frame

    # ------------------------------------------------------------------ RowSource protocol

    def source_version(self, spec: SourceSpec) -> Hashable:
        """Cache key part that changes whenever the rows of ``spec`` change."""
        with self._lock:
            return tuple((d, self._revs(d)) for d in sorted({p.day for p in spec.periods}))

    def estimate_rows(self, spec: SourceSpec) -> int:
        """About how many rows ``source_frame(spec)`` has, before building it."""
        if spec.kind in ("featureEvents", "events"):
            by_day: dict[date, set[int]] = {}
            for p in spec.periods:
                by_day.setdefault(p.day, set()).update([p.hour_ms] if p.hour_ms is not None else [])
            with self._lock:
                return sum(
                    self._estimate(d, spec.hourly, frozenset(h) if spec.hourly else None)
                    for d, h in by_day.items()
                )
        if spec.kind in ("pageEvents", "trackEvents"):
            days = {p.day for p in spec.periods}
            rows = self.spec.item_rows_per_day(spec.kind) * len(days)
            return int(rows * (_HOURLY_ROWS_PER_DAILY_ROW if spec.hourly else 1))
        if spec.kind == "visitors":
            return self._pop.n_visitors + self._pop.n_anonymous
        if spec.kind in ("pages", "trackTypes"):
            return len(
                self._item_pools["pageEvents" if spec.kind == "pages" else "trackEvents"].ids
            )
        return self._pop.n_accounts if spec.kind == "accounts" else self._pop.n_features

    def source_frame(self, spec: SourceSpec) -> pl.DataFrame:
        """Rows of a resolved pipeline source."""
        if spec.kind in ("featureEvents", "events"):
            frames: list[pl.DataFrame] = []
            by_day: dict[date, set[int]] = {}
            for p in spec.periods:
                by_day.setdefault(p.day, set())
                if p.hour_ms is not None:
                    by_day[p.day].add(p.hour_ms)
            for d, hours in by_day.items():
                frames.append(
                    self._frame(d, spec.hourly, frozenset(hours) if spec.hourly else None)
                )
            if not frames:
                frames.append(
                    self._build_frame(
                        _DayCore.of(*([np.zeros(0, dtype=np.int32)] * 6)),
                        0,
                        np.zeros(0, dtype=np.int64) if spec.hourly else None,
                    )
                )
            df = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
            if spec.app_ids is not None:
                df = df.filter(pl.col("appId").is_in(sorted(spec.app_ids)))
            if spec.feature_id is not None:
                df = df.filter(pl.col("featureId") == spec.feature_id)
            return self._events(df, hourly=spec.hourly) if spec.kind == "events" else df
        if spec.kind in ("pageEvents", "trackEvents"):
            return self._item_source_frame(spec)
        if spec.kind in ("pages", "trackTypes"):
            objects = self._static(spec.kind)
            if spec.app_ids is not None:
                objects = objects.filter(pl.col("appId").is_in(sorted(spec.app_ids)))
            return objects
        if spec.kind == "visitors":
            df = self._static("visitors")
            return (
                df.filter(~pl.col("visitorId").str.starts_with("_PENDO_T_"))
                if spec.identified_only
                else df
            )
        if spec.kind == "accounts":
            return self._static("accounts")
        features = self._static("features")
        if spec.app_ids is not None:
            features = features.filter(pl.col("appId").is_in(sorted(spec.app_ids)))
        return features

    def _item_source_frame(self, spec: SourceSpec) -> pl.DataFrame:
        kind: ItemSource = "pageEvents" if spec.kind == "pageEvents" else "trackEvents"
        by_day: dict[date, set[int]] = {}
        for p in spec.periods:
            by_day.setdefault(p.day, set())
            if p.hour_ms is not None:
                by_day[p.day].add(p.hour_ms)
        frames = [
            self._item_frame(kind, d, spec.hourly, frozenset(h) if spec.hourly else None)
            for d, h in by_day.items()
        ]
        if not frames:
            empty = _DayCore.of(*([np.zeros(0, dtype=np.int32)] * 6))
            hours = np.zeros(0, dtype=np.int64) if spec.hourly else None
            frames.append(self._build_frame(empty, 0, hours, self._item_pools[kind]))
        df = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        if spec.app_ids is not None:
            df = df.filter(pl.col("appId").is_in(sorted(spec.app_ids)))
        item_id = spec.page_id if kind == "pageEvents" else spec.track_type_id
        if item_id is not None:
            df = df.filter(pl.col(self._item_pools[kind].column) == item_id)
        return df

    @staticmethod
    def _events(df: pl.DataFrame, *, hourly: bool) -> pl.DataFrame:
        keys = [
            "accountId",
            "appId",
            "day",
            *(["hour"] if hourly else []),
            "remoteIp",
            "server",
            "userAgent",
            "visitorId",
        ]
        out = df.group_by(keys, maintain_order=True).agg(
            pl.col("numEvents").sum(), pl.col("numMinutes").sum()
        )
        # The events source also counts page loads: add one per two feature events, at least one.
        out = out.with_columns(
            (pl.col("numEvents") + pl.col("numEvents") // 2 + 1).alias("numEvents")
        )
        return out.select(sorted(out.columns))

    def _static(self, name: str) -> pl.DataFrame:
        with self._lock:
            hit = self._static_frames.get(name)
            if hit is None:
                builders: dict[str, Callable[[], pl.DataFrame]] = {
                    "visitors": self._visitors_frame,
                    "accounts": self._accounts_frame,
                    "features": self._features_frame,
                    "pages": lambda: pl.DataFrame(self.pages(), infer_schema_length=None),
                    "trackTypes": lambda: pl.DataFrame(
                        self.track_types(), infer_schema_length=None
                    ),
                }
                hit = builders[name]()
                self._static_frames[name] = hit
            return hit

    def _features_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self._feature_objects(), infer_schema_length=None)

    def _visitors_frame(self) -> pl.DataFrame:
        pop = self._pop
        n_all = pop.n_visitors + pop.n_anonymous
        idx = np.arange(n_all)
        home = np.concatenate([pop.visitor_home, pop.anon_account])
        second = np.concatenate([pop.visitor_second, np.full(pop.n_anonymous, -1, dtype=np.int64)])
        account = pop.account_series.gather(home)
        accountids = [
            [] if a is None or a == "" else ([a] if s < 0 else [a, pop.account_ids[int(s)]])
            for a, s in zip(account.to_list(), second.tolist(), strict=True)
        ]
        base = day_start_ms(date(2024, 1, 1), self._tz)
        first = base + (pop.visitor_hash % 400) * 86_400_000
        last = first + (pop.visitor_hash % 300 + 1) * 86_400_000
        auto = pl.struct(
            accountid=account,
            accountids=pl.Series(accountids, dtype=pl.List(pl.String)),
            firstvisit=pl.Series(first),
            id=pop.visitor_series,
            idhash=pl.Series(pop.visitor_hash),
            lastupdated=pl.Series(last + 3_600_000),
            lastvisit=pl.Series(last),
            eager=True,
        )
        language = pl.Series("language", np.where(idx % 3 == 0, "de-DE", "en-US"))
        if self.spec.identity:
            emails = [*self._emails, *([None] * pop.n_anonymous)]
            email = pl.Series("email", emails, dtype=pl.String)
            agent = pl.struct(language, email, eager=True)
        else:
            agent = pl.struct(language=language, eager=True)
        metadata = pl.struct(agent=agent, auto=auto, eager=True)
        return pl.DataFrame({"metadata": metadata, "visitorId": pop.visitor_series})

    def _accounts_frame(self) -> pl.DataFrame:
        pop = self._pop
        n = pop.n_accounts
        base = day_start_ms(date(2023, 6, 1), self._tz)
        h = np.arange(n, dtype=np.int64) * 7919 % 500
        auto = pl.struct(
            firstvisit=pl.Series(base + h * 86_400_000),
            id=pl.Series(pop.account_ids, dtype=pl.String),
            lastupdated=pl.Series(base + (h + 200) * 86_400_000 + 3_600_000),
            lastvisit=pl.Series(base + (h + 200) * 86_400_000),
            eager=True,
        )
        agent = pl.struct(
            name=pl.Series([f"{a} (Pendo)" for a in pop.account_ids], dtype=pl.String), eager=True
        )
        return pl.DataFrame(
            {
                "accountId": pl.Series(pop.account_ids, dtype=pl.String),
                "metadata": pl.struct(agent=agent, auto=auto, eager=True),
            }
        )

    def _feature_objects(self) -> list[JSONDict]:
        pop = self._pop
        created0 = day_start_ms(date(2024, 1, 15), self._tz)
        out = []
        for i, fid in enumerate(pop.feature_ids):
            created = created0 + i * 86_400_000
            user = {
                "id": "5kGHaMqXyz0",
                "username": "admin@example.com",
                "first": "Ada",
                "last": "Admin",
                "role": 8,
            }
            slug = pop.feature_names[i].lower().replace(" ", "-")
            out.append(
                {
                    "id": fid,
                    "name": pop.feature_names[i],
                    "kind": "Feature",
                    "appId": int(pop.feature_app[i]),
                    "appWide": False,
                    "color": "gray",
                    "group": None
                    if i % 3
                    else {
                        "id": "_PENDO_DEFAULTGROUP_01_",
                        "name": "Ungrouped",
                        "color": ".groupColor01",
                    },
                    "pageId": None,
                    "elementPathRules": [f'[data-test="{slug}"]'],
                    "isCoreEvent": i < 3,
                    "dirty": False,
                    "rootVersionId": fid,
                    "stableVersionId": f"{fid}-{created}",
                    "createdAt": created,
                    "createdByUser": user,
                    "lastUpdatedAt": created + 3_600_000,
                    "lastUpdatedByUser": user,
                    "validThrough": created + 7 * 86_400_000,
                    "dailyMergeFirst": created,
                    "dailyRollupFirst": created,
                }
            )
        return out

    def _item_objects(self, kind: ItemSource) -> list[JSONDict]:
        items = self._item_pools[kind]
        created0 = day_start_ms(date(2024, 2, 1), self._tz)
        user = {
            "id": "5kGHaMqXyz0",
            "username": "admin@example.com",
            "first": "Ada",
            "last": "Admin",
        }
        out: list[JSONDict] = []
        for i, item_id in enumerate(items.ids):
            created = created0 + i * 86_400_000
            obj: JSONDict = {
                "id": item_id,
                "name": items.names[i],
                "appId": int(items.app[i]),
                "createdAt": created,
                "createdByUser": user,
                "lastUpdatedAt": created + 3_600_000,
                "lastUpdatedByUser": user,
            }
            if kind == "pageEvents":
                slug = items.names[i].lower().replace(" ", "-")
                obj.update(
                    kind="Page",
                    rules=[{"rule": f"//*/app/{slug}", "designerHint": f"/app/{slug}"}],
                    isCoreEvent=i < 2,
                    dirty=False,
                    rootVersionId=item_id,
                    stableVersionId=f"{item_id}-{created}",
                    validThrough=created + 7 * 86_400_000,
                )
            else:
                obj.update(kind="TrackType", trackTypeName=items.names[i])
            out.append(obj)
        return out

    # ------------------------------------------------------------------ Planhat tenant

    def _build_planhat(self) -> None:
        pop, spec, store = self._pop, self.spec, self.planhat
        rng = np.random.default_rng([spec.seed, 20])
        created = "2024-03-01T09:00:00.000Z"
        company_of_account: list[JSONDict | None] = []
        companies: list[JSONDict] = []
        for a, aid in enumerate(pop.account_ids):
            cat = _ACATS[int(pop.account_cat[a])]
            if cat == "missing":
                company_of_account.append(None)
                continue
            ext = _case_variant(aid) if cat == "case_variant" else aid
            first: JSONDict | None = None
            for k in range(2 if cat == "ambiguous" else 1):
                rec: JSONDict = {
                    "_id": store.new_id("Company"),
                    "name": f"{aid} Inc." if k == 0 else f"{aid} (duplicate)",
                    "externalId": ext,
                    "status": "customer",
                    "phase": "Adopt",
                    "domains": [f"customer-{a}.example.com"],
                    "createDate": created,
                }
                if a % 2 == 0:
                    rec["sourceId"] = f"0015g0000{a:08d}"
                companies.append(rec)
                first = first or rec
            company_of_account.append(first)
        orphans: list[JSONDict] = []
        for i in range(max(3, spec.n_accounts // 50)):
            rec = {
                "_id": store.new_id("Company"),
                "name": f"Unlinked Company {i}",
                "status": "prospect",
                "createDate": created,
            }
            if i % 3 == 1:
                rec["externalId"] = None
            elif i % 3 == 2:
                rec["externalId"] = ""
            orphans.append(rec)
        for i in range(max(2, spec.n_accounts // 50)):
            companies.append(
                {
                    "_id": store.new_id("Company"),
                    "name": f"CRM-only Company {i}",
                    "externalId": f"crm-{i:05d}",
                    "status": "customer",
                    "createDate": created,
                }
            )
        store.add_many("Company", [*companies, *orphans])

        def company_for(v: int) -> JSONDict:
            return company_of_account[int(pop.visitor_home[v])] or orphans[v % len(orphans)]

        first_names = rng.integers(0, len(_FIRST_NAMES), pop.n_visitors)
        last_names = rng.integers(0, len(_LAST_NAMES), pop.n_visitors)

        def enduser(v: int, external: Any, k: int = 0) -> JSONDict:
            vid = pop.visitor_ids[v]
            company = company_for(v)
            first, last = _FIRST_NAMES[int(first_names[v])], _LAST_NAMES[int(last_names[v])]
            email = (
                vid
                if ("@" in vid and k == 0)
                else f"{first}.{last}.{v}{'-' + str(k) if k else ''}@customer-{int(pop.visitor_home[v])}.example.com".lower()
            )
            rec: JSONDict = {
                "_id": store.new_id("EndUser"),
                "email": email,
                "firstName": first,
                "lastName": last,
                "name": f"{first} {last}",
                "companyId": company["_id"],
                "companyName": company.get("name"),
                "externalId": external,
                "archived": False,
                "createDate": created,
            }
            if v % 2:
                rec["sourceId"] = f"0035g0000{v:08d}{k}"
            return rec

        endusers: list[JSONDict] = []
        late_ids: list[int] = []
        for v in range(pop.n_visitors):
            vcat = _VCATS[int(pop.visitor_cat[v])]
            vid = pop.visitor_ids[v]
            if vcat == "matched":
                endusers.append(enduser(v, vid))
            elif vcat == "case_variant":
                endusers.append(enduser(v, _case_variant(vid)))
            elif vcat == "ambiguous":
                endusers.extend([enduser(v, vid, 0), enduser(v, vid, 1)])
            elif vcat == "late":
                late_ids.append(v)
        for i in range(max(3, pop.n_visitors // 100)):
            v = i % pop.n_visitors
            rec = enduser(v, None, 10 + i)
            if i % 3 == 0:
                del rec["externalId"]
            elif i % 3 == 2:
                rec["externalId"] = ""
            endusers.append(rec)
        for i in range(max(2, pop.n_visitors // 50)):
            endusers.append(enduser(i % pop.n_visitors, f"crm-user-{i:05d}", 100 + i))
        store.add_many("EndUser", endusers)
        # Late End Users get their ids now (deterministic) but are added by add_late_endusers().
        self._late_endusers = [enduser(v, pop.visitor_ids[v]) for v in late_ids]

        def attached(model: Model, fraction: float, label: str) -> list[JSONDict]:
            n = round(fraction * pop.n_accounts)
            picked = np.sort(rng.permutation(pop.n_accounts)[:n])
            out: list[JSONDict] = []
            for a in picked.tolist():
                company = company_of_account[a] or orphans[a % len(orphans)]
                out.append(
                    {
                        "_id": store.new_id(model),
                        "name": f"{pop.account_ids[a]} {label}",
                        "companyId": company["_id"],
                        "companyName": company.get("name"),
                        "externalId": pop.account_ids[a],
                    }
                )
            return out

        assets = attached("Asset", spec.asset_fraction, "workspace")
        if len(assets) >= 4:
            # Two Assets share one externalId: ambiguous within the Asset namespace only.
            dup = dict(assets[1], _id=store.new_id("Asset"), name=assets[1]["name"] + " (copy)")
            assets.append(dup)
        store.add_many("Asset", assets)
        store.add_many("Project", attached("Project", spec.project_fraction, "rollout"))
        if spec.identity:
            crm = [c for c in companies if str(c["name"]).startswith("CRM-only Company")]
            self._build_identity(enduser, crm)

    def _build_identity(self, enduser: Callable[..., JSONDict], crm: Sequence[JSONDict]) -> None:
        """Visitor emails and the End Users matched by email only (``SandboxSpec.identity``).

        From its own seeded stream, so the rest of the tenant is as without ``identity``. Matched
        and case-variant visitors carry their End User's email (a tenth of matched ones none);
        ambiguous and late ones none. Single-account ``missing`` visitors are split into the
        categories of :meth:`identity_categories`; multi-account ones get no email.
        """
        pop, store = self._pop, self.planhat
        rng = np.random.default_rng([self.spec.seed, 30])
        n_v = pop.n_visitors
        u, variant, blank = rng.random(n_v), rng.integers(0, 10, n_v), rng.random(n_v)
        added: list[JSONDict] = []
        for v in range(n_v):
            vcat = _VCATS[int(pop.visitor_cat[v])]
            if vcat in ("matched", "case_variant"):
                if vcat == "matched" and blank[v] < 0.1:
                    self._emails[v] = None if v % 2 else ""
                else:
                    self._emails[v] = _email_variant(enduser(v, None)["email"], int(variant[v]))
                continue
            if vcat != "missing":
                continue
            single = _ACATS[int(pop.account_cat[int(pop.visitor_home[v])])] == "matched"
            cuts: tuple[tuple[IdentityCategory, float], ...] = (
                (("email_only", 0.3), ("email_shared", 0.45), ("create", 0.8))
                if single
                else (("email_only", 0.3), ("email_ambiguous", 0.65), ("no_company", 0.85))
            )
            cat: IdentityCategory = "no_email"
            if pop.visitor_second[v] < 0:
                cat = next((c for c, cut in cuts if u[v] < cut), "no_email")
            self._identity_cat[v] = _ICATS.index(cat)
            if cat == "no_email":
                continue
            first = enduser(v, None)
            self._emails[v] = _email_variant(first["email"], int(variant[v]))
            if cat == "email_only":
                if v % 3 == 0:
                    del first["externalId"]
                elif v % 3 == 2:
                    first["externalId"] = ""
                added.append(first)
            elif cat in ("email_shared", "email_ambiguous"):
                other = enduser(v, f"crm-shared-{v:06d}" if cat == "email_shared" else None, 1)
                other.update(email=first["email"], companyId=crm[0]["_id"])
                other["companyName"] = crm[0]["name"]
                if cat == "email_ambiguous":
                    first.update(companyId=crm[1]["_id"], companyName=crm[1]["name"])
                added.extend([first, other])
        store.add_many("EndUser", added)

    def visitor_emails(self) -> dict[str, str | None]:
        """Identified visitor id -> ``metadata.agent.email`` as served (None when absent).

        Every value is None unless ``SandboxSpec.identity`` is set.
        """
        pop = self._pop
        return dict(zip(pop.visitor_ids[: pop.n_visitors], self._emails, strict=True))

    def identity_categories(self) -> dict[str, VisitorCategory | IdentityCategory]:
        """Visitor id -> category, with ``missing`` visitors split by ``SandboxSpec.identity``.

        ``email_only``: one End User without externalId holds the visitor's email.
        ``email_shared``: the email is on two End Users of two Companies, one of them the
        Company of the visitor's account (resolved by it). ``email_ambiguous``: on two End Users
        of two Companies, neither the visitor's (``ambiguous_email``). ``create``: no End User,
        an email, and its account is the externalId of exactly one Company. ``no_company``: no
        End User, an email, but its account is not exactly one Company. ``no_email``: neither.
        Without ``identity`` this equals :meth:`visitor_categories`.
        """
        out: dict[str, VisitorCategory | IdentityCategory] = dict(self.visitor_categories())
        pop = self._pop
        for v in np.flatnonzero(self._identity_cat >= 0).tolist():
            out[pop.visitor_ids[v]] = _ICATS[int(self._identity_cat[v])]
        return out

    def _identity_resolver(
        self, end_user_keys: Sequence[str], create_end_users: bool
    ) -> Callable[[int, int], IdentityMatch]:
        """Resolve (visitor index, account code) pairs against the current Planhat state."""
        for k in end_user_keys:
            if k not in ("externalId", "email"):
                raise ValueError(f"end_user_keys: unknown key {k!r}")
        pop, store = self._pop, self.planhat
        ext_counts = store.external_counts("EndUser")
        company_counts = store.external_counts("Company")
        company_ext = {c["_id"]: c.get("externalId") for c in store.records("Company")}
        by_email: dict[str, list[JSONDict]] = {}
        for r in store.records("EndUser"):
            e = _norm_email(r.get("email"))
            if e:
                by_email.setdefault(e, []).append(r)

        def without_create(v: int, a: int) -> IdentityMatch:
            if v >= pop.n_visitors:
                return IdentityMatch(None, None, "anonymous")
            vid, acc = pop.visitor_ids[v], pop.account_value(a)
            reason: UnmatchedIdentityReason = "no_enduser"
            for k in end_user_keys:
                if k == "externalId":
                    n = ext_counts.get(vid, 0)
                    if n == 1:
                        return IdentityMatch("externalId", vid, None)
                    if n > 1 and reason == "no_enduser":
                        reason = "ambiguous"
                    continue
                cands = by_email.get(_norm_email(self._emails[v]) or "", [])
                if len(cands) > 1:
                    cands = [c for c in cands if acc and company_ext.get(c.get("companyId")) == acc]
                    if len(cands) != 1 and reason == "no_enduser":
                        reason = "ambiguous_email"
                if len(cands) == 1:
                    ext = cands[0].get("externalId")
                    key = ext if isinstance(ext, str) and ext else cands[0]["email"]
                    return IdentityMatch("email", key, None)
            return IdentityMatch(None, None, reason)

        memo: dict[tuple[int, int], IdentityMatch] = {}
        creatable: dict[int, bool] = {}

        def can_create(v: int) -> bool:
            if v not in creatable:
                email = _norm_email(self._emails[v])
                pairs = self._visitor_account_codes(v)
                creatable[v] = bool(email) and all(
                    without_create(v, a).reason == "no_enduser" for a in pairs
                )
                creatable[v] = creatable[v] and any(
                    company_counts.get(pop.account_value(a) or "", 0) == 1 for a in pairs
                )
            return creatable[v]

        def resolve(v: int, a: int) -> IdentityMatch:
            hit = memo.get((v, a))
            if hit is None:
                hit = without_create(v, a)
                if hit.reason == "no_enduser" and create_end_users and can_create(v):
                    hit = IdentityMatch("created", pop.visitor_ids[v], None)
                memo[(v, a)] = hit
            return hit

        return resolve

    def _visitor_account_codes(self, v: int) -> list[int]:
        pop = self._pop
        if v >= pop.n_visitors:
            return [int(pop.anon_account[v - pop.n_visitors])]
        codes = [int(pop.visitor_home[v])]
        if pop.visitor_second[v] >= 0:
            codes.append(int(pop.visitor_second[v]))
        return codes

    def truth_identity(
        self,
        *,
        end_user_keys: Sequence[str] = ("externalId", "email"),
        create_end_users: bool = False,
    ) -> dict[tuple[str, str | None], IdentityMatch]:
        """How every (visitor, account) pair resolves against the current Planhat state.

        Keys are tried in order; ``email`` compares the visitor's email trimmed and lower-cased
        with End Users' emails the same way; several End Users with it are narrowed to those
        whose Company's externalId is the account, else ``ambiguous_email``. With
        ``create_end_users`` a visitor unmatched with reason ``no_enduser`` that has an email
        and an account that is the externalId of exactly one Company is ``created``.

        Args:
            end_user_keys: ``externalId`` and/or ``email``, in order.
            create_end_users: the config's ``matching.create_end_users``.

        Returns:
            ``(visitorId, accountId) -> IdentityMatch(matched_by, key, reason)`` for every
            visitor's account(s) (anonymous ones included); ``key`` is what activities are
            addressed by: the End User's externalId, else its email (as stored in Planhat), or
            the visitorId for one to be created.
        """
        resolve = self._identity_resolver(end_user_keys, create_end_users)
        pop = self._pop
        out: dict[tuple[str, str | None], IdentityMatch] = {}
        for v in range(pop.n_visitors + pop.n_anonymous):
            for a in self._visitor_account_codes(v):
                out[(pop.visitor_ids[v], pop.account_value(a))] = resolve(v, a)
        return out

    def truth_created_end_users(
        self,
        *,
        end_user_keys: Sequence[str] = ("externalId", "email"),
        days: Iterable[date | str] | None = None,
        features: Iterable[str] | None = None,
        pages: Iterable[str] | None = None,
        track_events: Iterable[str] | None = None,
    ) -> dict[str, JSONDict]:
        """End Users a sync with ``create_end_users: true`` must create (against current state).

        Args:
            end_user_keys: the keys tried first.
            days: only visitors with events on these days (of the given sources); all when None.
            features: feature ids whose events count (with ``days``).
            pages: page ids whose events count (with ``days``).
            track_events: track type ids whose events count (with ``days``).

        Returns:
            ``visitorId -> {"externalId", "email" (trimmed), "companyId", "companyExternalId"}``,
            the bulk-upsert item plus the account it was chosen by.
        """
        resolve = self._identity_resolver(end_user_keys, True)
        pop, store = self._pop, self.planhat
        seen: set[int] | None = None
        if days is not None:
            seen = set()
            for _, _, core, code in self._usage_cores(days, features, pages, track_events):
                seen.update(np.unique(core.vis[code[core.feat] >= 0]).tolist())
        company_counts = store.external_counts("Company")
        out: dict[str, JSONDict] = {}
        for v in range(pop.n_visitors):
            if seen is not None and v not in seen:
                continue
            codes = self._visitor_account_codes(v)
            if resolve(v, codes[0]).matched_by != "created":
                continue
            acc = next(
                pop.account_value(a)
                for a in codes
                if company_counts.get(pop.account_value(a) or "", 0) == 1
            )
            company = store.match_external("Company", acc)[0]
            email = self._emails[v]
            assert email is not None  # creatable visitors have an email
            out[pop.visitor_ids[v]] = {
                "externalId": pop.visitor_ids[v],
                "email": email.strip(),
                "companyId": company["_id"],
                "companyExternalId": acc,
            }
        return out

    def _usage_cores(
        self,
        days: Iterable[date | str],
        features: Iterable[str] | Mapping[str, str] | None,
        pages: Iterable[str] | Mapping[str, str] | None,
        track_events: Iterable[str] | Mapping[str, str] | None,
    ) -> Iterable[tuple[str, list[str], _DayCore, IntArray]]:
        """(day, action names, core, item -> action code) for each day and configured source."""
        pop = self._pop
        sources: list[tuple[str, Any, list[str]]] = [
            ("featureEvents", features, pop.feature_ids),
            ("pageEvents", pages, self._item_pools["pageEvents"].ids),
            ("trackEvents", track_events, self._item_pools["trackEvents"].ids),
        ]
        for d in sorted({as_date(x) for x in days}):
            for kind, wanted, ids in sources:
                if not wanted:
                    continue
                actions = dict(wanted) if isinstance(wanted, Mapping) else {i: i for i in wanted}
                names = sorted(set(actions.values()))
                index = {item_id: i for i, item_id in enumerate(ids)}
                code = np.full(len(ids), -1, dtype=np.int64)
                for item_id, action in actions.items():
                    if item_id in index:
                        code[index[item_id]] = names.index(action)
                core = (
                    self._core(d)
                    if kind == "featureEvents"
                    else self._item_core("pageEvents" if kind == "pageEvents" else "trackEvents", d)
                )
                yield d.isoformat(), names, core, code

    def _resolved_usage(
        self,
        days: Iterable[date | str],
        features: Any,
        pages: Any,
        track_events: Any,
        end_user_keys: Sequence[str],
        create_end_users: bool,
    ) -> Iterable[tuple[str, str, int, IdentityMatch, int, int]]:
        """(day, action, visitor, match, account code, events), summed per day and source."""
        resolve = self._identity_resolver(end_user_keys, create_end_users)
        for iso, names, core, code in self._usage_cores(days, features, pages, track_events):
            act = code[core.feat]
            mask = act >= 0
            df = pl.DataFrame(
                {"v": core.vis[mask], "c": core.acc[mask], "a": act[mask], "n": core.nev[mask]}
            )
            for v, c, a, n in df.group_by(["v", "c", "a"]).agg(pl.col("n").sum()).iter_rows():
                yield iso, names[a], v, resolve(v, c), c, int(n)

    def truth_activities_by_key(
        self,
        *,
        days: Iterable[date | str],
        features: Mapping[str, str] | None = None,
        pages: Mapping[str, str] | None = None,
        track_events: Mapping[str, str] | None = None,
        end_user_keys: Sequence[str] = ("externalId",),
        create_end_users: bool = False,
    ) -> dict[tuple[str, str, str], int]:
        """What Planhat should hold as User Activities from features, pages and track events.

        With the defaults and only ``features`` this equals :meth:`truth_activities`.

        Args:
            days: local days.
            features: feature id -> action.
            pages: page id -> action.
            track_events: track type id -> action.
            end_user_keys: the config's ``matching.end_user_keys``.
            create_end_users: the config's ``matching.create_end_users``.

        Returns:
            ``(End User key, action, "YYYY-MM-DD") -> sum of numEvents``, the key being the End
            User's externalId, else its email, or the visitorId of one to be created.
        """
        out: dict[tuple[str, str, str], int] = {}
        for iso, action, _, match, _, n in self._resolved_usage(
            days, features, pages, track_events, end_user_keys, create_end_users
        ):
            if match.key is not None:
                k = (match.key, action, iso)
                out[k] = out.get(k, 0) + n
        return out

    def truth_unmatched_by_key(
        self,
        *,
        days: Iterable[date | str],
        features: Iterable[str] | None = None,
        pages: Iterable[str] | None = None,
        track_events: Iterable[str] | None = None,
        end_user_keys: Sequence[str] = ("externalId",),
        create_end_users: bool = False,
    ) -> dict[tuple[str, str, str | None], tuple[UnmatchedIdentityReason, int]]:
        """Unmatched visitors per day: ``(date_iso, visitorId, accountId) -> (reason, events)``.

        Sums the given sources. With the defaults and only ``features`` this equals
        :meth:`truth_unmatched_visitors`. Reasons: ``anonymous``, ``no_enduser``,
        ``ambiguous`` (externalId) and ``ambiguous_email``.
        """
        pop = self._pop
        out: dict[tuple[str, str, str | None], tuple[UnmatchedIdentityReason, int]] = {}
        for iso, _, v, match, c, n in self._resolved_usage(
            days, features, pages, track_events, end_user_keys, create_end_users
        ):
            if match.reason is None:
                continue
            k = (iso, pop.visitor_ids[v], pop.account_value(c))
            out[k] = (match.reason, out.get(k, (match.reason, 0))[1] + n)
        return out

    # ------------------------------------------------------------------ ground truth

    def _enduser_match_counts(self) -> npt.NDArray[np.int64]:
        counts = self.planhat.external_counts("EndUser")
        pop = self._pop
        return np.array(
            [counts.get(v, 0) for v in pop.visitor_ids[: pop.n_visitors]], dtype=np.int64
        )

    def truth_activities(
        self, *, days: Iterable[date | str], actions: Mapping[str, str]
    ) -> dict[tuple[str, str, str], int]:
        """What Planhat should hold as User Activities for ``days``.

        Args:
            days: local days.
            actions: feature id -> action name (several features may share an action).

        Returns:
            ``(endUserExternalId, action, "YYYY-MM-DD") -> sum of numEvents`` for visitors that
            currently match exactly one End User; nothing for anonymous, missing, case-variant or
            ambiguous visitors.
        """
        pop = self._pop
        names = sorted(set(actions.values()))
        code = np.full(pop.n_features, -1, dtype=np.int64)
        for fid, action in actions.items():
            if fid in pop.feature_index:
                code[pop.feature_index[fid]] = names.index(action)
        matched = np.concatenate(
            [self._enduser_match_counts() == 1, np.zeros(pop.n_anonymous, dtype=bool)]
        )
        out: dict[tuple[str, str, str], int] = {}
        for d in sorted({as_date(x) for x in days}):
            core = self._core(d)
            act = code[core.feat]
            mask = (act >= 0) & matched[core.vis]
            df = pl.DataFrame({"v": core.vis[mask], "a": act[mask], "n": core.nev[mask]})
            iso = d.isoformat()
            for v, a, n in df.group_by(["v", "a"]).agg(pl.col("n").sum()).iter_rows():
                out[(pop.visitor_ids[v], names[a], iso)] = int(n)
        return out

    def truth_feature_metrics(
        self, *, days: Iterable[date | str], metrics: Mapping[str, tuple[str, Model]]
    ) -> tuple[dict[tuple[str, str, str, str], float], dict[tuple[str, str, str], str]]:
        """What ``as: metric`` features must put into Planhat as ``sum`` Custom Metrics.

        A feature's daily count is the sum of numEvents of its rows per visitorId (model
        ``EndUser``) or per accountId (model ``Company``), matched to the one visible object of
        that model whose externalId equals it.

        Args:
            days: local days.
            metrics: feature id -> (dimensionId, model).

        Returns:
            ``(values, unmatched)``: ``(dimensionId, model, externalId, "YYYY-MM-DD") -> value``
            for ids that match exactly one object; ``("YYYY-MM-DD", "feature:<id>", id) ->
            reason`` (``no_object``, ``ambiguous``) for the others, a null or empty accountId
            being the id ``""``.
        """
        pop = self._pop
        counts = {m: self.planhat.external_counts(m) for m in ("EndUser", "Company")}
        values: dict[tuple[str, str, str, str], float] = {}
        unmatched: dict[tuple[str, str, str], str] = {}
        for d in sorted({as_date(x) for x in days}):
            core, iso = self._core(d), d.isoformat()
            rows = pl.DataFrame(
                {
                    "feature": pop.feature_series.gather(core.feat),
                    "EndUser": pop.visitor_series.gather(core.vis),
                    "Company": pop.account_series.gather(core.acc).fill_null(""),
                    "n": core.nev,
                }
            )
            for fid, (dimension, model) in metrics.items():
                mine = rows.filter(pl.col("feature") == fid)
                by_id = mine.group_by(model).agg(pl.col("n").sum())
                for ident, n in by_id.iter_rows():
                    found = counts[model].get(ident, 0) if ident else 0
                    if found == 1:
                        values[(dimension, model, ident, iso)] = float(n)
                    else:
                        reason = "ambiguous" if found > 1 else "no_object"
                        unmatched[(iso, f"feature:{fid}", ident)] = reason
        return values, unmatched

    def truth_unmatched_visitors(
        self, *, days: Iterable[date | str], feature_ids: Iterable[str]
    ) -> dict[tuple[str, str, str | None], tuple[UnmatchedVisitorReason, int]]:
        """What the product must report as unmatched visitors.

        Args:
            days: local days.
            feature_ids: the configured features.

        Returns:
            ``(date_iso, visitor_id, account_id) -> (reason, num_events)`` with reason
            ``anonymous``, ``no_enduser`` (missing and case-variant visitors) or ``ambiguous``.
            ``account_id`` is ``None`` where Pendo sends a null accountId.
        """
        pop = self._pop
        wanted = np.zeros(pop.n_features, dtype=bool)
        for fid in feature_ids:
            if fid in pop.feature_index:
                wanted[pop.feature_index[fid]] = True
        counts = np.concatenate(
            [self._enduser_match_counts(), np.full(pop.n_anonymous, -1, dtype=np.int64)]
        )
        out: dict[tuple[str, str, str | None], tuple[UnmatchedVisitorReason, int]] = {}
        for d in sorted({as_date(x) for x in days}):
            core = self._core(d)
            mask = wanted[core.feat] & (counts[core.vis] != 1)
            df = pl.DataFrame({"v": core.vis[mask], "a": core.acc[mask], "n": core.nev[mask]})
            iso = d.isoformat()
            for v, a, n in df.group_by(["v", "a"]).agg(pl.col("n").sum()).iter_rows():
                c = int(counts[v])
                reason: UnmatchedVisitorReason = (
                    "anonymous" if c < 0 else ("no_enduser" if c == 0 else "ambiguous")
                )
                out[(iso, pop.visitor_ids[v], pop.account_value(a))] = (reason, int(n))
        return out

    def _pipeline_truth(
        self,
        days: Iterable[date | str],
        pipelines: Iterable[Mapping[str, Any]],
        app_ids: Literal["all"] | Sequence[int],
    ) -> _Truth:
        truth = _Truth()
        day_list = sorted({as_date(x) for x in days})
        for p in pipelines:
            model: Model = p["model"]
            if model not in MODELS:
                raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
            stages = p["pipeline"]
            if isinstance(stages, Mapping):
                stages = stages["request"]["pipeline"]
            id_field: str = p.get("id_field", "accountId")
            metrics: Mapping[str, str] = p["metrics"]
            counts = self.planhat.external_counts(model)
            for d in day_list:
                df = evaluate_pipeline(
                    self, _pin_day(stages, self.day_start_ms(d), app_ids), now_ms=self.now_ms
                )
                iso = d.isoformat()
                cols = [id_field, *metrics]
                rows = df.select(
                    [
                        pl.col(c) if c in df.columns else pl.lit(None).alias(c)
                        for c in dict.fromkeys(cols)
                    ]
                )
                for row in rows.iter_rows(named=True):
                    raw = row[id_field]
                    ext = raw if isinstance(raw, str) or raw is None else str(raw)
                    n = counts.get(ext, 0) if ext else 0
                    if n != 1:
                        truth.unmatched[(iso, p["name"], model, ext)] = (
                            "no_object" if n == 0 else "ambiguous"
                        )
                        continue
                    assert ext is not None  # a matched id is a non-empty string
                    for fld, dim in metrics.items():
                        value = row[fld]
                        if value is not None:
                            truth.metrics[(dim, model, ext, iso)] = float(value)
        return truth

    def truth_metrics(
        self,
        *,
        days: Iterable[date | str],
        pipelines: Iterable[Mapping[str, Any]],
        app_ids: Literal["all"] | Sequence[int] = "all",
    ) -> dict[tuple[str, str, str, str], float]:
        """What Planhat should hold as Custom Metrics, evaluating each pipeline per day.

        Args:
            days: local days.
            pipelines: config-style mappings with ``name, model, id_field, metrics, pipeline``
                (the stage list, or a whole aggregation request body).
            app_ids: the config's ``pendo.app_ids``: the apps a row source without its own
                ``appId`` reads (Pendo itself would read the default app only).

        Returns:
            ``(dimensionId, model, externalId, date_iso) -> value`` for result rows whose id field
            matches exactly one object of the model (0 values are kept).
        """
        return self._pipeline_truth(days, pipelines, app_ids).metrics

    def truth_unmatched_accounts(
        self,
        *,
        days: Iterable[date | str],
        pipelines: Iterable[Mapping[str, Any]],
        app_ids: Literal["all"] | Sequence[int] = "all",
    ) -> dict[tuple[str, str, str, Any], UnmatchedAccountReason]:
        """Result rows that cannot be published: ``(date_iso, pipeline_name, model, id) -> reason``.

        Args:
            days: local days.
            pipelines: as for :meth:`truth_metrics`.
            app_ids: as for :meth:`truth_metrics`.

        Returns:
            Reason ``no_object`` (no object, or a null/empty id) or ``ambiguous``.
        """
        return self._pipeline_truth(days, pipelines, app_ids).unmatched

    # ------------------------------------------------------------------ config

    def identity_config(self) -> JSONDict:
        """Config keys of DESIGN.md section 5 *Identity* and *More Pendo sources* for this data:
        ``matching`` (both keys, creation on), ``pages`` and ``track_events`` (every page and
        track type, named by its Pendo name). Merge into :meth:`demo_config`'s result."""
        return {
            "matching": {
                "end_user_keys": ["externalId", "email"],
                "visitor_email_field": "metadata.agent.email",
                "create_end_users": True,
            },
            "pages": [{"id": p["id"], "action": f"Viewed {p['name']}"} for p in self.pages()],
            "track_events": [
                {"id": t["id"], "action": f"{t['name']} (track event)"} for t in self.track_types()
            ],
        }

    def demo_config(self, *, start_date: date | str) -> JSONDict:
        """A product config (DESIGN.md section 5 format) that exercises the sandbox.

        Args:
            start_date: the first partition.

        Returns:
            ``{"pendo": ..., "features": [...], "pipelines": [...]}``.
        """
        pop = self._pop
        fids = pop.feature_ids
        picked = list(range(min(8, pop.n_features)))
        actions = {
            0: "Exported data",
            1: "Built dashboard",
            2: "Exported data",
            3: "Invited teammate",
        }
        features: list[JSONDict] = []
        for i in picked:
            item: JSONDict = {"id": fids[i]}
            if i in actions:
                item["action"] = actions[i]
            if i == 3:
                item["weight"] = 2
            features.append(item)
        key_features = [fids[i] for i in picked[:3:2]]
        key_filter = " || ".join(f'featureId == "{f}"' for f in key_features)

        def source() -> JSONDict:
            return {
                "source": {
                    # No appId, as in the README: the product adds pendo.app_ids.
                    "featureEvents": None,
                    "timeSeries": {"period": "dayRange", "first": "now()", "count": -1},
                }
            }

        pipelines: list[JSONDict] = [
            {
                "name": "account_usage",
                "model": "Company",
                "id_field": "accountId",
                "metrics": {
                    "totalEvents": "pendo_feature_events",
                    "totalMinutes": "pendo_feature_minutes",
                },
                "aggregation": "last",
                "pipeline": [
                    source(),
                    {"identified": "accountId"},
                    {
                        "group": {
                            "group": ["accountId"],
                            "fields": {
                                "totalEvents": {"sum": "numEvents"},
                                "totalMinutes": {"sum": "numMinutes"},
                            },
                        }
                    },
                ],
            },
            {
                "name": "account_key_feature_clicks",
                "model": "Company",
                "id_field": "accountId",
                "metrics": {"keyClicks": "pendo_key_feature_clicks"},
                "aggregation": "sum",
                "pipeline": [
                    source(),
                    {"filter": key_filter},
                    {"identified": "accountId"},
                    {
                        "group": {
                            "group": ["accountId"],
                            "fields": {"keyClicks": {"sum": "numEvents"}},
                        }
                    },
                ],
            },
            {
                "name": "asset_usage",
                "model": "Asset",
                "id_field": "assetId",
                "metrics": {"events": "pendo_asset_events"},
                "aggregation": "last",
                "pipeline": [
                    source(),
                    {"eval": {"assetId": "accountId"}},
                    {"identified": "assetId"},
                    {"group": {"group": ["assetId"], "fields": {"events": {"sum": "numEvents"}}}},
                ],
            },
            {
                "name": "project_active_visitors",
                "model": "Project",
                "id_field": "accountId",
                "metrics": {"activeVisitors": "pendo_active_visitors"},
                "aggregation": "last",
                "pipeline": [
                    source(),
                    {"identified": "visitorId"},
                    {"identified": "accountId"},
                    {
                        "group": {
                            "group": ["accountId"],
                            "fields": [{"activeVisitors": {"count": "visitorId"}}],
                        }
                    },
                ],
            },
        ]
        return {
            "pendo": {
                "region": "us",
                "timezone": self.spec.timezone,
                "start_date": as_date(start_date).isoformat(),
                "app_ids": "all",
            },
            "features": features,
            "pipelines": pipelines,
        }


def _pin_day(
    stages: Sequence[Any], start_ms: int, app_ids: Literal["all"] | Sequence[int]
) -> list[Any]:
    """Copy a stage list with its source's timeSeries set to one day and, where its row source
    names no ``appId``, the configured apps (as the product does)."""
    pinned = copy.deepcopy(list(stages))
    source = pinned[0]["source"]
    source["timeSeries"] = {"period": "dayRange", "first": start_ms, "count": 1}
    app_id = 'expandAppIds("*")' if app_ids == "all" else list(app_ids)
    for kind, params in source.items():
        if kind == "timeSeries":
            continue
        if params is None:
            source[kind] = {"appId": app_id}
        elif isinstance(params, dict):
            params.setdefault("appId", app_id)
    return pinned
