"""What the engine keeps between calls or skips per call (engine/pipeline.py) gives what building it afresh gave:
the no-card answer, the stale-before dates across a change of UTC day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cds_service.engine.pipeline import Engine, Shown, _answer
from cds_service.hooks.cards import CdsResponse, wire_json


def test_the_no_card_answer_is_the_wire_json_of_an_empty_response_and_a_fresh_dict_each_call():
    first, second = _answer(Shown((), ())), _answer(Shown((), ()))
    assert first == wire_json(CdsResponse(cards=[])) == {"cards": []}
    first["cards"].append("changed by a caller")
    assert second == {"cards": []} and _answer(Shown((), ())) == {"cards": []}


def test_stale_before_dates_follow_the_utc_day_of_each_call():
    engine = Engine.default()
    assert engine._quantity_windows, "the default rules read quantity observations"

    def fresh(now: datetime) -> dict:
        today = now.astimezone(timezone.utc).date()
        return {pair: today - timedelta(days=window + 1) for pair, window in engine._quantity_windows.items()}

    evening = datetime(2026, 6, 15, 23, 30, tzinfo=timezone.utc)
    after_midnight = evening + timedelta(hours=1)
    local_same_instant = after_midnight.astimezone(timezone(timedelta(hours=-5)))  # June 15th there, 16th UTC
    for now in (evening, evening, after_midnight, local_same_instant, evening):
        assert engine._stale_before(now) == fresh(now)
    assert engine._stale_before(after_midnight) != engine._stale_before(evening)
