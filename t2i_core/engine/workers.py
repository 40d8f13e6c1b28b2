"""The engine workers of one server as one engine: model actions applied by all, states merged.

BentoML sends an admin call (load, unload, set the default) to one engine worker. That worker writes
it to the action log of the shared file; every worker applies the log in order between batches (a
worker's board thread looks every ``BEAT_S``), and the worker that took the call answers once every
live worker has applied it (or after a timeout), with each worker's result. A worker that starts
later (BentoML restarts a crashed one) applies the log's net effect first: the last default, and the
models whose last action was a load.

Each worker publishes its model states, control states and statistics; the engine's answers to
``model_states``, ``control_states`` and ``stats`` merge those of the live workers, so that whichever
worker BentoML asks, ``/v1/models`` and ``/stats`` describe the whole engine.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import psutil

from t2i_core.engine.shared_db import SharedDB

#: seconds between two heartbeats (and looks at the action log) of a worker
BEAT_S = 0.25
#: a worker silent this long is taken for dead (its states leave the merged view)
DEAD_AFTER_S = 10.0
ACTIONS = ("load", "unload", "set_default")

SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, model_id TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS action_results (seq INTEGER NOT NULL, worker INTEGER NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (seq, worker));
CREATE TABLE IF NOT EXISTS workers (worker INTEGER PRIMARY KEY, pid INTEGER NOT NULL, device TEXT NOT NULL,
    applied INTEGER NOT NULL, beat REAL NOT NULL, states TEXT, controls TEXT, stats TEXT);
"""


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
    def __init__(self, db: SharedDB, worker: int, device: str):
        self.db = db
        self.worker = worker
        self.device = device
        db.executescript(SCHEMA)
        with db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO workers (worker, pid, device, applied, beat) VALUES (?, ?, ?, 0, ?)",
                         (worker, os.getpid(), device, time.time()))

    # the action log
    def append(self, action: str, model_id: str) -> int:
        with self.db.write() as conn:
            return int(conn.execute("INSERT INTO actions (action, model_id, at) VALUES (?, ?, ?)",
                                    (action, model_id, time.time())).lastrowid or 0)

    def latest(self) -> int:
        return int(self.db.read("SELECT COALESCE(MAX(seq), 0) FROM actions")[0][0])

    def after(self, seq: int) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self.db.read("SELECT seq, action, model_id FROM actions WHERE seq > ? ORDER BY seq",
                                               (seq,))]  # type: ignore[misc]

    def record(self, seq: int, result: dict[str, Any]) -> None:
        """This worker has applied the log up to ``seq``; ``result``: what the action at ``seq`` gave."""
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO action_results VALUES (?, ?, ?)", (seq, self.worker, json.dumps(result)))
            conn.execute("UPDATE workers SET applied = ? WHERE worker = ?", (seq, self.worker))

    def result(self, seq: int) -> dict[str, Any]:
        """What the action ``seq`` gave on this worker (which has applied it)."""
        rows = self.db.read("SELECT result FROM action_results WHERE seq = ? AND worker = ?", (seq, self.worker))
        return json.loads(rows[0][0]) if rows else {"error": {"message": f"action {seq} not applied on worker {self.worker}"}}

    def wait_applied(self, seq: int, timeout_s: float) -> dict[int, dict[str, Any]]:
        """Each live worker's result for the action ``seq``, once all have applied it (or at the timeout:
        the workers still behind are missing)."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = self.live()
            if all(row["applied"] >= seq for row in live) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        rows = self.db.read("SELECT worker, result FROM action_results WHERE seq = ?", (seq,))
        alive = {row["worker"] for row in live}
        return {int(w): json.loads(r) for w, r in rows if w in alive}

    # heartbeats and published states
    def publish(self, states: list[dict[str, Any]] | None = None, controls: dict[str, Any] | None = None,
                stats: dict[str, Any] | None = None) -> None:
        sets, values = ["beat = ?"], [time.time()]
        for name, value in (("states", states), ("controls", controls), ("stats", stats)):
            if value is not None:
                sets.append(f"{name} = ?")
                values.append(json.dumps(value))
        with self.db.write() as conn:
            conn.execute(f"UPDATE workers SET {', '.join(sets)} WHERE worker = ?", (*values, self.worker))

    def leave(self) -> None:
        """This worker stops (its server shuts down): it leaves the live view now, not after
        ``DEAD_AFTER_S`` of silence."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM workers WHERE worker = ?", (self.worker,))

    def live(self) -> list[dict[str, Any]]:
        rows = self.db.read("SELECT worker, pid, device, applied, beat, states, controls, stats FROM workers "
                            "WHERE beat > ? ORDER BY worker", (time.time() - DEAD_AFTER_S,))
        return [
            {"worker": w, "pid": pid, "device": dev, "applied": applied, "beat": beat,
             "states": json.loads(s) if s else None, "controls": json.loads(c) if c else None,
             "stats": json.loads(st) if st else None}
            for w, pid, dev, applied, beat, s, c, st in rows
            # a killed worker leaves at once, not after DEAD_AFTER_S; the workers of a server share one
            # machine (the run folder is local), so its pid can be asked
            if psutil.pid_exists(pid)
        ]


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


def merge_control_states(per_worker: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
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
