// Package pgcc is the root of a library that gives service code on PostgreSQL correct concurrency control,
// on native pgx v5. This package holds no code; the work is done by its subpackages:
//
//   - [github.com/pgcc/pgcc/txn]: transactions that retry what PostgreSQL reports as retryable
//     (serialization failures, deadlocks) and surface everything else.
//   - [github.com/pgcc/pgcc/repo]: optimistic concurrency, a version-column compare-and-swap on typed
//     repositories, with conflict errors that say which table, key and versions.
//   - [github.com/pgcc/pgcc/lock]: pessimistic concurrency: row locks, advisory locks, and leases with
//     fencing tokens, with errors that say which lock and who holds it.
//   - [github.com/pgcc/pgcc/migrations]: the library's own schema ("pgcc"), applied with golang-migrate.
//
// # Layering
//
// Each package builds only on the ones before it:
//
//	migrations   (golang-migrate, pgx)
//	txn          (pgx, pgerrcode)
//	repo      -> txn
//	lock         (pgx, pgerrcode; locks repo tables through its lock.Table interface)
//	cmd/pgcc  -> internal/bench, internal/inspect -> txn, repo, lock
//
// internal/pgtest, the test harness, uses migrations to build the template database every test database is
// cloned from. docs/architecture.md explains the layers and where new lock or version kinds belong.
package pgcc
