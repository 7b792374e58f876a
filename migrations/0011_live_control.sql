-- Live control (SPEC §9.1): a live campaign may be paused and resumed, and its rate changed.
--
-- campaigns.paused_at:  when the current pause began (NULL: not paused).
-- campaigns.resumed_at: when the last pause ended.
-- runs.replanned_at:    when the run was last re-planned (NULL: only its start's plan).
--
-- A running run is due for a re-plan (by its lease holder: any daemon, after any restart)
-- while its campaign is live and either its rate differs from the campaign's (a rate
-- change) or the campaign was resumed after its last plan (`coalesce(replanned_at,
-- started_at)`). A pause never re-plans: nothing is excluded by it.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('draft', 'live', 'paused', 'completed', 'stopped'));
ALTER TABLE campaigns ADD COLUMN paused_at timestamptz;
ALTER TABLE campaigns ADD COLUMN resumed_at timestamptz;
ALTER TABLE runs ADD COLUMN replanned_at timestamptz;
