-- The run engine: campaign leases (scale-out), and per-recipient delivery state.

-- The daemon instance executing a campaign's runs, and until when (database time, so that
-- instances with skewed clocks agree). Taken over by another instance once expired.
CREATE TABLE engine_leases (
    campaign_id text        PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    generation  bigint      NOT NULL DEFAULT 1   -- +1 at each change of holder
);

-- inflight_since: claimed by the lease holder, durably, before any provider call; cleared
--   when the outcome is written or the claim is released. Set on a pending row after a
--   crash: a call may have been made (the recipient is sent again, same idempotency key).
-- retry_at: pending after a transient error; due for another attempt at this time.
ALTER TABLE run_recipients
    ADD COLUMN inflight_since timestamptz,
    ADD COLUMN retry_at       timestamptz;

-- Both stay small (claimed-but-unrecorded rows; rows waiting for a retry).
CREATE INDEX run_recipients_inflight ON run_recipients (run_id)
    WHERE inflight_since IS NOT NULL;
CREATE INDEX run_recipients_retry ON run_recipients (run_id, retry_at)
    WHERE status = 'pending' AND retry_at IS NOT NULL;
