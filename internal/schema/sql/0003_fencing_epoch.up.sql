-- Fencing tokens that never repeat across a failover (package lease).
--
-- A lease's token is the previous token of its name plus one. With asynchronous replication a grant the old
-- primary acknowledged may never reach the standby that is promoted, and the new primary would then hand out
-- the same token again: two holders, one token, and a fenced resource that cannot tell them apart. Every
-- promotion starts a new WAL timeline with a greater id, so a token's high 32 bits carry the timeline the
-- grant was made on, minus one: tokens made on timeline 1 are 1, 2, 3, … as before; the first grant after a
-- promotion to timeline 2 is at least 2^32 + 1, greater than any token timeline 1 can have issued (fewer
-- than 2^32 grants of one name per timeline), replicated or not. Tokens stay strictly increasing per name.
--
-- pgcc.fencing_epoch() returns that floor. The current timeline is the first eight hex digits of the name of
-- the WAL segment being written (pg_walfile_name of pg_current_wal_lsn()), which, unlike the last
-- checkpoint's timeline in pg_control_checkpoint(), changes the moment a promotion ends. Both functions are
-- executable by every role.
CREATE OR REPLACE FUNCTION pgcc.fencing_epoch() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint - 1) << 32 $$;

COMMENT ON FUNCTION pgcc.fencing_epoch() IS
    'Least lease token of the current WAL timeline: (timeline id - 1) << 32. See migration 0003.';
