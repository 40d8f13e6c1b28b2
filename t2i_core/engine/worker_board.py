"""The engine workers as one engine: model actions applied by all, states merged.

They share the state (``T2I_STATE``): the engine workers of one server (a SQLite file of its run
folder), or of every replica (Redis). BentoML sends an admin call (load, unload, set the default) to
one engine worker (of one replica). That worker appends it to the action log and pushes its number;
every worker applies the log in order between batches (told at once by the push, or by its heartbeat
every ``BEAT_S``), and the worker that took the call answers once every live worker has applied it (or
after a timeout), with each worker's result. A worker that starts later (BentoML restarts a crashed
one; a new replica) applies the log's net effect first: the last default, and the models whose last
action was a load.

Each worker publishes its model states, add-on states and statistics (``worker:<server>/<index>``,
expiring ``DEAD_AFTER_S`` after its last heartbeat); the engine's answers to ``model_states``,
``addon_states`` and ``stats`` merge those of its server's live workers, so that whichever worker
BentoML asks, ``/v1/models`` and ``/stats`` describe the whole server.

| key                                  | what                                        | lives |
| ------------------------------------ | ------------------------------------------- | ----- |
| ``actions:seq``, ``action:<n>``, index ``actions`` | the admin action log          | the latest ``ACTIONS_KEPT`` |
| ``action:<n>:result:<worker>``       | what the action gave on that worker         | ``RESULT_KEPT_S`` |
| ``worker:<server>/<index>``, index ``workers`` | a worker's heartbeat and published states | ``DEAD_AFTER_S`` after its last beat |
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from typing import Any

import psutil

from t2i_core.common.errors import T2IError
from t2i_core.state.store import StateStore

#: seconds between two heartbeats (and looks at the action log) of a worker
BEAT_S = 0.25
#: a worker silent this long is taken for dead (its states leave the merged view)
DEAD_AFTER_S = 10.0
ACTIONS = ("load", "unload", "set_default")
#: the channel a new action is pushed on, the actions the log keeps, and how long a result is kept
ACTIONS_CHANNEL = "actions"
ACTIONS_KEPT = 10_000
RESULT_KEPT_S = 24 * 3600.0
#: seconds an action numbered but missing from the log is waited for before the ones after it apply
GAP_WAIT_S = 5.0


def net_effect(actions: list[tuple[int, str, str]]) -> tuple[str | None, list[str]]:
    """The default and the models to load that the log ``actions`` (seq, action, model) leaves."""
    default = None
    last: dict[str, str] = {}
    for _, action, model_id in actions:
        if action == "set_default":
            default = model_id
        else:
            last.pop(model_id, None)
            last[model_id] = action
    return default, [m for m, a in last.items() if a == "load"]


class WorkerBoard:
    """This engine worker's place among the engine workers sharing ``state`` (those of its server, and
    with Redis those of every replica). ``server`` names this server (its host and run folder), ``index``
    this worker in it."""

    def __init__(self, state: StateStore, server: str, index: int, device: str):
        self.state = state
        self.server = server
        self.index = index
        self.worker = f"{server}/{index}"
        self.device = device
        self.host = socket.gethostname()
        self._applied = 0
        try:
            self.publish()
        except T2IError:  # the shared state is away: the heartbeat publishes once it is back
            pass

    # the action log
    def append(self, action: str, model_id: str) -> int:
        seq = self.state.incr("actions:seq")
        self.state.put(f"action:{seq}", json.dumps([action, model_id, time.time()]).encode())
        self.state.index_add("actions", str(seq), seq)
        oldest = self.state.index_range("actions", max_score=seq - ACTIONS_KEPT, limit=64, newest_first=False)
        if oldest:  # the log keeps its latest ACTIONS_KEPT
            self.state.index_remove("actions", *(m for m, _ in oldest))
            self.state.delete(*(f"action:{m}" for m, _ in oldest))
        self.state.publish(ACTIONS_CHANNEL, str(seq).encode())
        return seq

    def latest(self) -> int:
        return int(self.state.get("actions:seq") or 0)

    def after(self, seq: int) -> list[tuple[int, str, str]]:
        """The actions after ``seq`` (seq, action, model), in order and without a gap: an action
        numbered but not yet in the log (another worker is appending it) stops the list there, so
        that it is not skipped; one still missing ``GAP_WAIT_S`` after a later action was appended
        is taken for lost (its worker died between the two writes)."""
        found = self.state.index_range("actions", min_score=seq + 0.5, limit=ACTIONS_KEPT, newest_first=False)
        seqs = [int(m) for m, _ in found]
        rows = self.state.get_many([f"action:{s}" for s in seqs])
        out: list[tuple[int, str, str]] = []
        expected, now = seq + 1, time.time()
        for s, raw in zip(seqs, rows):
            if raw is None:  # pruned meanwhile
                expected = s + 1
                continue
            action, model_id, at = json.loads(raw)[:3]
            if s != expected and now - at < GAP_WAIT_S:
                break
            out.append((s, action, model_id))
            expected = s + 1
        return out

    def record(self, seq: int, result: dict[str, Any]) -> None:
        """This worker has applied the log up to ``seq``; ``result``: what the action at ``seq`` gave.
        Its next ``publish`` says so, with the model states the action left (published together, so
        that whoever waits for the action sees its effect)."""
        self.state.put(f"action:{seq}:result:{self.worker}", json.dumps(result).encode(), ttl_s=RESULT_KEPT_S)
        self._applied = seq

    def result(self, seq: int) -> dict[str, Any]:
        """What the action ``seq`` gave on this worker (which has applied it)."""
        raw = self.state.get(f"action:{seq}:result:{self.worker}")
        return json.loads(raw) if raw else {"error": {"message": f"action {seq} not applied on worker {self.worker}"}}

    def wait_applied(self, seq: int, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Each live worker's result for the action ``seq``, once all have applied it (or at the timeout:
        the workers still behind are missing)."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = self.live(every_server=True)
            if all(row["applied"] >= seq for row in live) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        names = [row["worker"] for row in live]
        results = self.state.get_many([f"action:{seq}:result:{w}" for w in names])
        return {w: json.loads(raw) for w, raw in zip(names, results) if raw is not None}

    # heartbeats and published states
    def publish(self, states: list[dict[str, Any]] | None = None, addons: dict[str, Any] | None = None,
                stats: dict[str, Any] | None = None) -> None:
        key = f"worker:{self.worker}"
        now = time.time()

        def change(raw: bytes | None) -> bytes:
            row = json.loads(raw) if raw else {"worker": self.worker, "server": self.server, "index": self.index,
                                                "host": self.host, "pid": os.getpid(), "device": self.device,
                                                "states": None, "addons": None, "stats": None}
            row.update(beat=now, applied=self._applied)
            for name, value in (("states", states), ("addons", addons), ("stats", stats)):
                if value is not None:
                    row[name] = value
            return json.dumps(row).encode()

        self.state.update(key, change, ttl_s=DEAD_AFTER_S)
        self.state.index_add("workers", self.worker, now)

    def leave(self) -> None:
        """This worker stops (its server shuts down): it leaves the live view now, not after
        ``DEAD_AFTER_S`` of silence."""
        self.state.delete(f"worker:{self.worker}")
        self.state.index_remove("workers", self.worker)

    def live(self, every_server: bool = False) -> list[dict[str, Any]]:
        """The live workers of this server (of every server sharing the state, with ``every_server``)."""
        names = [m for m, _ in self.state.index_range("workers", limit=4096)]
        rows = self.state.get_many([f"worker:{w}" for w in names])
        gone = [w for w, raw in zip(names, rows) if raw is None]
        if gone:
            self.state.index_remove("workers", *gone)
        found = [json.loads(raw) for raw in rows if raw is not None]
        # a killed worker leaves at once, not after DEAD_AFTER_S: on this machine its pid can be asked
        found = [row for row in found if row["host"] != self.host or psutil.pid_exists(row["pid"])]
        if not every_server:
            found = [row for row in found if row["server"] == self.server]
        return sorted(found, key=lambda row: (row["server"], row["index"]))


def merge_model_states(per_worker: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model for the whole engine: ``loaded`` when any worker has it loaded (``loaded_on``
    lists which), else ``loading`` when any loads it, else the first worker's state; ``in_flight``
    summed; ``workers``: how many workers answered."""
    order: list[str] = []
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for worker, states in sorted(per_worker.items()):
        for row in states:
            if row["id"] not in rows:
                order.append(row["id"])
            rows.setdefault(row["id"], []).append((worker, row))
    merged = []
    for model_id in order:
        found = rows[model_id]
        loaded = [(w, r) for w, r in found if r["state"] == "loaded"]
        loading = [(w, r) for w, r in found if r["state"] == "loading"]
        base = dict((loaded or loading or found)[0][1])
        base["loaded_on"] = [w for w, _ in loaded]
        base["workers"] = len(per_worker)
        if loaded:
            base["in_flight"] = sum(r.get("in_flight", 0) for _, r in loaded)
        merged.append(base)
    return merged


def merge_addon_states(per_worker: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Adapters and ControlNets of the whole engine: a row per id, ``loaded`` when any worker has it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in ("adapters", "controlnets"):
        by_id: dict[str, dict[str, Any]] = {}
        for worker, states in sorted(per_worker.items()):
            for row in states.get(kind, []):
                kept = by_id.setdefault(row["id"], {**row, "loaded_on": []})
                if row.get("state") == "loaded":
                    if kept.get("state") != "loaded":
                        by_id[row["id"]] = kept = {**row, "loaded_on": kept["loaded_on"]}
                    kept["loaded_on"].append(worker)
        out[kind] = list(by_id.values())
    return out


SUMMED = ("images", "errors", "engine_calls", "oom_retries", "busy_s", "batches", "memory_used_bytes", "memory_budget_bytes",
          "memory_splits")


def merge_stats(per_worker: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The engine's statistics over its workers: counts summed, histograms added, and each worker's
    own statistics under ``workers``."""
    ordered = [per_worker[w] for w in sorted(per_worker)]
    merged = {k: v for k, v in ordered[0].items() if k != "worker"}
    for key in SUMMED:
        merged[key] = sum(s.get(key, 0) for s in ordered)
    merged["busy_s"] = round(merged["busy_s"], 4)
    merged["max_batch_size_seen"] = max(s.get("max_batch_size_seen", 0) for s in ordered)
    for key in ("batch_size_histogram", "errors_by_code"):
        total: Counter[str] = Counter()
        for s in ordered:
            total.update(s.get(key, {}))
        merged[key] = dict(sorted(total.items(), key=lambda kv: (len(kv[0]), kv[0])))
    kinds: dict[str, dict[str, Any]] = {}
    for s in ordered:
        for label, k in s.get("batch_sizes_by_kind", {}).items():
            row = kinds.setdefault(label, {"batches": 0, "images": 0, "max": 0})
            row["batches"] += k["batches"]
            row["images"] += k["images"]
            row["max"] = max(row["max"], k["max"])
    for row in kinds.values():
        row["mean"] = round(row["images"] / row["batches"], 2) if row["batches"] else 0.0
    merged["batch_sizes_by_kind"] = dict(sorted(kinds.items()))
    merged["recent_batch_sizes"] = [n for s in ordered for n in s.get("recent_batch_sizes", [])][-64:]
    merged["loaded_models"] = sorted({m for s in ordered for m in s.get("loaded_models", [])})
    merged["workers"] = {str(w): per_worker[w] for w in sorted(per_worker)}
    return merged
