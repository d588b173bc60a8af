// Package txn runs PostgreSQL transactions that retry what certainly did not commit and may succeed if run
// again, find out (or say) when a commit's outcome is unknown, and surface everything else to the caller.
//
// # Running a transaction
//
// [Run] takes anything that can begin a transaction (a *pgxpool.Pool, a *pgx.Conn, a *pgxpool.Conn, or a
// pgx.Tx for a nested call in a savepoint) and a function that does the work through the pgx.Tx it is given:
//
//	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
//		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, from)
//		return err
//	}, txn.WithIsolation(pgx.Serializable))
//
// It commits when fn returns nil and rolls back when fn returns an error or panics. [RunValue] does the same
// for a function that returns a value.
//
// # Round trips
//
// Across a network, a transaction's latency, and how long it holds its row locks, are counted in round trips.
// Run sends BEGIN in the same round trip as fn's first statement, and [Final] queues fn's last write to
// travel with COMMIT: a read-then-write transaction costs two round trips, half of what BEGIN, read, write,
// COMMIT sent one by one cost. [Last] does the same for the version-checked writes of package repo (a Modify,
// an Update), whose conflict the server then reports at COMMIT. docs/latency.md has the measurements.
//
// # What is retried
//
// PostgreSQL aborts a transaction with SQLSTATE 40001 (serialization_failure) when, under REPEATABLE READ or
// SERIALIZABLE, committing it would contradict a serial order, and with 40P01 (deadlock_detected) when it
// breaks a cycle of lock waits. In both cases the server says the transaction may succeed if run again, so
// Run runs it again: a fresh BEGIN, fn, COMMIT, after a jittered exponential backoff ([Backoff]), up to
// [DefaultMaxAttempts] attempts unless [WithMaxAttempts] says otherwise. [Retryable] is the classifier;
// [RetryLockNotAvailable] adds 55P03 (lock_not_available, from NOWAIT or lock_timeout); [RetryIf] replaces
// the decision.
//
// On a pool, a transaction whose connection failed before COMMIT was sent (a terminated backend, a reset,
// SQLSTATE class 08 or 57P01-57P03, a server restarting and refusing connections, a server out of connection
// slots refusing one with 53300, a server that has become read-only) certainly did not commit, and is
// retried on a fresh connection under the same policy. On a single connection, which cannot be replaced, it
// is a [*pgcc.ConnectionLostError]. The defaults absorb an outage of about 1.1 s; [UnlimitedAttempts] with a
// context deadline waits longer. Everything else, fn's own errors included, is returned at once and
// unchanged.
//
// Only the outermost transaction retries: a conflict aborts the whole transaction, so a savepoint cannot
// recover from it. A nested Run given options that shape a transaction refuses them, and [Outermost] asserts
// that a Run is not nested at all.
//
// # When the commit may have happened
//
// When the connection fails while COMMIT is in flight, the transaction may have committed. Run never retries
// that on its own (and never takes pgx's SafeToRetry as proof that COMMIT was not sent). With
// [WithIdempotencyKey] the key, written by the transaction itself at no extra round trip, settles it: Run
// looks it up and returns nil if the attempt committed, retries if it did not, and refuses a key that already
// committed with [*pgcc.AlreadyAppliedError]. Without a key Run returns [*pgcc.CommitUnknownError], unless fn
// is declared [Idempotent]. [PurgeIdempotencyKeys] deletes expired keys.
//
// # Hooks
//
// [AfterCommit] registers a function to run once the outermost transaction committed (after a lost COMMIT
// reply, only once the key showed that it did); [AfterRollback] one to run when the transaction or savepoint
// rolls back, before a retry, or when the outcome stays unknown.
//
// # Errors
//
// Sentinels (package pgcc) for errors.Is and types for errors.As, each unwrapping to the underlying
// *pgconn.PgError or connection error:
//   - [pgcc.ErrRetriesExhausted], [*pgcc.RetriesExhaustedError]: every attempt failed retryably; it says how
//     many were made, and matches the last attempt's condition too ([pgcc.ErrSerialization],
//     [pgcc.ErrDeadlock], [pgcc.ErrConnectionLost], …).
//   - [pgcc.ErrCommitUnknown], [*pgcc.CommitUnknownError]: the connection failed while COMMIT was in
//     flight and nothing settled whether the transaction committed.
//   - [pgcc.ErrConnectionLost], [*pgcc.ConnectionLostError]: a single connection failed before COMMIT;
//     nothing was committed.
//   - [pgcc.ErrAlreadyApplied], [*pgcc.AlreadyAppliedError]: the idempotency key has already committed.
//   - [*pgcc.InterruptedError]: the context ended; errors.Is(err, context.Canceled) or
//     errors.Is(err, context.DeadlineExceeded) holds, and the last conflict is still reachable.
//   - [pgcc.ErrInvalidArgument]: an option that cannot be honoured; nothing was sent.
//
// An error of fn's own is returned as fn returned it, except that one carrying SQLSTATE 40001, 40P01 or
// 55P03 is wrapped by [pgcc.Classify] so that it matches the condition's sentinel; its message and chain are
// unchanged.
//
// docs/architecture.md shows where txn sits among the other packages, and docs/transactions.md has the
// rules in full: the table of failures, the outage figures, the idempotency key's workings, and why
// pg_xact_status is not used.
package txn
