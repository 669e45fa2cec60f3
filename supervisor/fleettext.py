"""`supervisor status` and `supervisor history` as text for a terminal.

Renders only the JSON-ready data that supervisor/fleetview.py builds, so the text and
`--json` always say the same thing; nothing here reads the store or a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisor.fleetview import shown_name
from supervisor.tzinfo_source import UNKNOWN


def status_text(data: dict[str, Any]) -> str:
    lines = [f"database {data['database']} (its clock: {data['database_time']})", ""]
    lines.append(f"nodes: {len(data['nodes'])} live")
    for node in data["nodes"]:
        lines.append(f"  {node['node_id']:<24} group {node['group']:<12} pid {node['pid']:<8} "
                     f"since {node['since']}  expires in {node['expires_in']:.1f}s"
                     f"  {_facts_text(node)}")
        lines += _node_workers_text(node)
    if data["zone_data"]["warning"]:
        lines.append(f"  {data['zone_data']['warning']}")
    lines += ["", f"leaders: {len(data['leaders'])}"]
    for lease in data["leaders"]:
        name = lease["worker"] + (f"@{lease['group']}" if lease["group"] else "")
        if lease["holder"] is None:
            lines.append(f"  {name:<28} none          term {lease['term']}")
        else:
            holder = f"{lease['holder']['node_id']} (pid {lease['holder']['pid']})"
            lines.append(f"  {name:<28} {holder:<24} term {lease['term']:<6} "
                         f"time left {lease['time_left']:.1f}s")
    lines += ["", f"coordinated: {len(data['coordinated'])}"]
    for coord in data["coordinated"]:
        lines += _coord_text(coord)
    lines += ["", f"cron: {len(data['cron'])} workers"]
    for cron in data["cron"]:
        lines += _cron_text(cron)
    lines += _control_text(data)
    return "\n".join(lines)


def _control_text(data: dict[str, Any]) -> list[str]:
    """Paused workers, draining nodes and handovers, with who asked, why and since when."""
    lines = ["", f"paused: {len(data['paused'])}"]
    for pause in data["paused"]:
        where = f"group {pause['group']}" if pause["group"] else "every group"
        stop = ", runs stopped" if pause["stop_running"] else ""
        lines.append(f"  {pause['worker']:<28} {where}{stop}  by {pause['by']} since "
                     f"{pause['since']}{_why(pause)}")
    lines += ["", f"draining: {len(data['draining'])}"]
    for drain in data["draining"]:
        lines.append(f"  {drain['node']:<28} {drain['state']:<13} by {drain['by']} since "
                     f"{drain['since']}{_why(drain)}")
    for handover in data["handovers"]:
        name = shown_name(handover["worker"], handover["group"])
        lines.append(f"handover: {name} by {handover['by']}, old holder out until "
                     f"{handover['until']}{_why(handover)}")
    return lines


def _why(row: dict[str, Any]) -> str:
    return f"  ({row['reason']})" if row["reason"] else ""


def _node_workers_text(node: dict[str, Any]) -> list[str]:
    """The node's workers as it published them, and its drain acknowledgement."""
    lines = []
    if node.get("drain"):
        lines.append(f"    draining: {node['drain']}")
    if node.get("workers"):
        shown = ", ".join(f"{name} {state}" for name, state in node["workers"].items())
        lines.append(f"    workers: {shown}")
    return lines


def _facts_text(node: dict[str, Any]) -> str:
    """A node's facts as text: `release 0.1.0  tz data 2024a (tzdata)`, "unknown" for
    what a node of an older release does not report."""
    release = node["release"] or UNKNOWN
    if node["tz_version"] is None and node["tz_source"] is None:
        return f"release {release}  tz data {UNKNOWN}"
    return f"release {release}  tz data {node['tz_version'] or UNKNOWN} ({node['tz_source']})"


def _cron_text(cron: dict[str, Any]) -> list[str]:
    lines = [
        f"  {cron['worker']:<28} {cron['schedule']} ({cron['timezone']})  "
        f"max_run {cron['max_run']}  overlap {cron['overlap']}",
        f"    next tick {cron['next_tick']} (in {cron['next_in']:.1f}s)",
    ]
    if not cron["ticks"]:
        lines.append("    no ticks recorded yet")
    for tick in cron["ticks"]:
        why = f" ({tick['reason']})" if tick["reason"] else ""
        lines.append(f"    {tick['tick']}  {tick['state']}{why}{_trigger_text(tick)}")
        for run in tick["runs"]:
            gone = "" if run["holder_live"] is not False else (
                "  (its node is gone: will be marked lost)")
            lines.append(f"      slot {run['slot']:<3} {_run_outcome(run)}{gone}")
    return lines


def _coord_text(coord: dict[str, Any]) -> list[str]:
    name = shown_name(coord["worker"], coord["group"])
    if coord["generation"] == 0:
        lines = [f"  {name:<28} no generation published yet"]
    else:
        lines = [f"  {name:<28} generation {coord['generation']}  count {coord['count']}  "
                 f"published {coord['published']}"]
    for member in coord["members"]:
        index = member["index"]
        place = "standby" if index == "standby" else f"index {index}"
        lines.append(f"    {place:<10} {_who(member)}  {_member_state(member, coord)}")
    for member in coord["joining"]:
        lines.append(f"    {'joining':<10} {_who(member)}  live since {member['since']}, "
                     "not in a generation yet")
    for slot in coord["draining"]:
        lines.append(f"    {'draining':<10} {_who(slot)}  holds slot {slot['index']} of "
                     f"generation {slot['generation']} (expires in {slot['expires_in']:.1f}s)")
    return lines


def _who(holder: dict[str, Any]) -> str:
    return f"{holder['node_id']} pid {holder['pid']:<8}"


def _member_state(member: dict[str, Any], coord: dict[str, Any]) -> str:
    if member["index"] == "standby" and not member["holding"]:
        state = "standing by"
    elif not member["holding"]:
        older = sorted({s["generation"] for s in coord["draining"]} | {
            m["slot_generation"] for m in coord["members"]
            if m["holding"] and m["slot_generation"] != coord["generation"]})
        state = "waiting for its slot" + (
            f" (generation {', '.join(map(str, older))} still holds slots)" if older else "")
    elif member["slot_generation"] == coord["generation"]:
        state = f"holds slot {member['slot_index']}"
    else:
        state = (f"holds slot {member['slot_index']} of generation "
                 f"{member['slot_generation']} (older: stopping)")
    return state if member["live"] else f"{state} (no longer a live member)"


def _run_outcome(run: dict[str, Any]) -> str:
    code = "" if run["exit_code"] is None else f" exit {run['exit_code']}"
    took = "" if run["duration"] is None else f" after {run['duration']:.1f}s"
    why = f" ({run['reason']})" if run["reason"] else ""
    return f"{run['node_id']} pid {run['pid']:<8} {run['state']}{code}{took}{why}"


def history_text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["kind"] == "run":
            lines.append(_history_run_text(row))
            continue
        if row["kind"] == "generation":
            lines.append(_history_generation_text(row))
            continue
        if row["kind"] == "control":
            group = f" (group {row['group']})" if row["group"] else ""
            lines.append(f"{row['at']}  {row['target']:<24} {row['action']}{group} by "
                         f"{row['by']}{_why(row)}")
            continue
        name = row["worker"] + (f"@{row['group']}" if row["group"] else "")
        took = "" if row["duration"] is None else f" after {row['duration']:.1f}s"
        why = f" ({row['reason']})" if row["reason"] else ""
        lines.append(f"{row['at']}  {name:<24} term {row['term']:<6} "
                     f"{row['node_id']} {_pids(row)} {row['outcome']}{took}{why}")
    return "\n".join(lines) if lines else "no history yet"


def _pids(row: dict[str, Any]) -> str:
    """The child's pid (`-` when none was recorded), then its supervisor's."""
    child = "-" if row["pid"] is None else str(row["pid"])
    return f"pid {child:<8} (supervisor {row['supervisor_pid']})"


def _trigger_text(row: dict[str, Any]) -> str:
    trigger = row.get("trigger")
    if trigger is None:
        return ""
    why = f": {trigger['reason']}" if trigger["reason"] else ""
    return f"  [triggered by {trigger['user']}@{trigger['host']}{why}]"


def _history_run_text(row: dict[str, Any]) -> str:
    what = "triggered" if row.get("trigger") else "tick"
    if row["slot"] < 0:  # a tick (or trigger) nobody ran: missed or skipped
        why = f" ({row['reason']})" if row["reason"] else ""
        return f"{row['at']}  {row['worker']:<24} {what} {row['state']}{why}{_trigger_text(row)}"
    code = "" if row["exit_code"] is None else f" exit {row['exit_code']}"
    took = "" if row["duration"] is None else f" after {row['duration']:.1f}s"
    why = f" ({row['reason']})" if row["reason"] else ""
    return (f"{row['at']}  {row['worker']:<24} run  slot {row['slot']:<3} {row['node_id']} "
            f"{_pids(row)} {row['state']}{code}{took}{why}{_trigger_text(row)}")


def _history_generation_text(row: dict[str, Any]) -> str:
    name = shown_name(row["worker"], row["group"])
    members = ", ".join(node or "(vacant)" for node in row["members"]) or "nobody"
    standby = f" (standby: {', '.join(row['standby'])})" if row["standby"] else ""
    end = "current" if row["duration"] is None else f"superseded after {row['duration']:.1f}s"
    return (f"{row['at']}  {name:<24} generation {row['generation']} count {row['count']}: "
            f"{members}{standby}  {end}")
