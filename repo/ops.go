package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
	"github.com/pgcc/pgcc/txn"
)

// maxRewrites bounds how often a write is sent again when its conflict turned out to be a replaced row at the
// expected version (see [ConflictError]): the row was deleted and inserted again between the write's snapshot
// and the follow-up read. Three sends make a spurious conflict vanishingly unlikely without looping forever
// on a table that replaces rows in a tight loop.
const maxRewrites = 3

// Get reads the row with the given key, one value per key column in key order. No such row is a
// [*pgcc.NotFoundError] (errors.Is [pgcc.ErrNotFound]). ctx governs the query.
func (t *Table[T]) Get(ctx context.Context, db pgcc.DBTX, key pgcc.Key) (T, error) {
	var row T
	if len(key) != len(t.d.key) {
		return row, t.keyCountError(len(key))
	}
	v := reflect.ValueOf(&row).Elem()
	dest := make([]any, len(t.fields))
	for i, f := range t.fields {
		dest[i] = v.FieldByIndex(f.index).Addr().Interface()
	}
	if err := db.QueryRow(ctx, t.sql.get, []any(key)...).Scan(dest...); err != nil {
		var zero T
		if errors.Is(err, pgx.ErrNoRows) {
			return zero, &pgcc.NotFoundError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: append(pgcc.Key(nil), key...)}
		}
		return zero, fmt.Errorf("pgcc: get %s %s: %w", t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	}
	return row, nil
}

// Insert inserts row and sets its version: 1 for a [VersionCounter] table, whatever the version field held,
// or the new xmin. Columns named by [WithInsertDefaults] are left to their defaults and read back into row.
// A unique violation is returned as PostgreSQL reported it (errors.As finds the *pgconn.PgError, SQLSTATE
// 23505). ctx governs the statement.
func (t *Table[T]) Insert(ctx context.Context, db pgcc.DBTX, row *T) error {
	if row == nil {
		return fmt.Errorf("%w: Insert into %s of a nil row", pgcc.ErrInvalidArgument, t.quoted)
	}
	v := reflect.ValueOf(row).Elem()
	args := t.values(make([]any, 0, len(t.sql.insertArgs)), v, t.sql.insertArgs)
	var err error
	if len(t.sql.insertRet) == 0 {
		_, err = db.Exec(ctx, t.sql.insert, args...)
	} else {
		// Scan into copies, so that a failed insert leaves row as it was.
		dest := make([]any, len(t.sql.insertRet))
		vals := make([]reflect.Value, len(t.sql.insertRet))
		for i, pos := range t.sql.insertRet {
			vals[i] = reflect.New(t.fields[pos].typ)
			dest[i] = vals[i].Interface()
		}
		if err = db.QueryRow(ctx, t.sql.insert, args...).Scan(dest...); err == nil {
			for i, pos := range t.sql.insertRet {
				v.FieldByIndex(t.fields[pos].index).Set(vals[i].Elem())
			}
		}
	}
	if err != nil {
		return fmt.Errorf("pgcc: insert into %s: %w", t.quoted, err)
	}
	if t.d.kind == VersionCounter {
		setInt(v.FieldByIndex(t.version.index), 1)
	}
	return nil
}

// Update writes every column of row except the key and the version, provided the row in the database is
// still at row's version, and on success sets row's version to the new one. One statement on the happy path.
//
// When nothing was written, a second statement reads the row's current version (SELECT … FOR SHARE, which
// sees the newest committed version even where the UPDATE's snapshot could not) and Update returns a
// [*pgcc.ConflictError] (errors.Is [pgcc.ErrConflict]) with the version found, or with Deleted set when the row is
// gone. row is then unchanged. A row whose version is zero is refused with [ErrNoVersion] and nothing is sent.
// Outside a transaction, a write whose connection failed after it was sent is a [*pgcc.CommitUnknownError]
// (it may have been applied; row is unchanged). ctx governs both statements.
func (t *Table[T]) Update(ctx context.Context, db pgcc.DBTX, row *T) error {
	return t.write(ctx, db, row, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, true)
}

// UpdateColumns is [Table.Update] for the named columns only (their column names, as tagged): the others
// keep whatever the database holds. It is guarded by the version as Update is, and bumps it the same way. A
// key column, the version column or a column T does not map is an error matching [pgcc.ErrInvalidArgument]. The
// statement for each list of columns is built once and cached in t.
func (t *Table[T]) UpdateColumns(ctx context.Context, db pgcc.DBTX, row *T, cols ...string) error {
	ps, err := t.partialStmt(cols)
	if err != nil {
		return err
	}
	return t.write(ctx, db, row, pgcc.OpUpdate, ps.sql, ps.set, true)
}

// Delete deletes row provided it is still at row's version. A conflict is reported as [Table.Update]
// reports it; a row someone else deleted first is a [*pgcc.ConflictError] with Deleted set. ctx governs the
// statements.
func (t *Table[T]) Delete(ctx context.Context, db pgcc.DBTX, row *T) error {
	return t.write(ctx, db, row, pgcc.OpDelete, t.sql.delete, nil, false)
}

// ForceIncrement gives row a new version without changing any value, provided it is still at row's version
// (JPA's OPTIMISTIC_FORCE_INCREMENT): a write to a child row can so invalidate every copy of its aggregate
// root that others hold. For a [VersionXmin] table it rewrites the row unchanged, which gives it a new xmin.
// Conflicts are reported as [Table.Update] reports them. ctx governs the statements.
func (t *Table[T]) ForceIncrement(ctx context.Context, db pgcc.DBTX, row *T) error {
	return t.write(ctx, db, row, pgcc.OpForceIncrement, t.sql.force, nil, true)
}

// write runs one compare-and-swap statement whose parameters are the columns at set, the key and the
// expected version, and on a conflict reads the current version for the error (see [Table.probe]).
func (t *Table[T]) write(ctx context.Context, db pgcc.DBTX, row *T, op, sql string, set []int, bumps bool) error {
	for n := 1; ; n++ {
		written, expected, err := t.send(ctx, db, row, op, sql, set, bumps)
		if err != nil || written {
			return err
		}
		v := reflect.ValueOf(row).Elem()
		actual, found, err := t.probe(ctx, db, t.keyArgs(nil, v))
		if err != nil {
			return fmt.Errorf("pgcc: %s %s %s: reading the current version after a conflict: %w", op, t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err)
		}
		if found && actual == expected && n < maxRewrites {
			continue // the row was replaced at the same version after the write's snapshot: write again
		}
		return t.conflict(op, v, expected, actual, found)
	}
}

// send sends one compare-and-swap statement for row and reports whether it wrote the row, and the version it
// compared with. On success it sets row's version to the new one (when bumps).
func (t *Table[T]) send(ctx context.Context, db pgcc.DBTX, row *T, op, sql string, set []int, bumps bool) (bool, int64, error) {
	if row == nil {
		return false, 0, fmt.Errorf("%w: %s of a nil row in %s", pgcc.ErrInvalidArgument, op, t.quoted)
	}
	v := reflect.ValueOf(row).Elem()
	vf := v.FieldByIndex(t.version.index)
	expected := getInt(vf)
	if expected == 0 {
		return false, 0, fmt.Errorf("%w: %s of %s %s: the version field is zero; read the row first", ErrNoVersion, op, t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)))
	}
	args := t.values(make([]any, 0, len(set)+len(t.d.key)+1), v, set)
	args = t.keyArgs(args, v)
	args = append(args, expected)
	written, version, err := t.exec(ctx, db, sql, args, bumps)
	if err != nil {
		err = fmt.Errorf("pgcc: %s %s %s: %w", op, t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err)
		if _, inTx := db.(pgx.Tx); !inTx && pgfail.Classify(err, pgfail.Commit) == pgfail.Unknown {
			err = &pgcc.CommitUnknownError{Attempts: 1, Err: err} // autocommitted, and it may have been applied
		}
		return false, expected, err
	}
	if written && bumps {
		if t.d.kind == VersionCounter {
			version = expected + 1
		}
		setInt(vf, version)
	}
	return written, expected, nil
}

// conflict is the error of a compare-and-swap on v (a T) that found the row at actual, or gone.
func (t *Table[T]) conflict(op string, v reflect.Value, expected, actual int64, found bool) *pgcc.ConflictError {
	return &pgcc.ConflictError{Table: t.quoted, Op: op, KeyColumns: t.KeyColumns(), Key: t.keyValues(v),
		Expected: expected, Actual: actual, Deleted: !found}
}

// exec runs a compare-and-swap statement and reports whether it wrote the row and, when the statement
// returns it (xmin tables), the new version.
func (t *Table[T]) exec(ctx context.Context, db pgcc.DBTX, sql string, args []any, bumps bool) (bool, int64, error) {
	if !bumps || t.d.kind == VersionCounter {
		tag, err := db.Exec(ctx, sql, args...)
		return err == nil && tag.RowsAffected() > 0, 0, err
	}
	var version int64
	err := db.QueryRow(ctx, sql, args...).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, 0, nil
	}
	return err == nil, version, err
}

// probe reads the current version of the row with key, locking it FOR SHARE. The lock makes PostgreSQL
// return the newest committed row version, not the one of the statement's snapshot: under READ COMMITTED it
// waits for a transaction updating or deleting the row and then reads what it committed, and under
// REPEATABLE READ a row changed since the transaction's snapshot is a serialization failure (SQLSTATE 40001)
// for the caller's txn.Run to retry, never a stale version reported as current. FOR KEY SHARE would not do:
// it does not conflict with an UPDATE that leaves the key alone, so under REPEATABLE READ it returns the
// snapshot's version. Outside a transaction the lock ends with the statement; inside one it is held to the
// end, which only delays others' writes to a row this transaction was about to write anyway.
func (t *Table[T]) probe(ctx context.Context, db pgcc.DBTX, key []any) (version int64, found bool, err error) {
	err = db.QueryRow(ctx, t.sql.probe, key...).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return version, err == nil, err
}

// Check turns the result of the caller's own compare-and-swap statement (sqlc, hand-written SQL) into the
// errors of this package. tag is what Exec returned for a statement like
//
//	UPDATE accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3
//
// key is the row's key and expected the version the statement compared with. When tag says a row was
// written Check returns nil without a query. Otherwise it reads the row's current version as [Table.Update]
// does and returns a [*pgcc.ConflictError] with Op [pgcc.OpCheck]: Deleted when the row is gone, Actual otherwise.
// Actual may equal expected when the row was replaced at the same version after the statement's snapshot:
// the statement may then succeed if run again, and [Table.Modify] does so. An expected version of zero is
// [ErrNoVersion]. ctx governs the query.
func (t *Table[T]) Check(ctx context.Context, db pgcc.DBTX, tag pgconn.CommandTag, key pgcc.Key, expected int64) error {
	if tag.RowsAffected() > 0 {
		return nil
	}
	if len(key) != len(t.d.key) {
		return t.keyCountError(len(key))
	}
	if expected == 0 {
		return fmt.Errorf("%w: checking %s %s: expected version is zero", ErrNoVersion, t.quoted, pgcc.FormatKey(t.keyCols, key))
	}
	actual, found, err := t.probe(ctx, db, key)
	if err != nil {
		return fmt.Errorf("pgcc: checking %s %s: %w", t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	}
	return &pgcc.ConflictError{Table: t.quoted, Op: pgcc.OpCheck, KeyColumns: t.KeyColumns(), Key: append(pgcc.Key(nil), key...), Expected: expected, Actual: actual, Deleted: !found}
}

// Modify is an optimistic read-modify-write: it reads the row with key, calls fn to change it, and writes
// it back with [Table.Update]. When the write conflicts it starts again from a fresh read, so fn must be safe
// to call more than once and must decide from the row it is given. It returns the row as stored.
//
// The retry policy is [txn.Retry]'s, configured by opts: attempts ([txn.WithMaxAttempts], default
// [txn.DefaultMaxAttempts]), jittered backoff ([txn.WithBackoff]) and the context's deadline. By default it
// retries [pgcc.ErrConflict] and, when db is not a transaction, what [txn.Retryable] accepts; inside a pgx.Tx a
// serialization failure or deadlock aborts the transaction, so it is returned for the owner of the
// transaction (say, an enclosing [txn.Run]) to retry. On a pool it also retries a connection failure, the next
// attempt getting another connection, but never a write whose outcome is unknown ([pgcc.ErrCommitUnknown]).
// [txn.RetryIf] replaces that decision.
//
// fn's own error is returned unchanged and ends the loop. When attempts run out, the error is a
// *pgcc.RetriesExhaustedError, for which errors.Is(err, pgcc.ErrConflict) still holds. A missing row is a
// [*pgcc.NotFoundError]. Transaction-shaping options (isolation, timeouts) match [pgcc.ErrInvalidArgument]. ctx governs
// every statement and every sleep, and is passed to fn.
func (t *Table[T]) Modify(ctx context.Context, db pgcc.DBTX, key pgcc.Key, fn func(ctx context.Context, row *T) error, opts ...txn.Option) (T, error) {
	var out T
	if fn == nil {
		return out, fmt.Errorf("%w: Modify of %s needs a function", pgcc.ErrInvalidArgument, t.quoted)
	}
	if len(key) != len(t.d.key) {
		return out, t.keyCountError(len(key))
	}
	retry := retryConflictOrRetryable
	if _, inTx := db.(pgx.Tx); inTx {
		retry = retryConflict
	} else if pgfail.Reconnects(db) {
		retry = retryConflictRetryableOrLost
	}
	all := make([]txn.Option, 0, len(opts)+1)
	all = append(append(all, txn.RetryIf(retry)), opts...)
	// After a conflict the row is read once: that read is both the actual version the error reports and the
	// starting point of the next attempt. A plain read is honest here, unlike after a bare Update: outside a
	// transaction, and inside a READ COMMITTED one, it is a new snapshot taken after the UPDATE saw the newer
	// version committed; inside a REPEATABLE READ or SERIALIZABLE one, a concurrent change makes the UPDATE
	// fail with a serialization error instead of matching no row.
	var next *T
	err := txn.Retry(ctx, func(ctx context.Context) error {
		var row T
		if next != nil {
			row, next = *next, nil
		} else {
			var err error
			if row, err = t.Get(ctx, db, key); err != nil {
				return err
			}
		}
		if err := fn(ctx, &row); err != nil {
			return err
		}
		written, expected, err := t.send(ctx, db, &row, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, true)
		if err != nil {
			return err
		}
		if written {
			out = row
			return nil
		}
		current, err := t.Get(ctx, db, key)
		if errors.Is(err, pgcc.ErrNotFound) {
			return t.conflict(pgcc.OpUpdate, reflect.ValueOf(&row).Elem(), expected, 0, false)
		}
		if err != nil {
			return err
		}
		next = &current
		return t.conflict(pgcc.OpUpdate, reflect.ValueOf(&row).Elem(), expected, t.VersionOf(&current), true)
	}, all...)
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

func retryConflict(err error) bool { return errors.Is(err, pgcc.ErrConflict) }

func retryConflictOrRetryable(err error) bool {
	return errors.Is(err, pgcc.ErrConflict) || txn.Retryable(err)
}

// retryConflictRetryableOrLost also retries a connection failure on a pool, whose next attempt gets another
// connection: a read that failed wrote nothing. A write whose outcome is unknown is never retried.
func retryConflictRetryableOrLost(err error) bool {
	return retryConflictOrRetryable(err) || !errors.Is(err, pgcc.ErrCommitUnknown) && pgfail.ConnectionFailed(err)
}

func (t *Table[T]) keyCountError(got int) error {
	return fmt.Errorf("%w: %s has %d key column(s) (%s), got %d value(s)", pgcc.ErrInvalidArgument, t.quoted, len(t.keyCols), strings.Join(t.keyCols, ", "), got)
}

// partialStmt returns the cached statement updating cols, building it on first use.
func (t *Table[T]) partialStmt(cols []string) (*partialStmt, error) {
	cacheKey := strings.Join(cols, "\x00")
	if ps, ok := t.partial.Load(cacheKey); ok {
		return ps.(*partialStmt), nil
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: UpdateColumns of %s needs at least one column", pgcc.ErrInvalidArgument, t.quoted)
	}
	set := make([]int, 0, len(cols))
	for _, c := range cols {
		pos := -1
		for i, name := range t.d.cols {
			if name == c {
				pos = i
				break
			}
		}
		switch {
		case pos < 0:
			return nil, fmt.Errorf("%w: UpdateColumns: %s has no column %q mapped to a field", pgcc.ErrInvalidArgument, t.quoted, c)
		case pos == t.d.version:
			return nil, fmt.Errorf("%w: UpdateColumns: %q is the version column, which every update sets", pgcc.ErrInvalidArgument, c)
		case t.d.isKey(pos):
			return nil, fmt.Errorf("%w: UpdateColumns: %q is a key column, which identifies the row and is never updated", pgcc.ErrInvalidArgument, c)
		case contains(set, pos):
			return nil, fmt.Errorf("%w: UpdateColumns: column %q given twice", pgcc.ErrInvalidArgument, c)
		}
		set = append(set, pos)
	}
	ps, _ := t.partial.LoadOrStore(cacheKey, &partialStmt{set: set, sql: t.d.updateSQL(set)})
	return ps.(*partialStmt), nil
}
