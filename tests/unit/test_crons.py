"""Cron schedules: next fire times across daylight-saving changes, aliases, intervals, and
invalid schedules named at app load."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest

import forge_node as forge
from forge_node import app as app_module
from forge_node.crons import InvalidSchedule, Schedule
from forge_node.errors import AppLoadError

BERLIN = ZoneInfo("Europe/Berlin")
UTC = datetime.UTC


def ticks(expression, start, end, zone="Europe/Berlin"):
    return [t.astimezone(BERLIN).isoformat()
            for t in Schedule.parse(expression, None, zone).ticks_between(start, end, 100)]


def test_a_daily_0230_runs_once_on_the_day_the_clock_skips_it():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST; there is no 02:30
    found = ticks("30 2 * * *", datetime.datetime(2026, 3, 28, 12, tzinfo=BERLIN),
                  datetime.datetime(2026, 3, 30, 12, tzinfo=BERLIN))
    assert found == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_daily_0230_runs_once_on_the_day_the_clock_repeats_it():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice
    found = ticks("30 2 * * *", datetime.datetime(2026, 10, 24, 12, tzinfo=BERLIN),
                  datetime.datetime(2026, 10, 26, 12, tzinfo=BERLIN))
    assert found == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]


def test_an_hourly_cron_keeps_real_hours_across_the_change():
    found = ticks("0 * * * *", datetime.datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN),
                  datetime.datetime(2026, 3, 29, 4, 30, tzinfo=BERLIN))
    assert found == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                     "2026-03-29T04:00:00+02:00"]


def test_ticks_are_in_the_crons_time_zone():
    start = datetime.datetime(2026, 1, 1, 12, tzinfo=UTC)
    [tick] = Schedule.parse("0 9 * * *", None, "America/New_York").ticks_between(
        start, start + datetime.timedelta(days=1), 10)
    assert tick.astimezone(UTC).hour == 14


def test_aliases_and_seconds_fields():
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    hourly = Schedule.parse("@hourly", None).ticks_between(start, start.replace(hour=2), 10)
    assert [t.hour for t in hourly] == [1, 2]
    daily = Schedule.parse("@daily", None).next_after(start)
    assert daily == datetime.datetime(2026, 1, 2, tzinfo=UTC)
    seconds = Schedule.parse("*/2 * * * * *", None).ticks_between(
        start, start + datetime.timedelta(seconds=5), 10)
    assert [t.second for t in seconds] == [2, 4]


def test_every_secs_ticks_on_multiples_of_the_interval():
    schedule = Schedule.parse(None, 5, "UTC")
    start = datetime.datetime(2026, 1, 1, 0, 0, 3, 250000, tzinfo=UTC)
    assert [t.second for t in schedule.ticks_between(start, start.replace(second=17), 10)] == \
        [5, 10, 15]
    assert schedule.next_after(start.replace(second=5, microsecond=0)).second == 10


def test_ticks_between_keeps_the_last_ones():
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    last = Schedule.parse(None, 1, "UTC").ticks_between(start, start.replace(second=30), 3)
    assert [t.second for t in last] == [28, 29, 30]


@pytest.mark.parametrize(("expression", "every_secs", "zone", "message"), [
    ("61 * * * *", None, "UTC", "invalid cron expression '61 * * * *': Bad minute"),
    ("* * *", None, "UTC", "Wrong number of fields"),
    ("@sometimes", None, "UTC", "invalid cron expression"),
    ("* * * * *", None, "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    (None, None, "UTC", "give a cron expression or every_secs="),
    ("* * * * *", 5, "UTC", "give a cron expression or every_secs="),
    (None, 0, "UTC", "every_secs must be greater than 0"),
])
def test_invalid_schedules_are_refused(expression, every_secs, zone, message):
    with pytest.raises(InvalidSchedule, match=message.replace("*", r"\*").replace("(", r"\(")):
        Schedule.parse(expression, every_secs, zone)


def test_an_invalid_cron_fails_at_app_load_with_its_name():
    previous = app_module._current
    app_module._current = app_module.AppRegistry()
    try:
        with pytest.raises(AppLoadError, match="cron nightly_report: invalid cron expression"):
            @forge.cron("0 25 * * *")
            def nightly_report(ctx):
                pass

        @forge.cron("@daily", timezone="Europe/Berlin", catch_up=True, worker_capability="gpu")
        def cleanup(ctx):
            return ctx.scheduled_for

        registry = app_module._current
        assert registry.crons["cleanup"].catch_up is True
        job = registry.jobs["cron:cleanup"]
        assert job.worker_capability == "gpu"
    finally:
        app_module._current = previous
