// Package lock is pessimistic concurrency control on PostgreSQL: row locks, advisory locks and leases with
// fencing tokens, each a typed, context-aware call whose failure says which lock it was and who held it.
//
// # Row locks
//
// [Rows], [Row] and [Load] lock rows of a [Table] by key inside the caller's transaction, with a [Strength]
// (FOR UPDATE by default) and a [WaitPolicy] (wait, NOWAIT, SKIP LOCKED):
//
//	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
//		accounts, err := lock.Load[Account](ctx, tx, accountsTable, []pgcc.Key{{from}, {to}})
//		if err != nil {
//			return err
//		}
//		// … both rows are ours until COMMIT …
//	})
//
// Several rows are locked by one statement in ascending key order (ORDER BY the key columns, which PostgreSQL
// applies before locking), whatever order the caller lists them in. Two transactions locking overlapping
// sets through this package therefore take the shared rows in the same order and cannot deadlock each other.
//
// [Claim] is the work-queue pattern: FOR UPDATE SKIP LOCKED with a LIMIT, so concurrent workers take disjoint
// batches.
//
// # Advisory locks
//
// [XactLock] and [TryXactLock] take an advisory lock until the transaction ends; [SessionLock] and
// [TrySessionLock] pin a pool connection and hold the lock until [Held.Release], which returns the connection
// to the pool only once PostgreSQL confirmed the unlock (otherwise the connection is closed, and the lock dies
// with its session). [StringKey] makes a key from a namespace and a name with a fixed hash (FNV-1a, 64 bits).
//
// # Waiting, deadlines and cancellation
//
// A lock request waits as long as its context allows. A deadline is sent as lock_timeout for that one
// statement (in the same round trip, and restored after it), and [WithTimeout] sets an explicit bound; the
// sooner of the two applies. Cancellation does not close the connection, as pgx does by default: the request
// asks the server to cancel the waiting statement and returns when it has (typically within milliseconds), so
// the connection stays usable; the caller's transaction is aborted and must be rolled back, as after any
// error. If the server does not answer the cancel request within two seconds, the connection is closed.
//
// # Errors
//
// A lock that was not granted is a [*pgcc.LockError] naming the table and keys (or the advisory key):
//   - errors.Is(err, [pgcc.ErrLockNotAvailable]): NOWAIT, lock_timeout or a context deadline (SQLSTATE
//     55P03);
//   - errors.Is(err, [pgcc.ErrDeadlock]): PostgreSQL aborted the transaction to break a deadlock (40P01),
//     which txn.Run retries;
//   - errors.Is(err, context.Canceled) or context.DeadlineExceeded: the context ended during the wait.
//
// errors.As finds the *pgconn.PgError in every case the server reported one. With [WithDiagnostics], the
// error also lists the sessions holding the lock ([pgcc.Blocker]: pid, application, state, query, how long
// their transaction has run), looked up after the failure on the handle given: the transactions whose id is
// the locked rows' xmax (row locks), or the holders pg_locks shows (advisory locks).
//
// [Row] on a missing row is a [*pgcc.NotFoundError]; every option or argument that cannot be honoured is an
// error matching [pgcc.ErrInvalidArgument], returned before anything is sent. Leases, which outlive
// transactions and connections, are package lease.
//
// docs/architecture.md shows where lock sits among the other packages: it imports no other pgcc package
// but the shared vocabulary, locks repo tables through its own [Table] interface, and takes transactions as
// pgx.Tx, so it composes with txn.Run for retries.
package lock
