"""Watch it: how clinicians respond to each card over time, and an alarm when a card moves far from its
own history (a malfunction detector: a rule that silently breaks stops firing, or fires three times as
often, or gets overridden by everyone).

Per card, per ISO week (Monday to Sunday, UTC), all rule-set versions together and per version: cards
shown, accepted, overridden (counts and rates, of the cards issued that week), the top override reasons,
and suppression. Read from the card store (storage/watch_queries.py), never from logs or metrics.

Suppression: the cards *not* shown because of an earlier override are not stored (the engine only logs
them and sends the X-Cramp-Suppressed header). What the database does hold is every override, and an
override of a non-critical card opens a window of ``suppress_days`` (rule set) for that patient and card.
So per week we count the overrides that opened a window, and the patients under an open window at some
time in that week: an upper bound of the patients who could have had the card suppressed.

The alarm (``check_firing``, ``check_override``), for the latest *complete* week against the previous
``HISTORY_WEEKS`` weeks (at least ``MIN_HISTORY_WEEKS``, from the first week the card was shown):

    far          |x - median| > K * spread, where spread = max(1.4826 * MAD, the sampling noise of x
                 around the median: sqrt(median) for a count, sqrt(p(1-p)/n) for a rate)
    significant  exact one-sided test in the direction of the change: Poisson (cards shown a week, mean
                 = the history's median) or binomial (overridden of n shown, p = the history's median
                 rate); p-value < ALPHA

and an alarm needs both. Why both: median +- K*MAD alone is the card's own week-to-week variation and is
robust to a past outlier week, but a perfectly steady history has MAD = 0 (then any wobble would alarm)
and at small counts it says nothing about chance. The Poisson/binomial test alone knows chance but not
the extra variation real traffic has (holidays, a clinic closed): at 1000 cards a week it would alarm on a
10% dip. Requiring both keeps alarms for real breaks: a card dropping to zero (from a median of about 7 or
more a week), tripling, or an override rate jumping from 20% to 60%. K = 3 is the usual robust-z cut-off
(about 3 standard deviations for normal data); ALPHA = 0.001 keeps chance alarms rare across the 9 cards
and 2 measures checked each week.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from statistics import median
from typing import Iterable, Sequence

from cds_service.ruleset.loader import RuleSet
from cds_service.storage.store import CardStore, ReasonCount
from cds_service.storage.watch_queries import Comment, DailyCounts, DailyReason, OverrideEvent, WatchQueries

K = 3.0  # how many spreads from the median is "far"
ALPHA = 0.001  # the Poisson/binomial test's cut-off
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
HISTORY_WEEKS = 8  # weeks compared against (the most recent ones before the week checked)
MIN_HISTORY_WEEKS = 4  # fewer complete weeks with the card: not evaluated
MIN_CARDS_FOR_RATE = 5  # the override rate is not judged on fewer cards shown in the week checked
WATCH_WEEKS = 26  # weeks shown on the page (the current, incomplete one included)
TOP_REASONS = 3
MEASURES = ("firing", "override")


# ---------------------------------------------------------------- weeks

@dataclass(frozen=True, order=True)
class IsoWeek:
    year: int
    week: int

    @classmethod
    def of(cls, day: date) -> "IsoWeek":
        year, week, _ = day.isocalendar()
        return cls(year, week)

    @property
    def start(self) -> date:  # Monday
        return date.fromisocalendar(self.year, self.week, 1)

    @property
    def end(self) -> date:  # Sunday
        return self.start + timedelta(days=6)

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.week:02d}"

    def shifted(self, weeks: int) -> "IsoWeek":
        return IsoWeek.of(self.start + timedelta(weeks=weeks))

    def __str__(self) -> str:
        return self.label


def week_range(first: IsoWeek, last: IsoWeek) -> list[IsoWeek]:
    weeks, week = [], first
    while week <= last:
        weeks.append(week)
        week = week.shifted(1)
    return weeks


# ---------------------------------------------------------------- the series

@dataclass
class WeekCounts:
    week: IsoWeek
    complete: bool
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    versions: set[str] = field(default_factory=set)
    reasons: dict[tuple[str | None, str | None], list] = field(default_factory=dict)  # key -> [display, cards]

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.shown if self.shown else None

    @property
    def top_reasons(self) -> tuple[ReasonCount, ...]:
        return _top(self.reasons)

    def add(self, row: DailyCounts) -> None:
        self.shown += row.shown
        self.accepted += row.accepted
        self.overridden += row.overridden
        self.versions.add(row.ruleset_version)

    def add_reason(self, row: DailyReason) -> None:
        entry = self.reasons.setdefault((row.system, row.code), [row.display, 0])
        entry[0] = entry[0] or row.display
        entry[1] += row.cards


def _top(reasons: dict[tuple[str | None, str | None], list]) -> tuple[ReasonCount, ...]:
    counts = [ReasonCount(system, code, display, cards) for (system, code), (display, cards) in reasons.items()]
    return tuple(sorted(counts, key=lambda r: (-r.cards, r.label))[:TOP_REASONS])


@dataclass(frozen=True)
class SuppressionWeek:
    week: IsoWeek
    overrides: int  # overrides made this week that opened a suppression window
    patients: int  # patients under an open window at some time this week (keyed hashes, counted)


@dataclass(frozen=True)
class AlarmCheck:
    card: str
    measure: str  # firing | override
    week: IsoWeek
    status: str  # alarm | ok | not_evaluated
    reason: str
    value: float | None = None
    median: float | None = None
    low: float | None = None  # the band median +- K * spread
    high: float | None = None
    p_value: float | None = None
    history_weeks: int = 0

    @property
    def alarm(self) -> bool:
        return self.status == "alarm"


@dataclass
class CardWatch:
    card: str
    indicator: str | None
    suppress_days: int
    weeks: list[WeekCounts]  # every version together, oldest first
    by_version: dict[str, list[WeekCounts]]
    suppression: list[SuppressionWeek]
    firing: AlarmCheck
    override: AlarmCheck

    @property
    def checks(self) -> tuple[AlarmCheck, AlarmCheck]:
        return (self.firing, self.override)

    @property
    def alarms(self) -> list[AlarmCheck]:
        return [check for check in self.checks if check.alarm]

    @property
    def shown(self) -> int:
        return sum(w.shown for w in self.weeks)

    @property
    def accepted(self) -> int:
        return sum(w.accepted for w in self.weeks)

    @property
    def overridden(self) -> int:
        return sum(w.overridden for w in self.weeks)

    @property
    def top_reasons(self) -> tuple[ReasonCount, ...]:
        merged: dict[tuple[str | None, str | None], list] = {}
        for week in self.weeks:
            for key, (display, cards) in week.reasons.items():
                entry = merged.setdefault(key, [display, 0])
                entry[0] = entry[0] or display
                entry[1] += cards
        return _top(merged)


@dataclass
class WatchReport:
    generated_at: datetime
    weeks: list[IsoWeek]
    latest_complete: IsoWeek
    cards: list[CardWatch]

    def card(self, card_id: str) -> CardWatch | None:
        return next((c for c in self.cards if c.card == card_id), None)

    @property
    def alarms(self) -> list[AlarmCheck]:
        return [check for card in self.cards for check in card.alarms]


# ---------------------------------------------------------------- building the report

def watch_since(now: datetime, weeks: int = WATCH_WEEKS) -> datetime:
    """The first instant the page reads: Monday 00:00 UTC of the oldest week shown."""
    first = IsoWeek.of(now.astimezone(timezone.utc).date()).shifted(-(weeks - 1))
    return datetime.combine(first.start, time(0), tzinfo=timezone.utc)


def build_watch(store: CardStore, ruleset: RuleSet | None = None, *, now: datetime | None = None,
                weeks: int = WATCH_WEEKS, details: bool = True) -> WatchReport:
    """The Watch report over the last ``weeks`` ISO weeks up to ``now`` (default: the store's clock).
    ``ruleset`` (the active one) gives each card's indicator and suppression window, and lists its
    enabled cards even when none was shown. ``details=False`` (for /metrics) reads only the counts the
    alarms need: no reasons, no suppression. ``WatchUnavailable`` when the database does not answer."""
    now = (now or store.clock()).astimezone(timezone.utc)
    since = watch_since(now, weeks)
    queries = WatchQueries(store)
    counts = queries.daily_counts(since)
    reasons = queries.daily_reasons(since) if details else []
    settings = _card_settings(ruleset)
    longest_window = max((days for _, days in settings.values()), default=0) if details else 0
    overrides = queries.overrides(since - timedelta(days=longest_window)) if longest_window else []
    return assemble(now, weeks, counts, reasons, overrides, settings)


def comments(store: CardStore, *, card: str | None = None, now: datetime | None = None,
             weeks: int = WATCH_WEEKS) -> list[Comment]:
    """Clinicians' free-text comments over the same weeks, newest first. They may hold PHI: only for roles
    allowed to see them (the view checks), never in metrics or logs."""
    now = (now or store.clock()).astimezone(timezone.utc)
    return WatchQueries(store).comments(watch_since(now, weeks), rule=card)


def _card_settings(ruleset: RuleSet | None) -> dict[str, tuple[str, int]]:
    """Enabled card -> (indicator, suppression days; 0 for critical cards, which are never suppressed)."""
    if ruleset is None:
        return {}
    return {card: (s.indicator, 0 if s.indicator == "critical" else s.suppress_days)
            for card, s in ruleset.spec.cards.items() if s.enabled}


def assemble(now: datetime, weeks: int, counts: Sequence[DailyCounts], reasons: Sequence[DailyReason],
             overrides: Sequence[OverrideEvent], settings: dict[str, tuple[str, int]]) -> WatchReport:
    current = IsoWeek.of(now.date())
    axis = week_range(current.shifted(-(weeks - 1)), current)
    latest = current.shifted(-1)
    cards = sorted(set(settings) | {row.rule for row in counts})
    report_cards = []
    for card in cards:
        indicator, suppress_days = settings.get(card, (None, 0))
        all_weeks, by_version = _series(axis, current, [r for r in counts if r.rule == card],
                                        [r for r in reasons if r.rule == card])
        report_cards.append(CardWatch(
            card=card, indicator=indicator, suppress_days=suppress_days, weeks=all_weeks, by_version=by_version,
            suppression=_suppression(axis, [o for o in overrides if o.rule == card], suppress_days),
            firing=check_firing(card, all_weeks, latest),
            override=check_override(card, all_weeks, latest),
        ))
    return WatchReport(now, axis, latest, report_cards)


def _series(axis: list[IsoWeek], current: IsoWeek, counts: Iterable[DailyCounts], reasons: Iterable[DailyReason]
            ) -> tuple[list[WeekCounts], dict[str, list[WeekCounts]]]:
    def empty() -> dict[IsoWeek, WeekCounts]:
        return {week: WeekCounts(week, complete=week < current) for week in axis}

    together = empty()
    versions: dict[str, dict[IsoWeek, WeekCounts]] = defaultdict(empty)
    for row in counts:
        week = IsoWeek.of(row.day)
        if week in together:
            together[week].add(row)
            versions[row.ruleset_version][week].add(row)
    for reason in reasons:
        week = IsoWeek.of(reason.day)
        if week in together:
            together[week].add_reason(reason)
            versions[reason.ruleset_version][week].add_reason(reason)
    return list(together.values()), {v: list(w.values()) for v, w in sorted(versions.items())}


def _suppression(axis: list[IsoWeek], overrides: list[OverrideEvent], suppress_days: int) -> list[SuppressionWeek]:
    if suppress_days <= 0:
        return []
    window = timedelta(days=suppress_days)
    out = []
    for week in axis:
        start = datetime.combine(week.start, time(0), tzinfo=timezone.utc)
        end = start + timedelta(days=7)
        opened = sum(1 for o in overrides if start <= o.at < end)
        patients = {o.patient_key for o in overrides if o.at < end and o.at + window > start}
        out.append(SuppressionWeek(week, opened, len(patients)))
    return out


# ---------------------------------------------------------------- the alarm

def _history(weeks: list[WeekCounts], latest: IsoWeek) -> tuple[WeekCounts | None, list[WeekCounts]]:
    """The week checked and the complete weeks before it, from the first week the card was shown."""
    checked = next((w for w in weeks if w.week == latest), None)
    before = [w for w in weeks if w.week < latest]
    first_shown = next((i for i, w in enumerate(before) if w.shown), None)
    history = before[first_shown:] if first_shown is not None else []
    return checked, history[-HISTORY_WEEKS:]


def _mad(values: Sequence[float], centre: float) -> float:
    return median(abs(v - centre) for v in values)


def _not_enough(card: str, measure: str, latest: IsoWeek, have: int, what: str) -> AlarmCheck:
    return AlarmCheck(card, measure, latest, "not_evaluated",
                      f"Not evaluated: {have} complete week(s) of history with {what} before {latest}; "
                      f"{MIN_HISTORY_WEEKS} are needed", history_weeks=have)


def _version_note(checked: WeekCounts, history: list[WeekCounts]) -> str:
    earlier = set().union(*(w.versions for w in history)) if history else set()
    new = sorted(checked.versions - earlier)
    if not new:
        return ""
    return f" Rule-set version {', '.join(new)} was first shown this week: a deliberate change may explain it."


def check_firing(card: str, weeks: list[WeekCounts], latest: IsoWeek) -> AlarmCheck:
    """Cards shown in the latest complete week against the card's own weekly history (module docstring)."""
    checked, history = _history(weeks, latest)
    if checked is None or len(history) < MIN_HISTORY_WEEKS:
        return _not_enough(card, "firing", latest, len(history), "this card shown")
    values = [float(w.shown) for w in history]
    centre = median(values)
    rate = max(centre, 0.5)  # a median of 0 (a rare card): one card is then no surprise
    spread = max(MAD_SCALE * _mad(values, centre), math.sqrt(rate))
    low, high = max(centre - K * spread, 0.0), centre + K * spread
    x = checked.shown
    p = poisson_cdf(x, rate) if x < centre else poisson_sf(x, rate)
    far = abs(x - centre) > K * spread
    base = (f"{x} shown in {latest} against a median of {centre:g} a week over the previous {len(history)} weeks "
            f"(usual range {low:.1f} to {high:.1f}; Poisson p = {p:.2g})")
    if far and p < ALPHA:
        change = "it stopped firing" if x == 0 else (
            f"{x / centre:.1f} times its median" if centre and x > centre else "far below its median")
        return AlarmCheck(card, "firing", latest, "alarm", f"Firing changed: {base}; {change}."
                          + _version_note(checked, history), x, centre, low, high, p, len(history))
    return AlarmCheck(card, "firing", latest, "ok", f"Firing as usual: {base}.", x, centre, low, high, p,
                      len(history))


def check_override(card: str, weeks: list[WeekCounts], latest: IsoWeek) -> AlarmCheck:
    """The share of the latest complete week's cards that were overridden, against the card's history."""
    checked, history = _history(weeks, latest)
    shown_weeks = [w for w in history if w.shown]
    if checked is None or len(shown_weeks) < MIN_HISTORY_WEEKS:
        return _not_enough(card, "override", latest, len(shown_weeks), "this card shown")
    n, k = checked.shown, checked.overridden
    if n < MIN_CARDS_FOR_RATE:
        return AlarmCheck(card, "override", latest, "not_evaluated",
                          f"Not evaluated: {n} card(s) shown in {latest}; the override rate is judged on "
                          f"{MIN_CARDS_FOR_RATE} or more", history_weeks=len(shown_weeks))
    rates = [w.overridden / w.shown for w in shown_weeks]
    centre = median(rates)
    total = sum(w.shown for w in shown_weeks)
    p0 = min(max(centre, 0.5 / total), 1 - 0.5 / total)  # never 0 or 1: one override is no proof of a break
    spread = max(MAD_SCALE * _mad(rates, centre), math.sqrt(p0 * (1 - p0) / n))
    low, high = max(centre - K * spread, 0.0), min(centre + K * spread, 1.0)
    rate = k / n
    p = binomial_cdf(k, n, p0) if rate < centre else binomial_sf(k, n, p0)
    far = abs(rate - centre) > K * spread
    base = (f"{k} of {n} overridden in {latest} ({rate:.0%}) against a median of {centre:.0%} over the previous "
            f"{len(shown_weeks)} weeks (usual range {low:.0%} to {high:.0%}; binomial p = {p:.2g})")
    if far and p < ALPHA:
        return AlarmCheck(card, "override", latest, "alarm", f"Override rate changed: {base}."
                          + _version_note(checked, history), rate, centre, low, high, p, len(shown_weeks))
    return AlarmCheck(card, "override", latest, "ok", f"Override rate as usual: {base}.", rate, centre, low,
                      high, p, len(shown_weeks))


# ---------------------------------------------------------------- exact tails (no SciPy needed)

def _log_poisson(i: int, lam: float) -> float:
    return i * math.log(lam) - lam - math.lgamma(i + 1)


def poisson_cdf(x: int, lam: float) -> float:
    """P(X <= x) for X ~ Poisson(lam)."""
    return min(1.0, sum(math.exp(_log_poisson(i, lam)) for i in range(0, x + 1)))


def poisson_sf(x: int, lam: float) -> float:
    """P(X >= x), summed upwards (no 1 - cdf cancellation in the far tail)."""
    if x <= 0:
        return 1.0
    total, i = 0.0, x
    while True:
        term = math.exp(_log_poisson(i, lam))
        total += term
        if i > lam and term <= total * 1e-16:
            return min(1.0, total)
        i += 1


def _log_binomial(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), 0 < p < 1."""
    return min(1.0, sum(math.exp(_log_binomial(i, n, p)) for i in range(0, k + 1)))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k)."""
    return min(1.0, sum(math.exp(_log_binomial(i, n, p)) for i in range(max(k, 0), n + 1)))


def alarm_states(report: WatchReport, cards: Iterable[str] = ()) -> dict[tuple[str, str], bool]:
    """(card, measure) -> alarm, for every card in the report and in ``cards`` (for /metrics: no comments)."""
    states = {(card, measure): False for card in cards for measure in MEASURES}
    for card in report.cards:
        for check in card.checks:
            states[(card.card, check.measure)] = check.alarm
    return states
