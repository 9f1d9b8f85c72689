"""AWS cron expressions for Jobs maintenance windows, and the ``schedulingConfig`` date-time strings.

AWS IoT Jobs takes a maintenance window's ``startTime`` as an AWS (EventBridge-style) cron expression, six
fields ``cron(Minutes Hours Day-of-month Month Day-of-week Year)`` in UTC, e.g. ``cron(0 22 ? * SUN *)``.
Supported here: ``*``, ``?``, lists, ranges, steps (``0/15``, ``*/5``), month names ``JAN``-``DEC`` and day
names ``SUN``-``SAT`` (AWS numbers days 1-7 from Sunday). The bare six fields without ``cron(...)`` and the
five-field form without a year are accepted too. ``L``, ``W`` and ``#`` are refused (``ValueError``) rather
than silently misread.

``schedulingConfig.startTime``/``endTime`` are ``StringDateTime`` in botocore's model: AWS documents the
format as "YYYY-MM-DD for the date and HH:MM for the time" (UTC); ``YYYY-MM-DDTHH:MM``, a space instead of
``T``, optional seconds and a trailing ``Z`` are all accepted.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?Z?$")
_SEARCH_DAYS = 366 * 5


def parse_datetime(text: str) -> float:
    """Epoch seconds of a ``schedulingConfig`` time string (UTC)."""
    m = _DATETIME.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a date and time in the form YYYY-MM-DDTHH:MM")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()


def format_datetime(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M")


def _field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> frozenset[int] | None:
    """The values a field allows; None for ``?`` (no constraint from this field)."""
    if text == "?":
        return None
    out: set[int] = set()
    for part in text.split(","):
        bare = part.upper()
        for name in names or {}:
            bare = bare.replace(name, "")
        if any(c in bare for c in "LW#"):
            raise ValueError(f"cron field {text!r}: L, W and # are not supported")
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError(f"cron step {step_text!r} must be at least 1")
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            left, right = part.split("-", 1)
            a, b = _value(left, names), _value(right, names)
        else:
            a = _value(part, names)
            b = hi if step != 1 else a
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise ValueError(f"cron field {text!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def _value(text: str, names: dict[str, int] | None) -> int:
    if names and text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ValueError(f"cron value {text!r} is not a number")
    return int(text)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None
    months: frozenset[int]
    weekdays: frozenset[int] | None
    years: frozenset[int] | None

    @classmethod
    def parse(cls, text: str) -> Cron:
        body = text.strip()
        if body.startswith("cron(") and body.endswith(")"):
            body = body[5:-1]
        fields = body.split()
        if len(fields) == 5:
            fields.append("*")
        if len(fields) != 6:
            raise ValueError(
                f"{text!r} is not a cron expression: cron(Minutes Hours Day-of-month Month Day-of-week Year)"
            )
        minutes = _field(fields[0], 0, 59)
        hours = _field(fields[1], 0, 23)
        months = _field(fields[3], 1, 12, _MONTHS)
        if minutes is None or hours is None or months is None:
            raise ValueError(f"{text!r}: '?' is allowed only in Day-of-month or Day-of-week")
        days = _field(fields[2], 1, 31)
        weekdays = _field(fields[4], 1, 7, _DAYS)
        years = None if fields[5] in ("*", "?") else _field(fields[5], 1970, 2199)
        # "*" in one day field next to a constrained other one means "any" for the starred one
        if fields[2] == "*" and weekdays is not None and fields[4] != "*":
            days = None
        if fields[4] == "*" and days is not None and fields[2] != "*":
            weekdays = None
        return cls(minutes, hours, days, months, weekdays, years)

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months or (self.years is not None and day.year not in self.years):
            return False
        aws_weekday = (day.weekday() + 1) % 7 + 1
        if self.days is not None and self.weekdays is not None:
            return day.day in self.days and aws_weekday in self.weekdays
        if self.days is not None:
            return day.day in self.days
        if self.weekdays is not None:
            return aws_weekday in self.weekdays
        return True

    def next_fire(self, after: float) -> float | None:
        """The first minute at or after ``after`` (epoch seconds) that the expression matches, or None."""
        start = datetime.fromtimestamp(after, UTC)
        if start.second or start.microsecond:
            start = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for i in range(_SEARCH_DAYS):
            if self._day_matches(day):
                for h in hours:
                    for m in minutes:
                        t = day.replace(hour=h, minute=m)
                        if t >= start:
                            return t.timestamp()
            day = day + timedelta(days=1)
            if i == 0:
                day = day.replace(hour=0, minute=0)
        return None
