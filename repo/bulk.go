package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// errRewrite rolls a bulk update back so that it is sent again: a conflicting row was found at its expected
// version, replaced after the statement's snapshot.
var errRewrite = errors.New("pgcc: bulk update: a row was replaced at its expected version; writing again")

// UpdateAll is [Table.Update] for many rows at once, all or nothing: one UPDATE … FROM statement per 1,000
// rows, inside a transaction, or a savepoint when db is a pgx.Tx. Either every row was at its
// version and every row is written, with its version field updated, or nothing is written and the error is a
// [*BulkConflictError] listing every row that conflicted, with the version found or Deleted, in the order of
// rows. Each row must appear at most once; a second copy of a row conflicts with the first.
//
// db must be able to begin a transaction (a pool, a connection or a pgx.Tx; sqlc's DBTX alone cannot): else
// the error matches [pgcc.ErrInvalidArgument]. On a pool or connection the transaction is run by [txn.Run] with its
// default policy, so a deadlock with another bulk update is retried. A row with a zero version is
// [ErrNoVersion]. ctx governs every statement.
func (t *Table[T]) UpdateAll(ctx context.Context, db pgcc.DBTX, rows []*T) error {
	if len(rows) == 0 {
		return nil
	}
	begin, ok := db.(pgcc.Beginner)
	if !ok {
		return fmt.Errorf("%w: UpdateAll of %s needs a handle that can begin a transaction or savepoint; %T cannot", pgcc.ErrInvalidArgument, t.quoted, db)
	}
	values := make([]reflect.Value, len(rows))
	expected := make([]int64, len(rows))
	for i, row := range rows {
		if row == nil {
			return fmt.Errorf("%w: UpdateAll of %s: row %d is nil", pgcc.ErrInvalidArgument, t.quoted, i)
		}
		values[i] = reflect.ValueOf(row).Elem()
		expected[i] = getInt(values[i].FieldByIndex(t.version.index))
		if expected[i] == 0 {
			return fmt.Errorf("%w: UpdateAll of %s: row %d %s has a zero version; read the row first", ErrNoVersion, t.quoted, i, pgcc.FormatKey(t.keyCols, t.keyValues(values[i])))
		}
	}
	set := t.sql.updateSet
	cols := t.d.bulkColumns(set)
	chunk := bulkRows(len(cols))
	versions := make([]int64, len(rows))
	for n := 1; ; n++ {
		err := txn.Run(ctx, begin, func(ctx context.Context, tx pgx.Tx) error {
			written := make([]bool, len(rows))
			for start := 0; start < len(rows); start += chunk {
				end := min(start+chunk, len(rows))
				args := make([]any, 0, (end-start)*len(cols))
				for _, v := range values[start:end] {
					args = t.values(args, v, cols)
				}
				if err := t.bulkChunk(ctx, tx, set, end-start, args, start, written, versions); err != nil {
					return err
				}
			}
			var missing []int
			for i, w := range written {
				if !w {
					missing = append(missing, i)
				}
			}
			if len(missing) == 0 {
				return nil
			}
			return t.bulkConflicts(ctx, tx, values, expected, missing, n < maxRewrites)
		})
		if errors.Is(err, errRewrite) {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	for i, v := range values {
		setInt(v.FieldByIndex(t.version.index), versions[i])
	}
	return nil
}

// bulkChunk runs the bulk UPDATE for n rows whose parameters are args, and records which rows (numbered from
// offset) it wrote and their new versions.
func (t *Table[T]) bulkChunk(ctx context.Context, tx pgx.Tx, set []int, n int, args []any, offset int, written []bool, versions []int64) error {
	sql, ok := t.bulk.Load(n)
	if !ok {
		sql, _ = t.bulk.LoadOrStore(n, t.d.bulkSQL(set, n))
	}
	rows, err := tx.Query(ctx, sql.(string), args...)
	if err != nil {
		return fmt.Errorf("pgcc: bulk update %s: %w", t.quoted, err)
	}
	var ord int32
	var version int64
	_, err = pgx.ForEachRow(rows, []any{&ord, &version}, func() error {
		i := offset + int(ord) - 1
		written[i] = true
		versions[i] = version
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgcc: bulk update %s: %w", t.quoted, err)
	}
	return nil
}

// bulkConflicts reads the current version of the rows at missing and returns the [*BulkConflictError], or
// errRewrite when one of them is at its expected version and rewrite allows another try.
func (t *Table[T]) bulkConflicts(ctx context.Context, tx pgx.Tx, values []reflect.Value, expected []int64, missing []int, rewrite bool) error {
	conflicts := make([]*pgcc.ConflictError, len(missing))
	for i, idx := range missing {
		conflicts[i] = &pgcc.ConflictError{Table: t.quoted, Op: pgcc.OpBulkUpdate, KeyColumns: t.KeyColumns(), Key: t.keyValues(values[idx]), Expected: expected[idx], Deleted: true}
	}
	chunk := bulkRows(len(t.d.key))
	for start := 0; start < len(missing); start += chunk {
		end := min(start+chunk, len(missing))
		n := end - start
		args := make([]any, 0, n*len(t.d.key))
		for _, idx := range missing[start:end] {
			args = t.keyArgs(args, values[idx])
		}
		sql, ok := t.probes.Load(n)
		if !ok {
			sql, _ = t.probes.LoadOrStore(n, t.d.bulkProbeSQL(n))
		}
		rows, err := tx.Query(ctx, sql.(string), args...)
		if err != nil {
			return fmt.Errorf("pgcc: bulk update %s: reading current versions after a conflict: %w", t.quoted, err)
		}
		var ord int32
		var version int64
		_, err = pgx.ForEachRow(rows, []any{&ord, &version}, func() error {
			c := conflicts[start+int(ord)-1]
			c.Deleted, c.Actual = false, version
			return nil
		})
		if err != nil {
			return fmt.Errorf("pgcc: bulk update %s: reading current versions after a conflict: %w", t.quoted, err)
		}
	}
	if rewrite {
		for _, c := range conflicts {
			if !c.Deleted && c.Actual == c.Expected {
				return errRewrite
			}
		}
	}
	return &BulkConflictError{Table: t.quoted, Rows: len(values), Conflicts: conflicts}
}
