// Package lease grants named, time-bounded ownership recorded in the table pgcc.leases, with fencing tokens:
// one batch job per project at a time, one leader among replicas, work that spans many transactions and
// must not run twice at once.
//
// # The table
//
// Leases are the one pgcc feature that needs pgcc's schema. Apply it once per database, typically at
// start-up, with package migrations (safe to call from every replica at once):
//
//	if err := migrations.Up(ctx, pool); err != nil {
//		return err
//	}
//
// or apply migrations.FS() with your own golang-migrate tooling (version table pgcc.schema_migrations).
// Without it every call fails with an error that says to run migrations.Up and wraps the server's
// "relation "pgcc.leases" does not exist" (SQLSTATE 42P01).
//
// # Using a lease
//
//	leases := lease.New(pool)
//	l, err := leases.TryAcquire(ctx, "nightly-totals", hostname, time.Minute)
//	if errors.Is(err, pgcc.ErrHeld) {
//		return nil // someone else runs it
//	}
//	defer l.Release(ctx)
//	work, keeper := l.Keep(ctx) // renews every TTL/3; cancels work when the lease is lost
//	defer keeper.Stop()
//	err = txn.Run(work, pool, func(ctx context.Context, tx pgx.Tx) error {
//		if err := lease.Guard(ctx, tx, l.Name, l.Token); err != nil {
//			return err // pgcc.ErrFenced: the lease was lost; stop
//		}
//		// … writes protected by the lease …
//	})
//
// [Leases.TryAcquire] returns [*HeldError] (errors.Is [pgcc.ErrHeld]) with the holder and its times,
// [Leases.Acquire] waits, and [Lease.Renew] and [Lease.Release] act on one grant. [Lease.Keep] renews in the
// background and cancels the work's context the moment the lease can no longer be trusted: a renewal found
// it taken over or expired, or renewals failed until the grant may end (the context is cancelled a tenth of
// the TTL before that). Every grant has a fencing token, strictly increasing per name; [Guard] checks it
// inside the transaction that writes under the lease, so a holder that paused past its expiry cannot write
// after another has taken over. Expiry is decided by the database's clock, never the caller's.
//
// # Connection failures
//
// A lease's own statements run autocommitted on the handle given to [New]. A connection that could not be made
// is pgcc.ErrConnectionLost; one that failed after the statement was sent is pgcc.ErrCommitUnknown (the grant,
// renewal or release may have been applied). On a pool, [Leases.Acquire] and [Lease.Release] try again on
// another connection, with a backoff, until they succeed or their context ends; a Release retried after a lost
// reply that finds the lease expired under its own token, the lost attempt having been sent while the grant was
// trusted, counts as released, and one that finds another token is a [*FencedError]. [Leases.TryAcquire] and
// [Lease.Renew] make one attempt ([Lease.Keep] retries renewals), and so does everything on a single
// connection or inside a transaction.
//
// Names and holders are non-empty valid UTF-8 without NUL bytes, at most [MaxNameBytes] long; TTLs are at least
// a millisecond. Anything else, and a nil handle (typed nils included), is refused with an error matching
// [pgcc.ErrInvalidArgument] before anything is sent.
//
// # Layering
//
// lease depends on pgx, the shared vocabulary of package pgcc and the table pgcc.leases that package
// migrations creates. [Guard] waits for the lease row the way package lock waits for rows.
package lease
