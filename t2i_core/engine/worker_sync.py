"""The engine's side of several engine workers (``Engine`` inherits it): joining the others, applying
the admin action log, heartbeats, and the merged views (see worker_board.py for the shared state's
side). Used only when the engine has a ``board`` (its state is shared with other workers)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from t2i_core.common.errors import T2IError
from t2i_core.engine.worker_board import ACTIONS_CHANNEL, BEAT_S, GAP_WAIT_S, merge_addon_states, merge_model_states, merge_stats, net_effect

log = logging.getLogger("t2i.engine")


class SharedWorkers:
    """Mixed into ``Engine``: it provides ``board``, ``worker``, ``models``, ``settings``, ``_applied``,
    ``_catching_up``, ``_torch_pool``, ``on_torch_thread``, ``_model_action`` and ``_own_stats``."""

    board: Any
    worker: int
    models: Any
    settings: Any
    _applied: int
    _catching_up: Any
    _torch_pool: Any
    _closed: Any

    def _action_on_every_worker(self, action: str, model_id: str) -> dict[str, Any]:
        """Log the action, apply it here, wait for the other live workers to apply it; this worker's
        answer with ``workers``: each worker's ``ok`` or error message."""
        seq = self.board.append(action, model_id)
        # a batch or the heartbeat may have applied it first (both catch up): then its result is recorded;
        # an action before it that another worker is still appending holds it back a moment (``after``)
        deadline = time.monotonic() + GAP_WAIT_S + 1.0
        applied: dict[int, dict[str, Any]] = {}
        while True:
            applied.update(self.on_torch_thread(self._catch_up))
            if self._applied >= seq or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        mine = applied.get(seq) or self.board.result(seq)
        results = self.board.wait_applied(seq, timeout_s=self.settings.request_timeout_s)
        results[self.board.worker] = mine
        own = f"{self.board.server}/"  # this server's workers by number, another replica's by its name
        return {**mine, "workers": {w.removeprefix(own): "ok" if r.get("ok") else r.get("error", {}).get("message", "?")
                                    for w, r in sorted(results.items())}}

    def _join_workers(self) -> None:
        """A worker that starts after admin actions were taken applies their net effect first. With the
        shared state away it starts anyway, and applies the whole log once the state is back."""
        try:
            log_rows = self.board.after(0)
            default, loads = net_effect(log_rows)
            if default is not None:
                self._model_action("set_default", default)
            for model_id in loads:
                self._model_action("load", model_id)
            if log_rows:
                self._applied = log_rows[-1][0]
                self.board.record(self._applied, {"ok": True, "replayed": len(log_rows)})
            self._publish()
        except T2IError as err:
            log.warning("engine worker %s: the admin action log cannot be read now (%s); it is applied once "
                        "the shared state is back", self.board.worker, err.message)

    def _catch_up(self) -> dict[int, dict[str, Any]]:
        """Apply the admin actions of the log this worker has not applied yet (on the torch thread,
        between batches); their results by sequence number."""
        self._catching_up.clear()
        results = {}
        for seq, action, model_id in self.board.after(self._applied):
            results[seq] = self._model_action(action, model_id)
            self._applied = seq
            self.board.record(seq, results[seq])
        if results:
            self._publish()
        return results

    def _publish(self, with_stats: bool = False) -> None:
        self.board.publish(self.models.states(), self._own_addon_states(), self._own_stats() if with_stats else None)

    def _beat(self) -> None:
        """Heartbeat, published states, and new admin actions handed to the torch thread: at once when
        one is pushed, else at the next beat."""
        beats, subscription, next_beat = 0, None, 0.0
        while not self._closed.is_set():
            try:
                if subscription is None:
                    subscription = self.board.state.subscribe(ACTIONS_CHANNEL)
                pushed = subscription.get(max(0.0, next_beat - time.monotonic()))
                if pushed is None:  # a beat: the heartbeat and the published states
                    beats += 1
                    next_beat = time.monotonic() + BEAT_S
                    self._publish(with_stats=beats % 4 == 0)
                if self.board.latest() > self._applied and not self._catching_up.is_set():
                    self._catching_up.set()
                    self._torch_pool.submit(self._catch_up)
            except Exception:  # the shared state is away, or a failed action: the next beat tries again
                log.warning("engine worker %s: heartbeat failed; trying again", self.board.worker, exc_info=True)
                if subscription is not None:
                    subscription.close()
                subscription = None
                self._closed.wait(1.0)
        if subscription is not None:
            subscription.close()

    def _live_views(self, key: str, own: Any) -> dict[int, Any]:
        """This server's live workers' published ``key``, by worker number (this one's ``own``, fresh)."""
        views = {row["index"]: row[key] for row in self.board.live() if row[key] is not None}
        views[self.worker] = own
        return views

    def model_states(self) -> list[dict[str, Any]]:
        """Every registry model with its state; with several workers, merged over them."""
        if self.board is None:
            return self.models.states()
        return merge_model_states(self._live_views("states", self.models.states()))

    def addon_states(self) -> dict[str, list[dict[str, Any]]]:
        if self.board is None:
            return self._own_addon_states()
        return merge_addon_states(self._live_views("addons", self._own_addon_states()))

    def _own_addon_states(self) -> dict[str, list[dict[str, Any]]]:
        return {"adapters": self.models.adapter_states(), "controlnets": self.models.controlnet_states()}

    def _merged_stats(self) -> dict[str, Any]:
        return merge_stats(self._live_views("stats", self._own_stats()))

    if TYPE_CHECKING:  # provided by Engine
        def on_torch_thread(self, fn: Any, *args: Any) -> Any: ...
        def _model_action(self, action: str, model_id: str) -> dict[str, Any]: ...
        def _own_stats(self) -> dict[str, Any]: ...
