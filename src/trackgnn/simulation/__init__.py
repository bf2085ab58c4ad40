"""The embedded TrackML event generator (its tests compare it with real TrackML events).

Public API:

- :func:`simulate_event` -- one event in memory (``trackgnn.io.Event``) plus stage timings.
- :func:`simulate_events` -- a range of events written as TrackML CSV files.
- :func:`event_rng` -- the per-event random stream derived from (seed, event_id).
"""

from trackgnn.simulation.generator import event_rng, simulate_event, simulate_events

__all__ = ["event_rng", "simulate_event", "simulate_events"]
