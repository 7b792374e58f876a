"""When a run may send and how many it can reach: pure arithmetic on times and rates.

Shared by the API (previews, validation), the store (plans written with a run's freeze) and
the engine; it imports none of them.
"""
