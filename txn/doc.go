// Package txn runs PostgreSQL transactions that retry the conflicts PostgreSQL reports and surface everything
// else to the caller.
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
// # What is retried
//
// PostgreSQL aborts a transaction with SQLSTATE 40001 (serialization_failure) when, under REPEATABLE READ or
// SERIALIZABLE, committing it would contradict a serial order, and with 40P01 (deadlock_detected) when it
// breaks a cycle of lock waits. In both cases the server says the transaction may succeed if run again, so
// Run runs it again: a fresh BEGIN, fn, COMMIT, after a jittered exponential backoff ([Backoff]), up to
// [DefaultMaxAttempts] attempts unless [WithMaxAttempts] says otherwise. [Retryable] is the classifier;
// [RetryLockNotAvailable] adds 55P03 (lock_not_available, from NOWAIT or lock_timeout); [RetryIf] replaces
// the decision. An error pgx proves never reached the server (pgconn.SafeToRetry) is retried too. Everything
// else, including fn's own errors, is returned at once and unchanged.
//
// Only the outermost transaction retries: a conflict aborts the whole transaction, so a savepoint cannot
// recover from it.
//
// # Errors
//
// Sentinels (package pgcc) for errors.Is and types for errors.As, each unwrapping to the underlying
// *pgconn.PgError:
//   - [pgcc.ErrRetriesExhausted], [*pgcc.RetriesExhaustedError]: every attempt conflicted; it says how many
//     were made, and matches the last attempt's condition too ([pgcc.ErrSerialization],
//     [pgcc.ErrDeadlock], …).
//   - [pgcc.ErrCommitUnknown], [*pgcc.CommitUnknownError]: the connection failed while COMMIT was in
//     flight, so the transaction may have committed. It is not retried unless fn is declared [Idempotent].
//   - [*pgcc.InterruptedError]: the context ended; errors.Is(err, context.Canceled) or
//     errors.Is(err, context.DeadlineExceeded) holds, and the last conflict is still reachable.
//   - [pgcc.ErrInvalidArgument]: an option that cannot be honoured; nothing was sent.
//
// An error of fn's own is returned as fn returned it, except that one carrying SQLSTATE 40001, 40P01 or
// 55P03 is wrapped by [pgcc.Classify] so that it matches the condition's sentinel; its message and chain are
// unchanged.
//
// docs/architecture.md shows where txn sits among the other packages, and docs/transactions.md has the
// rules in full.
package txn
