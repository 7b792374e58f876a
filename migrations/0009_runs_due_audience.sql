-- The scheduler's next wake-up for runs over a stored audience (taken up to 30 s ahead,
-- `store/engine.py:next_due`): through `runs_due` it walked every waiting run of inline
-- recipients beyond that horizon before it found one with an audience, at each wake-up
-- (one per trigger's NOTIFY): linear in the runs waiting, quadratic over a burst of
-- triggers for a campaign that starts later (measured: ~2.8 ms of database CPU per
-- trigger with a few thousand runs waiting). This index holds only those runs.
CREATE INDEX runs_due_audience ON runs (scheduled_for)
    WHERE status = 'scheduled' AND audience_id IS NOT NULL;
