-- Hostile input (issue 18).

-- The webhook-ids of signed triggers, across all campaigns: the URL is not signed, so a
-- webhook-id is taken once, by the first campaign a request carrying it named; the same id
-- at another campaign's URL is a replay. Rows are needed only while a request with that
-- id could still verify (webhook-timestamp + 5 minutes, kept as `expires_at`); each signed
-- trigger deletes a few expired rows.
CREATE TABLE signed_trigger_ids (
    webhook_id  text        PRIMARY KEY,
    campaign_id text        NOT NULL,     -- no foreign key: an unknown campaign takes it too
    expires_at  timestamptz NOT NULL
);
CREATE INDEX signed_trigger_ids_expiry ON signed_trigger_ids (expires_at);

-- Suppressions by address: a one-click unsubscribe (or the erasure of an unsubscribed
-- profile) leaves the address's sha256 here, so that a profile created again with that
-- address starts unsubscribed. Only the digest of the normalised address is kept (an erased
-- profile leaves no address in clear).
CREATE TABLE suppressions (
    channel        text        NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    address_sha256 bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address_sha256)
);
