-- Freezing a run's recipients is one INSERT ... SELECT of up to millions of rows. The foreign
-- key from run_recipients to runs costs a lookup per inserted row: more than half the time of
-- a million-recipient start. The engine inserts recipients only for the run it has just
-- locked (in the same transaction), so the reference cannot break; what the key still did,
-- ON DELETE CASCADE, a statement trigger does (one DELETE per statement, not per row).
ALTER TABLE run_recipients DROP CONSTRAINT run_recipients_run_id_fkey;

CREATE FUNCTION run_recipients_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM run_recipients r USING gone WHERE r.run_id = gone.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_delete_recipients AFTER DELETE ON runs
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION run_recipients_cascade();
