-- In-flight marks move from run_recipients to a narrow table of their own. Marking a
-- recipient by updating its row cost a new row version and an entry in every index of
-- run_recipients, once more than the outcome write already does; inserting (then
-- deleting) a claim row costs a fraction of that, and leaves run_recipients one version
-- per outcome. A claim row means: claimed by `holder` before any provider call; it goes
-- with the outcome's write, or with a release at a graceful stop; a claim left by a dead
-- holder marks a recipient that may have been sent (it is sent again, same idempotency key).
DROP INDEX run_recipients_inflight;
ALTER TABLE run_recipients DROP COLUMN inflight_since;

CREATE TABLE run_claims (
    run_id     text        NOT NULL,
    position   bigint      NOT NULL,
    holder     text        NOT NULL,
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, position)
);

-- A deleted run takes its claims along, as it takes its recipients.
CREATE OR REPLACE FUNCTION run_recipients_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM run_recipients r USING gone WHERE r.run_id = gone.id;
    DELETE FROM run_claims c USING gone WHERE c.run_id = gone.id;
    RETURN NULL;
END
$$;
