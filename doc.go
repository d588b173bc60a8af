// Package pgcc is the shared vocabulary of a library that gives service code on PostgreSQL correct
// concurrency control, on native pgx v5. It holds no SQL; the work is done by its subpackages:
//
//   - [github.com/pgcc/pgcc/txn]: transactions that retry what certainly did not commit and may succeed
//     if run again (serialization failures, deadlocks, a connection lost before COMMIT), settle a lost
//     COMMIT reply with an idempotency key, and surface everything else.
//   - [github.com/pgcc/pgcc/repo]: optimistic concurrency, a version-column compare-and-swap on typed
//     tables, with conflict errors that say which table, key and versions.
//   - [github.com/pgcc/pgcc/lock]: pessimistic concurrency: row locks and advisory locks, with errors that
//     say which lock and who holds it.
//   - [github.com/pgcc/pgcc/lease]: named, time-bounded ownership with fencing tokens.
//   - [github.com/pgcc/pgcc/migrations]: the library's own schema ("pgcc"), applied with golang-migrate.
//
// # The shared words
//
// Every package takes database handles as a [DBTX] (single statements) or a [Beginner] (transactions), so a
// *pgxpool.Pool, a *pgx.Conn, a pgx.Tx and sqlc's DBTX all fit where they make sense; identifies rows by a
// [Key]; and reports each condition with one sentinel, matched with errors.Is whichever package raised it:
// [ErrConflict], [ErrNotFound], [ErrLockNotAvailable], [ErrDeadlock], [ErrSerialization],
// [ErrRetriesExhausted], [ErrCommitUnknown], [ErrInvalidArgument] and the others below. Typed errors
// ([*ConflictError], [*LockError], [*CommitUnknownError], …) carry the details for errors.As and unwrap to
// the *pgconn.PgError whenever PostgreSQL reported one. [Classify] gives errors of the caller's own pgx
// calls the same matching.
//
// # Observing
//
// An [Observer] receives what the packages see happen: each transaction attempt ([AttemptEvent]), each
// optimistic conflict ([ConflictEvent]), each lock wait ([LockWaitEvent]) and each lease event
// ([LeaseEvent]). It is attached with txn.WithObserver (and labelled with txn.WithLabel), or with the
// observer options of repo, lock and lease; [NewSlogObserver] logs the events, and the module
// github.com/pgcc/pgcc/otel records them as OpenTelemetry metrics and spans. Nothing attached costs a nil
// check. docs/observability.md shows how to read them.
//
// docs/architecture.md has the layering (which package may import which) and says where new things go.
package pgcc
