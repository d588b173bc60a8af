// Package repo gives typed tables over the caller's structs with optimistic concurrency control: every write
// names the version it was read at, and either lands on exactly that version or returns an error that says
// what happened instead. No update is lost, on any path.
//
// # Describing a table
//
// [NewTable] maps a struct to a table as pgx.RowToStructByName does (`db` tags, `db:"-"` skipped, untagged
// fields by their lower-case name) and builds every statement once:
//
//	type Account struct {
//		ID      int64  `db:"id"`
//		Owner   string `db:"owner"`
//		Balance int64  `db:"balance"`
//		Version int64  `db:"version"`
//	}
//	accounts, err := repo.NewTable[Account]("accounts") // key "id", version "version"
//
// Names are quoted with pgx.Identifier.Sanitize, so any name PostgreSQL accepts works; empty names, NUL
// bytes, names longer than 63 bytes and a struct without a field for a key or version column are rejected
// here, with [pgcc.ErrInvalidArgument], not at the first query. [WithKey] names a composite key, [InSchema] a schema,
// [WithVersion] another version column, [WithXmin] the xmin system column for tables without one
// ([VersionKind]), and [WithInsertDefaults] columns filled by their defaults on insert.
//
// # Reading and writing
//
// [Table.Get] reads a row; [Table.Insert] writes a new one at version 1. [Table.Update],
// [Table.UpdateColumns], [Table.Delete] and [Table.ForceIncrement] are compare-and-swap statements:
//
//	UPDATE accounts SET owner = $1, balance = $2, version = version + 1 WHERE id = $3 AND version = $4
//
// one round trip when the row is still at the caller's version, after which the struct carries the new
// version. [Table.UpdateAll] does the same for many rows in one statement, all or nothing. Every method takes
// a [DBTX]: a *pgxpool.Pool, a *pgx.Conn, a pgx.Tx (inside [txn.Run], say) or sqlc's DBTX.
//
// [Table.Modify] is the read-modify-write loop: read, apply the caller's function, write, and on a conflict
// read again and re-apply, with the retry policy of package txn ([txn.Option]: attempts, jittered backoff,
// the context's deadline).
//
// Code with its own SQL (sqlc, hand-written) gets the same errors from [Table.Check], which turns the
// CommandTag of its compare-and-swap statement into nil or a [*pgcc.ConflictError].
//
// # Errors
//
// Sentinels for errors.Is and types for errors.As:
//   - [pgcc.ErrConflict], [*pgcc.ConflictError]: the row is at another version (Actual) than the caller's
//     (Expected), or was deleted (Deleted). Table, Key and Op say where. The message reads
//     `pgcc: conflict updating "accounts" id=42: expected version 7, found 9`.
//   - [*BulkConflictError]: every conflicting row of an [Table.UpdateAll] batch, which was rolled back.
//   - [pgcc.ErrNotFound], [*pgcc.NotFoundError]: [Table.Get] or [Table.Modify] found no row with the key;
//     errors.Is with pgx.ErrNoRows holds too.
//   - [ErrNoVersion]: a write of a row whose version is zero, refused rather than sent unguarded.
//   - [pgcc.ErrInvalidArgument] from [NewTable] and for options and arguments: nothing was sent.
//
// Errors PostgreSQL reports (a unique violation on Insert, a serialization failure inside a REPEATABLE READ
// transaction) are wrapped with the table and key, and errors.As still finds the *pgconn.PgError.
//
// # Honest versions
//
// When a compare-and-swap statement writes nothing, a second statement reads the current version with
// SELECT … FOR SHARE. It runs after the write, and its row lock makes PostgreSQL return the newest committed
// version rather than the one of a snapshot: under READ COMMITTED it waits for a concurrent update or delete
// to finish, and under REPEATABLE READ a row changed after the transaction's snapshot raises a serialization
// failure for the enclosing [txn.Run] to retry rather than report a stale version. If the row turns out to
// be at the expected version after all (it was deleted and inserted again after the write's snapshot), the
// write is sent again, at most three times. docs/optimistic.md has the details.
//
// docs/architecture.md shows where repo sits among the other packages.
package repo
