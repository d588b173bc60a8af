// Package lease grants named, time-bounded ownership recorded in the table pgcc.leases, with fencing tokens:
// one batch job per project at a time, one leader among replicas, work that spans many transactions and
// must not run twice at once.
//
// # Using a lease
//
// Apply the pgcc schema first (package migrations: migrations.Up, or `pgcc migrate`); without it every call
// fails with a message that says so. Then:
//
//	leases := lease.New(pool)
//	l, err := leases.TryAcquire(ctx, "nightly-totals", hostname, time.Minute)
//	if errors.Is(err, pgcc.ErrHeld) {
//		return nil // someone else runs it
//	}
//	defer l.Release(ctx)
//	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
//		if err := lease.Guard(ctx, tx, l.Name, l.Token); err != nil {
//			return err // pgcc.ErrFenced: the lease was lost; stop
//		}
//		// … writes protected by the lease …
//	})
//
// [Leases.TryAcquire] returns [*HeldError] (errors.Is [pgcc.ErrHeld]) with the holder and its times,
// [Leases.Acquire] waits, and [Lease.Renew] and [Lease.Release] act on one grant. Every grant has a fencing
// token, strictly increasing per name; [Guard] checks it inside the transaction that writes under the lease,
// so a holder that paused past its expiry cannot write after another has taken over. Expiry is decided by the
// database's clock, never the caller's.
//
// # Layering
//
// lease depends on pgx, the shared vocabulary of package pgcc and the table pgcc.leases that package
// migrations creates. [Guard] waits for the lease row the way package lock waits for rows.
package lease
