-- Profiles, audiences, campaigns, runs and per-recipient outcomes.
-- Status strings are the same as in daemon/models.py.

CREATE TABLE profiles (
    id          text PRIMARY KEY,
    email       text,
    phone       text,
    push_tokens text[]      NOT NULL DEFAULT '{}',
    attributes  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    sub_email   boolean     NOT NULL DEFAULT true,
    sub_sms     boolean     NOT NULL DEFAULT true,
    sub_push    boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audiences (
    id         text PRIMARY KEY,
    name       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One global sequence gives every membership its insertion rank: the send order.
CREATE SEQUENCE audience_member_position;

CREATE TABLE audience_members (
    audience_id text   NOT NULL REFERENCES audiences (id) ON DELETE CASCADE,
    profile_id  text   NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    position    bigint NOT NULL DEFAULT nextval('audience_member_position'),
    PRIMARY KEY (audience_id, profile_id)
);
CREATE INDEX audience_members_order ON audience_members (audience_id, position);
CREATE INDEX audience_members_profile ON audience_members (profile_id);

CREATE TABLE campaigns (
    id              text PRIMARY KEY,
    name            text        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    content         jsonb       NOT NULL,
    audience_id     text,       -- a name, not a foreign key: the audience may be created later
    start_at        timestamptz,
    end_at          timestamptz,
    rate_per_second integer     CHECK (rate_per_second BETWEEN 1 AND 2000),
    status          text        NOT NULL DEFAULT 'draft'
                    CHECK (status IN ('draft', 'live', 'completed', 'stopped')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz,
    finished_at     timestamptz,   -- completed or stopped
    CHECK (end_at IS NULL OR start_at IS NULL OR end_at > start_at)
);
CREATE INDEX campaigns_status ON campaigns (status, created_at, id);

CREATE TABLE runs (
    id                  text PRIMARY KEY,
    campaign_id         text        NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    status              text        NOT NULL DEFAULT 'scheduled'
                        CHECK (status IN ('scheduled', 'running', 'completed', 'cancelled', 'failed')),
    audience_id         text,           -- the stored audience to snapshot (NULL: inline recipients)
    inline_count        integer     NOT NULL DEFAULT 0,
    context             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key     text,
    request_hash        text,           -- sha256 of the canonical trigger body
    created_at          timestamptz NOT NULL DEFAULT now(),
    scheduled_for       timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    rate_per_second     integer,
    deadline            timestamptz,
    deadline_reason     text        CHECK (deadline_reason IN ('time_cap', 'campaign_end')),
    end_reason          text        CHECK (end_reason IN
                        ('delivered', 'time_cap', 'campaign_end', 'cancelled', 'error')),
    cancel_requested_at timestamptz,
    error               text,
    -- The counts, updated in the same transaction as the recipient rows they count,
    -- so that targeted = sent + failed + pending + sum(excluded) at every read.
    targeted            bigint      NOT NULL DEFAULT 0,
    sent                bigint      NOT NULL DEFAULT 0,
    failed              bigint      NOT NULL DEFAULT 0,
    pending             bigint      NOT NULL DEFAULT 0,
    excluded_time_cap     bigint    NOT NULL DEFAULT 0,
    excluded_campaign_end bigint    NOT NULL DEFAULT 0,
    excluded_opted_out    bigint    NOT NULL DEFAULT 0,
    excluded_no_address   bigint    NOT NULL DEFAULT 0,
    excluded_duplicate    bigint    NOT NULL DEFAULT 0,
    excluded_cancelled    bigint    NOT NULL DEFAULT 0,
    CONSTRAINT runs_idempotency_key UNIQUE (campaign_id, idempotency_key),
    CONSTRAINT runs_counts_add_up CHECK (
        targeted = sent + failed + pending + excluded_time_cap + excluded_campaign_end
                 + excluded_opted_out + excluded_no_address + excluded_duplicate
                 + excluded_cancelled)
);
CREATE INDEX runs_campaign ON runs (campaign_id, created_at, id);
CREATE INDEX runs_due ON runs (scheduled_for) WHERE status IN ('scheduled', 'running');

-- Inline recipients as given in the trigger, in order; resolved at run start.
CREATE TABLE run_inline_recipients (
    run_id     text    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position   integer NOT NULL,
    profile_id text    NOT NULL,
    data       jsonb   NOT NULL,   -- email, phone, push_tokens, attributes, context as given
    PRIMARY KEY (run_id, position)
);

-- The frozen recipient set of a started run and each recipient's outcome.
CREATE TABLE run_recipients (
    run_id              text     NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position            bigint   NOT NULL,      -- send order within the run
    profile_id          text     NOT NULL,
    email               text,
    phone               text,
    push_tokens         text[],
    attributes          jsonb,
    context             jsonb,                  -- the recipient's own context (inline)
    status              text     NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'excluded')),
    reason              text,                   -- exclusion reason, or failure reason code
    error               text,                   -- the provider's words, for failures
    attempts            smallint NOT NULL DEFAULT 0,
    provider_message_id text,
    updated_at          timestamptz,
    PRIMARY KEY (run_id, position)
);
CREATE INDEX run_recipients_pending ON run_recipients (run_id, position) WHERE status = 'pending';
CREATE INDEX run_recipients_outcome ON run_recipients (run_id, status, reason, position);
