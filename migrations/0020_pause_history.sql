-- Every pause of a campaign, for the report page's send-rate curve (SPEC §9.6: pauses are
-- shaded). campaigns.paused_at holds only the current pause; this table keeps them all.
-- Written by a trigger in the pause's and the resume's own transaction, so no code path
-- that pauses or resumes can forget it. An open pause has resumed_at NULL.
CREATE TABLE campaign_pauses (
    campaign_id text        NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    paused_at   timestamptz NOT NULL,
    resumed_at  timestamptz,
    PRIMARY KEY (campaign_id, paused_at)
);

CREATE FUNCTION campaign_pauses_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.paused_at IS NOT NULL AND OLD.paused_at IS DISTINCT FROM NEW.paused_at THEN
        UPDATE campaign_pauses
           SET resumed_at = coalesce(NEW.resumed_at, NEW.updated_at, now())
         WHERE campaign_id = NEW.id AND paused_at = OLD.paused_at AND resumed_at IS NULL;
    END IF;
    IF NEW.paused_at IS NOT NULL AND OLD.paused_at IS DISTINCT FROM NEW.paused_at THEN
        INSERT INTO campaign_pauses (campaign_id, paused_at) VALUES (NEW.id, NEW.paused_at)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER campaign_pauses_record AFTER UPDATE OF paused_at ON campaigns
    FOR EACH ROW WHEN (OLD.paused_at IS DISTINCT FROM NEW.paused_at)
    EXECUTE FUNCTION campaign_pauses_record();

-- Pauses already open when this migration runs.
INSERT INTO campaign_pauses (campaign_id, paused_at)
SELECT id, paused_at FROM campaigns WHERE paused_at IS NOT NULL;
