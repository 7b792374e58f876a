-- Lifecycle notifications (SPEC §9.4): an outbox of signed events for the operator.
--
-- Triggers on the state columns write each event in the SAME transaction as the change it
-- reports (so an event exists if and only if its change committed), and NOTIFY the
-- deliverers. They write only while `notification_settings` says so (the daemon writes
-- that row at start and on reload from its `[notifications]` section): without it, a
-- status change costs one primary-key lookup, and the outcome writes (which update the
-- counts, never `status` or `replanned_at`) do not even fire the triggers.
--
-- Events: run.started (scheduled -> running, with the planned exclusions), run.paused and
-- run.resumed (per running run, when its campaign is paused / resumed), run.replanned
-- (replanned_at moves), run.finished (-> completed, cancelled, failed), and
-- campaign.completed. The campaign trigger is deferred to the commit, so that a
-- campaign.completed comes after the run.finished written in its transaction.

CREATE TABLE notification_settings (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled    boolean     NOT NULL,
    events     text[]      NOT NULL,
    updated_at timestamptz NOT NULL
);

-- body: the exact bytes POSTed (and signed), fixed at insert: the same on every attempt.
-- status: pending until delivered (a 2xx) or failed (no 2xx within the retry period).
CREATE TABLE notifications (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      text        NOT NULL
                    DEFAULT 'msg_' || replace(gen_random_uuid()::text, '-', ''),
    type            text        NOT NULL CHECK (type IN ('run.started', 'run.paused',
                    'run.resumed', 'run.replanned', 'run.finished', 'campaign.completed')),
    campaign_id     text        NOT NULL,
    run_id          text,        -- NULL for campaign events
    body            text        NOT NULL,
    created_at      timestamptz NOT NULL,   -- the state change's own time
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_error      text,
    finished_at     timestamptz,            -- delivered or failed
    CONSTRAINT notifications_webhook_id_key UNIQUE (webhook_id)
);
-- The deliverers' claim: due pending rows, and whether an earlier one of the same run (or
-- campaign) is still pending. Partial: delivered rows cost these indexes nothing.
CREATE INDEX notifications_due ON notifications (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX notifications_pending_run ON notifications (run_id, id)
    WHERE status = 'pending' AND run_id IS NOT NULL;
CREATE INDEX notifications_pending_campaign ON notifications (campaign_id, id)
    WHERE status = 'pending';
-- The pruning of delivered rows, and `campaignd notifications list --failed`.
CREATE INDEX notifications_finished ON notifications (status, finished_at)
    WHERE status <> 'pending';

CREATE FUNCTION notification_time(at timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION notification_wanted(kind text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM notification_settings WHERE enabled AND kind = ANY (events))
$$;

CREATE FUNCTION notification_add(kind text, campaign text, run text, at timestamptz,
                                 data json) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stamp timestamptz := coalesce(at, now());
BEGIN
    INSERT INTO notifications (type, campaign_id, run_id, body, created_at, next_attempt_at)
    VALUES (kind, campaign, run,
            json_build_object('type', kind, 'timestamp', notification_time(stamp),
                              'data', data)::text,
            stamp, stamp);
    PERFORM pg_notify('campaignd_notifications', '');
END
$$;

-- A run as its events report it (the shape of the run report's fields).
CREATE FUNCTION notification_run(r runs, status text) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'run_id', r.id, 'campaign_id', r.campaign_id, 'status', status,
        'rerun_of', r.rerun_of,
        'started_at', notification_time(r.started_at),
        'finished_at', notification_time(r.finished_at),
        'end_reason', r.end_reason, 'error', r.error,
        'deadline', notification_time(r.deadline), 'deadline_reason', r.deadline_reason,
        'rate_per_second', r.rate_per_second,
        'replanned_at', notification_time(r.replanned_at),
        'counts', json_build_object(
            'targeted', r.targeted, 'sent', r.sent, 'failed', r.failed, 'pending', r.pending,
            'excluded', json_build_object(
                'time_cap', r.excluded_time_cap, 'campaign_end', r.excluded_campaign_end,
                'opted_out', r.excluded_opted_out, 'no_address', r.excluded_no_address,
                'duplicate', r.excluded_duplicate, 'cancelled', r.excluded_cancelled)))
$$;

CREATE FUNCTION runs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    at   timestamptz;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status = 'running' THEN
            kind := 'run.started';
            at := NEW.started_at;
        ELSIF NEW.status IN ('completed', 'cancelled', 'failed') THEN
            kind := 'run.finished';
            at := NEW.finished_at;
        END IF;
    ELSIF NEW.status = 'running' AND NEW.replanned_at IS NOT NULL THEN
        kind := 'run.replanned';
        at := NEW.replanned_at;
    END IF;
    IF kind IS NOT NULL AND notification_wanted(kind) THEN
        PERFORM notification_add(kind, NEW.campaign_id, NEW.id, at,
                                 notification_run(NEW, NEW.status));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_notify AFTER UPDATE OF status, replanned_at ON runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.replanned_at IS DISTINCT FROM NEW.replanned_at)
    EXECUTE FUNCTION runs_notify();

CREATE FUNCTION campaigns_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    at   timestamptz;
    run  runs;
BEGIN
    IF NEW.status = 'completed' THEN
        IF notification_wanted('campaign.completed') THEN
            PERFORM notification_add('campaign.completed', NEW.id, NULL, NEW.finished_at,
                json_build_object(
                    'campaign_id', NEW.id, 'name', NEW.name, 'status', NEW.status,
                    'end_at', notification_time(NEW.end_at),
                    'finished_at', notification_time(NEW.finished_at),
                    'runs', (SELECT count(*) FROM runs WHERE campaign_id = NEW.id)));
        END IF;
        RETURN NULL;
    END IF;
    IF OLD.status = 'live' AND NEW.status = 'paused' THEN
        kind := 'run.paused';
        at := NEW.paused_at;
    ELSIF OLD.status = 'paused' AND NEW.status = 'live' THEN
        kind := 'run.resumed';
        at := NEW.resumed_at;
    ELSE
        RETURN NULL;
    END IF;
    IF notification_wanted(kind) THEN
        FOR run IN SELECT * FROM runs WHERE campaign_id = NEW.id AND status = 'running'
                   ORDER BY started_at, id LOOP
            PERFORM notification_add(kind, NEW.id, run.id, at,
                notification_run(run, CASE kind WHEN 'run.paused' THEN 'paused'
                                      ELSE 'running' END));
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER campaigns_notify AFTER UPDATE OF status ON campaigns
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION campaigns_notify();
