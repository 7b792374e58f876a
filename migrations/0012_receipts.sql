-- Delivery receipts (SPEC §9.5): what became of a `sent` message once its provider told.
--
-- Each sent recipient row names the provider that accepted it (beside provider_message_id),
-- so that a receipt is looked up by (provider, message id) and can only refer to its own
-- provider's messages. `delivery` is the best status heard so far, in the order
-- queued < sent < delivered < failed < bounced (daemon/receipts/model.py): a receipt never
-- moves it back, and the same receipt twice changes nothing.
ALTER TABLE run_recipients
    ADD COLUMN provider        text,
    ADD COLUMN delivery        text CHECK (delivery IN
                               ('queued', 'sent', 'delivered', 'failed', 'bounced')),
    ADD COLUMN delivery_reason text,
    ADD COLUMN delivery_at     timestamptz;
-- A message id that is our own key `<run_id>:<position>` (a webhook gateway that answers
-- no id, the log provider) is found by the primary key: such rows stay out of this index,
-- which then costs the outcome writes of those providers nothing (~15 % of a write).
CREATE INDEX run_recipients_provider_message ON run_recipients (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL
      AND provider_message_id <> run_id || ':' || position;
-- `?delivery=` on the recipients list; only rows with a receipt are in it, so outcome
-- writes (delivery still NULL) do not maintain it.
CREATE INDEX run_recipients_delivery ON run_recipients (run_id, delivery, position)
    WHERE delivery IS NOT NULL;

-- A run's final delivery counts, kept beside (not in) the runs row: receipt batches and
-- the engine's outcome batches then never wait for each other's row lock.
CREATE TABLE run_deliveries (
    run_id    text   PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    delivered bigint NOT NULL DEFAULT 0,
    bounced   bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0
);

-- Every receipt taken (one row per message and status). `applied_at` NULL: it matched no
-- sent recipient yet (it came before the send's outcome was written, or names nothing we
-- know); the receipt writer applies such receipts once their recipient is sent.
CREATE TABLE delivery_receipts (
    provider    text        NOT NULL,
    message_id  text        NOT NULL,
    status      text        NOT NULL CHECK (status IN
                            ('queued', 'sent', 'delivered', 'failed', 'bounced')),
    run_id      text,        -- from our idempotency key, when the receipt carries it
    position    bigint,
    reason      text,
    occurred_at timestamptz,
    received_at timestamptz NOT NULL,
    applied_at  timestamptz,
    PRIMARY KEY (provider, message_id, status)
);
CREATE INDEX delivery_receipts_parked ON delivery_receipts (received_at)
    WHERE applied_at IS NULL;

-- Standard Webhooks ids of receipt requests taken (replay protection): kept longer than
-- the 5-minute timestamp tolerance, then forgotten.
CREATE TABLE receipt_webhook_ids (
    provider    text        NOT NULL,
    webhook_id  text        NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (provider, webhook_id)
);
CREATE INDEX receipt_webhook_ids_age ON receipt_webhook_ids (received_at);
