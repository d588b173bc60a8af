// Package lock is pessimistic concurrency control on PostgreSQL: row locks and advisory locks, each a typed,
// context-aware call whose failure says which lock it was and who held it. Leases, which outlive transactions
// and connections, are package lease.
//
// # Row locks
//
// [Load], [Rows] and [Row] lock rows of a table by key inside the caller's transaction; [Select] locks the rows
// a predicate chooses; [Claim] takes a batch of a work queue. The table is a [Table]: a *repo.Table[T], a
// [*TableDef] from [NewTable] (for tables without a version column, such as queues), or any type returning
// constants. Load, Select and Claim take a [TableOf], so the row type is inferred from the table:
//
//	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
//		rows, err := lock.Load(ctx, tx, accounts, []pgcc.Key{{from}, {to}})
//		if err != nil {
//			return err // *pgcc.LockError, or a *lock.MissingError listing keys without a row
//		}
//		// rows[0] is account from, rows[1] account to; both are ours until COMMIT
//	})
//
// Rows come back in the order asked, one per key; a key without a row is a [*MissingError] (errors.Is
// [pgcc.ErrNotFound]) unless [AllowMissing]. Locking, though, happens in ascending key order whatever the
// order asked, in one statement: two transactions locking overlapping sets through this package take the
// shared rows in the same order and cannot deadlock each other. Any number of keys of any number of columns is
// one statement with one typed array per key column, which works with every pgx query exec mode and behind
// PgBouncer.
//
// # Read-modify-write in two round trips
//
// [Update] and [ClaimAndUpdate] run the whole pessimistic pattern as a transaction of their own (txn.Run):
// lock a row by key (or claim a batch of a queue with SKIP LOCKED), hand it to a Go function, write the
// columns the function changed, commit. Because they know their write is the last statement, it travels with
// COMMIT ([txn.Final]) and BEGIN with the lock statement: two round trips instead of four, and a row lock held
// for one round trip instead of two. A write the server refuses commits nothing and is a [*WriteError] naming
// the table and keys:
//
//	acct, err := lock.Update(ctx, pool, accounts, pgcc.Key{id}, func(ctx context.Context, a *Account) error {
//		if a.Balance < amount {
//			return fmt.Errorf("account %d has %d", a.ID, a.Balance) // rolled back, nothing written
//		}
//		a.Balance -= amount
//		return nil
//	})
//
// # Strength
//
// The default [Strength] is [ForNoKeyUpdate], what PostgreSQL itself takes for an UPDATE that leaves the key
// alone, and what Hibernate's PESSIMISTIC_WRITE is on PostgreSQL. It does not conflict with the FOR KEY SHARE
// locks that foreign-key checks take, so a transaction that inserts a child row (an order referencing two
// accounts) and then locks the parents cannot deadlock with another doing the same, which [ForUpdate] would:
// keep ForUpdate for transactions that delete the rows or change their key. docs/pessimistic.md shows the
// trap and the measurements.
//
// # Advisory locks
//
// [XactLock] and [TryXactLock] take an advisory lock until the transaction ends; [SessionLock] and
// [TrySessionLock] pin a pool connection and hold the lock until [Held.Release]. A session lock needs a server
// session of its own: through a pooler in transaction mode it is refused with [pgcc.ErrTransactionPooling].
// [Held.Lost] is closed when the lock is found lost (its connection died), so work protected by it can stop.
// [StringKey] makes a key from a namespace and a name with a fixed, documented hash; docs/pessimistic.md maps
// the key space (pgcc's and golang-migrate's keys) and says how to choose keys that cannot collide with them.
//
// # Waiting, deadlines and cancellation
//
// A lock request waits as long as its context allows. The statement's lock_timeout is the least of the
// context's deadline and the lock_timeout in force (or [WithTimeout], which replaces it for the statement),
// computed by the server in the same round trip as the statement and restored after it: a shorter SET LOCAL
// lock_timeout of the caller's transaction still applies. The server is asked to end the wait a few
// milliseconds before the deadline, so its answer is back in time; a connection that has not answered
// 20 milliseconds after the deadline ([DeadlineGrace]) is closed, and the call returns. A deadline further
// than lock_timeout's range (about 24.8 days) is left to the context.
//
// Cancellation does not close the connection, as pgx does by default: the request asks the server to cancel
// the waiting statement and returns when it has (typically within milliseconds), so the connection stays
// usable; the caller's transaction is aborted and must be rolled back, as after any error. If the server does
// not acknowledge the cancel request and end the statement within [CancelGrace], the connection is closed: a
// cancel request still on its way could otherwise cancel the next statement.
//
// # Errors
//
// A lock that was not granted is a [*pgcc.LockError] naming the table and keys (or the advisory key):
//   - errors.Is(err, [pgcc.ErrLockNotAvailable]): NOWAIT, a lock_timeout, or a deadline the server ended the
//     wait for (SQLSTATE 55P03);
//   - errors.Is(err, [pgcc.ErrDeadlock]): PostgreSQL aborted the transaction to break a deadlock (40P01),
//     which txn.Run retries;
//   - errors.Is(err, context.Canceled) or context.DeadlineExceeded: the context ended the wait. A NOWAIT
//     refusal or a lock_timeout that ran out before the deadline never matches context.DeadlineExceeded.
//
// errors.As finds the *pgconn.PgError in every case the server reported one. With [WithDiagnostics], the
// error also lists the sessions holding the lock ([pgcc.Blocker]), found after the failure on the handle
// given: the transactions whose id is the locked rows' xmax, resolving a MultiXact xmax (rows locked by
// several transactions, foreign-key checks included) into its members, or the holders pg_locks shows for an
// advisory key. Backends are named by their pid as the server reports it (pg_backend_pid()), also behind a
// pooler.
//
// Every option or argument that cannot be honoured, every nil handle (typed nils included), table
// description, key value or name PostgreSQL would not keep as given is an error matching
// [pgcc.ErrInvalidArgument] that names it, returned before anything is sent; the "Bad input" section of
// docs/reliability.md lists them.
//
// docs/architecture.md shows where lock sits among the other packages: it imports no other pgcc package but
// the shared vocabulary and txn (whose Run and Final [Update] and [ClaimAndUpdate] use), locks repo tables through its own [Table] interface, and takes transactions as
// pgx.Tx, so it composes with txn.Run for retries.
package lock
