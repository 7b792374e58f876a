-- Reruns (SPEC §9.4): a run made from another run's excluded or failed recipients names
-- its source; the source's report lists its reruns (through the partial index).
ALTER TABLE runs ADD COLUMN rerun_of text REFERENCES runs (id) ON DELETE SET NULL;
CREATE INDEX runs_rerun_of ON runs (rerun_of, created_at, id) WHERE rerun_of IS NOT NULL;
