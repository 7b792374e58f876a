-- Memberships lose their two foreign keys: their per-row triggers (a lookup and a row lock
-- on the audience and on the profile for every inserted member) were most of the cost of
-- a bulk import. What they guaranteed is kept set-based:
-- * deleting profiles or audiences deletes their memberships, once per statement (below);
--   the trigger's DELETE runs after the rows are gone, with a fresh snapshot, so it also
--   sees the members an import committed while the DELETE waited for its row locks;
-- * an import adds members only for profiles it created or updated (so holds locked)
--   in the same transaction, and for an audience it holds (FOR KEY SHARE);
-- * adding existing profiles locks them FOR KEY SHARE, set-based, in the INSERT itself.
ALTER TABLE audience_members
    DROP CONSTRAINT audience_members_audience_id_fkey,
    DROP CONSTRAINT audience_members_profile_id_fkey;

CREATE FUNCTION profiles_delete_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM audience_members m USING gone WHERE m.profile_id = gone.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER profiles_delete_memberships AFTER DELETE ON profiles
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION profiles_delete_memberships();

CREATE FUNCTION audiences_delete_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM audience_members m USING gone WHERE m.audience_id = gone.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER audiences_delete_memberships AFTER DELETE ON audiences
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION audiences_delete_memberships();
