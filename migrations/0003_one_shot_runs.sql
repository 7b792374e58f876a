-- One-shot campaigns (no end_at) accept a single trigger. The run that trigger creates
-- is marked `one_shot`, and this partial unique index makes a second one impossible
-- whatever the concurrency, so triggers need only a shared lock on the campaign row
-- (windowed campaigns then take concurrent triggers without queueing on that row).
-- Runs made otherwise (a future "rerun" of the failed) leave the flag false.
ALTER TABLE runs ADD COLUMN one_shot boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX runs_one_shot ON runs (campaign_id) WHERE one_shot;
