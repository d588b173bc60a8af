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
// bytes, names longer than 63 bytes, a struct without a field for a key or version column, and a version field
// of a type that could wrap around (anything narrower than 64 bits for a counter) are rejected here, with
// [pgcc.ErrInvalidArgument], not at the first query. [WithKey] names a composite key, [InSchema] a schema,
// [WithVersion] another version column, [WithXmin] the xmin system column for tables without one,
// [WithTimestampVersion] an updated_at column ([VersionKind]), and [WithInsertDefaults] columns filled by
// their defaults on insert.
//
// # Reading and writing
//
// [Table.Get] reads a row; [Table.Insert] writes a new one at version 1 (or the database's clock for a
// timestamp version). [Table.Update], [Table.UpdateColumns], [Table.Delete] and [Table.ForceIncrement] are
// compare-and-swap statements, one round trip when the row is still at the caller's version, after which the
// struct carries the new version. The version changes only when a value does: a no-op save leaves it alone,
// so that it does not make every other holder of the row conflict. [SkipVersionCheck] and [KeepVersion] relax
// the defaults for writes that mean it. A row at version 0 (Rails, JPA and `ADD COLUMN version … DEFAULT 0`
// start there) is an ordinary row, and a NULL version reads as 0 and is written as 1.
//
// [Table.UpdateAll] does the same for any number of rows in one statement, all or nothing.
// [Table.InsertOrGet] is the get-or-create that holds under concurrency, and [Table.Upsert] creates a new row
// or updates an existing one at its version. Every method takes a [pgcc.DBTX]: a *pgxpool.Pool, a *pgx.Conn,
// a pgx.Tx (inside [txn.Run], say) or sqlc's DBTX.
//
// [Table.Modify] is the read-modify-write loop: read, apply the caller's function, write, and on a conflict
// read again and re-apply, with the retry policy of package txn ([txn.Option]: attempts, jittered backoff,
// the context's deadline) and defaults measured for it ([DefaultModifyAttempts]).
//
// Code with its own SQL (sqlc, hand-written) gets the same errors from [Table.Check], which turns the
// CommandTag of its compare-and-swap statement into nil or a [*pgcc.ConflictError].
//
// # Rollbacks and retries
//
// A write inside [txn.Run] sets the struct's version when the statement succeeds, before the transaction
// commits. If the transaction, a savepoint of a nested Run, or an attempt that Run retries is rolled back, the
// version is put back (through [txn.AfterRollback]), so that the struct never keeps a version the database did
// not commit and a retried attempt does not conflict with itself. A pgx.Tx that Run did not give has no such
// hook: after rolling it back, read the rows again.
//
// # Keys
//
// Key values passed to Get, Modify and Check must convert to their key fields' types without loss: 3.9 for an
// integer key is refused, never truncated to row 3. A key field edited after the row was read retargets a
// write to the row with the new key; embed [Tracked] in the struct to have such a write refused.
//
// # Hot rows
//
// A row that many clients change at once is bounded by one commit per change. [Table.Add] changes an integer
// column in one statement without a read, with [AtLeast] and [AtMost] guards ([*GuardError] when one fails).
// A [Combiner] ([Table.Combine]) applies the concurrent [Combiner.Modify] calls of one key in this process
// in one transaction: one locked read, every caller's function in turn, one write, one commit. Pure counters
// that nobody bounds belong in package counter. docs/optimistic.md measures all three.
//
// # HTTP
//
// [ETag] and [ParseETag] carry a version through ETag and If-Match headers (weak tags accepted), and
// [pgcc.HTTPStatus] maps every error to its status: 412 for a stale version, 428 for a missing If-Match, 423
// for a lock someone else holds, 409 for conflicts retries could not resolve.
//
// # Errors
//
// Sentinels for errors.Is and types for errors.As:
//   - [pgcc.ErrConflict], [*pgcc.ConflictError]: the row is at another version (Actual) than the caller's
//     (Expected), or was deleted (Deleted). Table, Key and Op say where; timestamp versions also come as
//     ExpectedTime and ActualTime. The message reads
//     `pgcc: conflict updating "accounts" id=42: expected version 7, found 9`.
//   - [*BulkConflictError]: every conflicting row of an [Table.UpdateAll] batch, which was rolled back.
//   - [pgcc.ErrNotFound], [*pgcc.NotFoundError]: [Table.Get] or [Table.Modify] found no row with the key, or
//     a write with [SkipVersionCheck] found none; errors.Is with pgx.ErrNoRows holds too.
//   - [pgcc.ErrInvalidArgument] from [NewTable] and for options and arguments (a nil handle, typed nils
//     included; a nil table or row; a key value of the wrong type; a changed [Tracked] key): nothing was sent,
//     and the message names the argument. docs/reliability.md ("Bad input") lists every case.
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
