-- A stored audience is frozen in position-ordered chunks: the run starts (and sends) once
-- its first chunk is in, and the rest follows chunk by chunk, each chunk one transaction
-- that inserts its recipients and moves the run's counts by what it inserted. This row
-- says how far the freeze of a running run has come; it goes with the last chunk (or with
-- a close, which freezes the rest at once as excluded), and survives a crash: the next
-- holder goes on from `through`.
--
-- remaining: members of the audience not frozen yet, counted in the run's `targeted` and
--   `pending` until their chunk replaces them with what they are (so that the counts add
--   up at every read and a run never looks finished while members are still to come).
CREATE TABLE run_freezes (
    run_id        text    PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    audience_id   text    NOT NULL,
    channel       text    NOT NULL,   -- the campaign's (what `opted_out`, `no_address` mean)
    upto          bigint  NOT NULL,   -- the audience's last position at the start
    through       bigint  NOT NULL,   -- members up to this position are frozen
    next_position bigint  NOT NULL,   -- the run position of the next recipient
    eligible      bigint  NOT NULL,   -- eligible recipients frozen so far (the cap's rank)
    remaining     bigint  NOT NULL CHECK (remaining >= 0),
    capacity      bigint,             -- the run's capacity (NULL: none)
    cap_reason    text                -- the reason of those beyond it
);

-- Outcomes are looked up by status and reason only once written (the API's filtered
-- recipient lists); pending rows have run_recipients_pending. Left whole, this index led the
-- planner, on a run whose rows came in since the last ANALYZE (a chunked freeze's, always),
-- to find each written outcome's row by walking every pending entry of the run (~1 ms a
-- row); partial, it also costs no entry per recipient at the freeze.
DROP INDEX run_recipients_outcome;
CREATE INDEX run_recipients_outcome ON run_recipients (run_id, status, reason, position)
    WHERE status <> 'pending';
