package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// InsertOrGet inserts row unless a row with its key exists, and reports whether it did. When it inserted,
// row gets its version and the columns named by [WithInsertDefaults], as [Table.Insert] gives them; when a
// row with the key existed, row is overwritten with that row as stored. Either way row is then the row in
// the database, and created says which case it was.
//
// It is the get-or-create that holds under concurrency: INSERT … ON CONFLICT (key) DO NOTHING RETURNING, and,
// when that inserted nothing, a read of the row. Of any number of concurrent callers with one key exactly one
// inserts and the others read its row (a caller in a transaction waits for the inserting transaction to
// commit or roll back, as for any unique key). When the row that prevented the insert is deleted before the
// read, it tries again, three times in all. Inside a REPEATABLE READ or SERIALIZABLE transaction a row
// inserted by a transaction its snapshot cannot see is a serialization failure (SQLSTATE 40001) for
// [txn.Run] to retry. The key columns must have a unique index (the primary key, say), or PostgreSQL refuses
// the statement (SQLSTATE 42P10); they cannot be [WithInsertDefaults] columns. A conflict on another unique
// index is returned as PostgreSQL reports it (23505). ctx governs the statements.
func (t *Table[T]) InsertOrGet(ctx context.Context, db pgcc.DBTX, row *T) (created bool, err error) {
	if err := t.checkRow("InsertOrGet", db, row); err != nil {
		return false, err
	}
	if err := t.checkKeyNotDefault("InsertOrGet"); err != nil {
		return false, err
	}
	v := reflect.ValueOf(row).Elem()
	for n := 1; ; n++ {
		written, _, err := t.insertReturning(ctx, db, v, t.sql.insertOrGet, false)
		if err != nil || written {
			return written, err
		}
		got, err := t.Get(ctx, db, t.keyValues(v))
		if errors.Is(err, pgcc.ErrNotFound) && n < maxRewrites {
			continue // the row that stopped the insert is gone: insert again
		}
		if err != nil {
			return false, err
		}
		v.Set(reflect.ValueOf(got))
		return false, nil
	}
}

// Upsert writes row whether or not a row with its key exists, guarded by the version: it creates the row when
// none has the key and row's version field is zero (a new row), and otherwise updates it as [Table.Update]
// does, provided the row in the database is at row's version. created says which it did.
//
// A new row (version zero) meeting an existing row is written over it only when that row is at version 0 too
// (a [VersionCounter] row created by another framework, say), in one statement, INSERT … ON CONFLICT (key)
// DO UPDATE … WHERE version = 0; an existing row at another version is a [*pgcc.ConflictError]. A row with a
// version (read earlier) whose row was deleted since is a conflict with Deleted set, not created again: a
// concurrent delete is not undone. As for InsertOrGet the key columns need a unique index and cannot be
// [WithInsertDefaults] columns. Versions after the write, rollbacks and [Tracked] work as for Insert and
// Update. ctx governs the statements.
func (t *Table[T]) Upsert(ctx context.Context, db pgcc.DBTX, row *T) (created bool, err error) {
	if err := t.checkRow("Upsert", db, row); err != nil {
		return false, err
	}
	if err := t.checkKeyNotDefault("Upsert"); err != nil {
		return false, err
	}
	v := reflect.ValueOf(row).Elem()
	vf := v.FieldByIndex(t.version.index)
	if !vf.IsZero() {
		return false, t.write(ctx, db, row, pgcc.OpUpdate, t.sql.update, t.sql.updateSet, writeMode{check: true, bumps: true, restore: true})
	}
	if err := t.checkTracked(pgcc.OpUpdate, v); err != nil {
		return false, err
	}
	sql, upsert := t.sql.insertOrGet, false
	if t.d.kind == VersionCounter {
		sql, upsert = t.sql.upsert, true
	}
	for n := 1; ; n++ {
		written, inserted, err := t.insertReturning(ctx, db, v, sql, upsert)
		if err != nil || written {
			return inserted, err
		}
		actual, found, err := t.probe(ctx, db, t.keyArgs(nil, v))
		if err != nil {
			return false, fmt.Errorf("pgcc: upsert %s %s: reading the current version after a conflict: %w", t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err)
		}
		if !found && n < maxRewrites {
			continue // the row that stopped the insert is gone: insert again
		}
		return false, t.observeConflict(ctx, db, t.conflict(pgcc.OpUpdate, v, t.versionValue(vf), actual, found))
	}
}

// checkKeyNotDefault refuses InsertOrGet and Upsert on a table whose key is left to a DEFAULT on insert: no
// insert could conflict on it.
func (t *Table[T]) checkKeyNotDefault(op string) error {
	for _, k := range t.d.key {
		if contains(t.d.defaults, k) {
			return fmt.Errorf("%w: %s into %s: key column %q is filled by its DEFAULT (WithInsertDefaults), so no insert can meet an existing row", pgcc.ErrInvalidArgument, op, t.quoted, t.d.cols[k])
		}
	}
	return nil
}

// insertReturning runs an INSERT … RETURNING statement of v returning the columns at createRet (and, with
// upsert, whether it inserted rather than updated), sets them in v, and reports whether the statement
// returned a row. A transaction of txn.Run that rolls back puts those fields back.
func (t *Table[T]) insertReturning(ctx context.Context, db pgcc.DBTX, v reflect.Value, sql string, upsert bool) (written, inserted bool, err error) {
	args := t.values(make([]any, 0, len(t.sql.insertArgs)), v, t.sql.insertArgs)
	var extra []any
	if upsert {
		extra = append(extra, &inserted)
	}
	vals, err := t.scanCopies(t.sql.createRet, db.QueryRow(ctx, sql, args...), extra...)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("pgcc: insert into %s %s: %w", t.quoted, pgcc.FormatKey(t.keyCols, t.keyValues(v)), err)
	}
	fields := make([]reflect.Value, len(t.sql.createRet))
	for i, pos := range t.sql.createRet {
		fields[i] = v.FieldByIndex(t.fields[pos].index)
	}
	restoreOnRollback(db, fields[0], fields[1:])
	for i, f := range fields {
		f.Set(vals[i].Elem())
	}
	t.track(v)
	return true, inserted || !upsert, nil
}
