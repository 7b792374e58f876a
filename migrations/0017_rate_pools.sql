-- Rate pools (SPEC §9.3): one limit shared by every campaign that names the pool, on every
-- daemon of this database. Each daemon (holder) that executes pooled campaigns keeps a row
-- in rate_pool_shares, renewed with its heartbeat; `granted` is what it may spend (calls/s)
-- and always bounds what it spends. See daemon/store/pools.py for the protocol.
CREATE TABLE rate_pools (
    name            text PRIMARY KEY,
    rate_per_second integer     NOT NULL CHECK (rate_per_second >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rate_pool_shares (
    pool           text             NOT NULL REFERENCES rate_pools (name) ON DELETE CASCADE,
    holder         text             NOT NULL,
    demand         double precision NOT NULL CHECK (demand >= 0),
    granted        double precision NOT NULL CHECK (granted >= 0),
    -- Capacity this holder gave up, not yet usable by others (its calls of the last
    -- second still count in the pool's sliding windows), until released_until.
    released       double precision NOT NULL DEFAULT 0 CHECK (released >= 0),
    released_until timestamptz,
    members        jsonb            NOT NULL DEFAULT '{}',  -- {campaign_id: demand}
    expires_at     timestamptz      NOT NULL,
    PRIMARY KEY (pool, holder)
);

ALTER TABLE campaigns ADD COLUMN rate_pool text;
CREATE INDEX campaigns_rate_pool ON campaigns (rate_pool) WHERE rate_pool IS NOT NULL;
