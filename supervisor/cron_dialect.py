"""The cron dialect: what each field of a cron expression means, and nothing more.

Each field is a comma-separated list of items; an item is `*`, `N`, `A-B` (A <= B) or
either of these followed by `/STEP` (STEP >= 1), or `N/STEP` (N to the field's maximum,
not in day-of-week). N, A, B: ASCII decimal numbers, or three-letter English names in the
month (JAN-DEC) and day-of-week (SUN-SAT) fields, any case. Day-of-week 0 and 7 are both
Sunday. Nothing else: no `?`, `L`, `W`, `#`, `H`, `R`, no wrap-around ranges.

Each field is expanded here to the exact set of values it means and handed to croniter
as `*` or a plain list of numbers, so croniter's own readings of ranges and steps (which
differ from Vixie cron's: `1-1` as `*`, `1/2` in day-of-week stopping at Saturday) never
apply.

Day of month and day of week (Vixie cron, cronie): when both are restricted, a day
matches if EITHER matches; when either starts with `*`, BOTH must match. croniter and
Kubernetes (robfig/cron) read `*/2` as restricted, so they OR where Vixie ANDs; such an
expression is refused unless both readings are the same days.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is the value low + i


_SECOND_F = _Field("second", 0, 59)
_MINUTE_F = _Field("minute", 0, 59)
_HOUR_F = _Field("hour", 0, 23)
_DOM_F = _Field("day-of-month", 1, 31)
_MONTH_F = _Field("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG",
                                   "SEP", "OCT", "NOV", "DEC"))
_DOW_F = _Field("day-of-week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"))
_ITEM = re.compile(r"(?P<start>\*|[0-9A-Za-z]+)(?:-(?P<end>[0-9A-Za-z]+))?(?:/(?P<step>[0-9]+))?",
                   re.ASCII)

def normalise(expr: str, fields: list[str]) -> str:
    """The croniter expression with exactly the meaning of `fields` in this dialect."""
    specs = [_MINUTE_F, _HOUR_F, _DOM_F, _MONTH_F, _DOW_F]
    if len(fields) == 6:
        specs.insert(0, _SECOND_F)
    sets = [_expand(expr, f, text) for f, text in zip(specs, fields, strict=True)]
    dom_text, dow_text = fields[-3], fields[-1]
    dom, dow = sets[-3], {d % 7 for d in sets[-1]}
    dom_all, dow_all = dom == set(range(1, 32)), dow == set(range(7))
    vixie_and = dom_text.startswith("*") or dow_text.startswith("*")
    if vixie_and and not dom_all and not dow_all:
        raise ValueError(_day_rule_message(expr, dom_text, dow_text))
    # What remains means one thing everywhere: either one day field matches every day
    # (AND: the other decides; OR with a restricted one: every day), or both are
    # restricted and neither is every day (OR).
    if vixie_and:
        dom_out = "*" if dom_all else _listed(dom)
        dow_out = "*" if dow_all else _listed(dow)
    elif dom_all or dow_all:
        dom_out = dow_out = "*"  # e.g. "1-31" or "0-6": OR with every day
    else:
        dom_out, dow_out = _listed(dom), _listed(dow)
    out = [_listed(s) if s != set(range(f.low, f.high + 1)) else "*"
           for f, s in zip(specs, sets, strict=True)]
    out[-3], out[-1] = dom_out, dow_out
    return " ".join(out)


def _name(field: _Field, value: int) -> str:
    return field.names[value - field.low] if field.names else str(value)


def _span(field: _Field, token: str, bound: int) -> str:
    """`token` and the field's bound as a range, lowest first; the token alone when equal."""
    other = _name(field, bound)
    if _value(field, token, lambda why: ValueError(why)) == bound:
        return token
    return f"{other}-{token}" if bound == field.low else f"{token}-{other}"


def _unstarred(field: _Field, text: str) -> str:
    """The field with each leading * spelled as the full range: the same values, restricted."""
    return ",".join(f"{field.low}-{field.high}{item[1:]}" if item.startswith("*") else item
                    for item in text.split(","))


def _listed(values: set[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _expand(expr: str, field: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _expand_item(expr, field, item)
    return values


def _expand_item(expr: str, field: _Field, item: str) -> set[int]:
    def bad(why: str) -> ValueError:
        return ValueError(f'invalid cron expression "{expr}": {field.name} field, "{item}": {why}')

    match = _ITEM.fullmatch(item)
    if match is None:
        for token in ("?", "L", "W", "#", "H", "R"):
            if token in item.upper():
                return _refuse_token(bad, token)
        raise bad("expected *, a number, a range a-b, and an optional /step")
    start, end, step_text = match.group("start", "end", "step")
    if start == "*":
        if end is not None:
            raise bad("* cannot start a range")
        low, high = field.low, field.high
    else:
        low = _value(field, start, bad)
        high = _value(field, end, bad) if end is not None else low
        if end is None and step_text is not None:
            if field is _DOW_F:
                raise bad(
                    "a/n is read differently by cron implementations in day-of-week (up to "
                    "Saturday or up to Sunday = 7); write a range such as 1-7/2 or a list "
                    "such as 1,3,5"
                )
            high = field.high  # N/STEP: from N to the field's maximum, as in Vixie cron
        if low > high:
            raise bad(
                f"a range must not wrap around ({start} comes after {end}); write it as "
                f"two ranges: {_span(field, start, 6 if field is _DOW_F else field.high)},"
                f"{_span(field, end, field.low)}"
            )
    step = 1
    if step_text is not None:
        step = int(step_text)
        if step < 1:
            raise bad("the step must be 1 or more")
    return set(range(low, high + 1, step))


def _refuse_token(bad: Callable[[str], ValueError], token: str) -> set[int]:
    why = {
        "R": "R (random) is not supported: every node would pick a different time",
        "H": "H (hashed) is not supported",
        "?": "? is not supported; write *",
        "L": "L (last) is not supported",
        "W": "W (nearest weekday) is not supported",
        "#": "# (nth weekday of the month) is not supported",
    }[token]
    raise bad(why + "; the dialect is *, numbers, names, ranges a-b, lists and /steps")


def _value(field: _Field, token: str, bad: Callable[[str], ValueError]) -> int:
    if token.isdigit():
        value = int(token)
    elif token.upper() in field.names:
        value = field.low + field.names.index(token.upper())
    else:
        special = re.fullmatch(r"[0-9]*([LWHR])[0-9]*", token.upper(), re.ASCII)
        if special:
            _refuse_token(bad, special.group(1))
        names = f" or a name {field.names[0]}-{field.names[-2 if field is _DOW_F else -1]}" \
            if field.names else ""
        raise bad(f'"{token}" is not a number{names}')
    if not field.low <= value <= field.high:
        raise bad(f"{value} is out of range {field.low}-{field.high}")
    return value


def _day_rule_message(expr: str, dom_text: str, dow_text: str) -> str:
    days, weekdays = _unstarred(_DOM_F, dom_text), _unstarred(_DOW_F, dow_text)
    return (
        f'ambiguous cron expression "{expr}": day-of-month "{dom_text}" and day-of-week '
        f'"{dow_text}" are read two ways. Vixie cron and cronie (a field starting with * '
        f"counts as unrestricted) run on the days that match BOTH; croniter and Kubernetes "
        f"run on the days that match EITHER. For EITHER, write both fields without *: "
        f'"{days}" and "{weekdays}" (or use two workers, one with day-of-month "{days}" '
        f'and day-of-week *, one with day-of-month * and day-of-week "{weekdays}"). BOTH '
        f'is no cron expression: write day-of-month "{days}" with day-of-week * and let '
        f'the worker exit on days other than "{weekdays}", or list the dates per month.'
    )
