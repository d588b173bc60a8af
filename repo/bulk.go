package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/txn"
)

// errRewrite rolls a bulk update back so that it is sent again: a conflicting row was found at its expected
// version, replaced after the statement's snapshot.
var errRewrite = errors.New("pgcc: bulk update: a row was replaced at its expected version; writing again")

// UpdateAll is [Table.Update] for many rows at once, all or nothing, in one statement whatever their number:
// each column travels as one array parameter, unnested on the server, inside a transaction, or a savepoint
// when db is a pgx.Tx. Either every row was at its version and every row is written, with its version field
// updated (changed only for rows whose values changed, as Update does), or nothing is written and the error
// is a [*BulkConflictError] listing every row that conflicted, with the version found or Deleted, in the order
// of rows.
//
// The first call on a Table reads the column types from the catalog (one query, then cached in the Table):
// values are sent as text and cast to their column's type on the server, so that every type works, arrays,
// enums and domains included, and each value is parsed exactly as the column parses it.
//
// db must be able to begin a transaction (a pool, a connection or a pgx.Tx; sqlc's DBTX alone cannot). On a
// pool or connection the transaction is run by [txn.Run] with its default policy, so a deadlock with another
// bulk update is retried. A nil handle, table or row, two rows with the same key, a [Tracked] row whose key
// changed, or a handle that cannot begin, are errors matching [pgcc.ErrInvalidArgument], and nothing is sent.
// When db is a transaction of txn.Run that rolls back later, every row's version is put back. ctx governs
// every statement.
func (t *Table[T]) UpdateAll(ctx context.Context, db pgcc.DBTX, rows []*T) error {
	if err := t.check("UpdateAll", db); err != nil {
		return err
	}
	if len(rows) == 0 {
		return nil
	}
	begin, ok := db.(pgcc.Beginner)
	if !ok {
		return fmt.Errorf("%w: UpdateAll of %s needs a handle that can begin a transaction or savepoint; %T cannot", pgcc.ErrInvalidArgument, t.quoted, db)
	}
	values := make([]reflect.Value, len(rows))
	expected := make([]version, len(rows))
	seen := make(map[string][]int, len(rows))
	for i, row := range rows {
		if row == nil {
			return fmt.Errorf("%w: UpdateAll of %s: row %d is nil", pgcc.ErrInvalidArgument, t.quoted, i)
		}
		values[i] = reflect.ValueOf(row).Elem()
		if err := t.checkTracked("UpdateAll", values[i]); err != nil {
			return fmt.Errorf("%w (row %d)", err, i)
		}
		expected[i] = t.versionValue(values[i].FieldByIndex(t.version.index))
		key := t.keyValues(values[i])
		text := pgcc.FormatKey(nil, key)
		for _, j := range seen[text] {
			if slicesEqual(key, t.keyValues(values[j])) {
				return fmt.Errorf("%w: UpdateAll of %s: rows %d and %d have the same key %s; each row may appear once", pgcc.ErrInvalidArgument, t.quoted, j, i, pgcc.FormatKey(t.keyCols, key))
			}
		}
		seen[text] = append(seen[text], i)
	}
	set := t.sql.updateSet
	after := make([]version, len(rows))
	for n := 1; ; n++ {
		err := txn.Run(ctx, begin, func(ctx context.Context, tx pgx.Tx) error {
			plan, err := t.bulkPlan(ctx, tx)
			if err != nil {
				return err
			}
			args, err := t.bulkArgs(tx, plan, values, t.d.bulkColumns(set))
			if err != nil {
				return err
			}
			args = append(args, t.versionArray(expected))
			written, err := t.bulkUpdate(ctx, tx, plan.update, args, after)
			if err != nil {
				return err
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
			return t.bulkConflicts(ctx, tx, plan, values, expected, missing, n < maxRewrites)
		})
		if errors.Is(err, errRewrite) {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	fields := make([]reflect.Value, len(values))
	for i, v := range values {
		fields[i] = v.FieldByIndex(t.version.index)
	}
	restoreOnRollback(db, fields[0], fields[1:])
	for i, f := range fields {
		t.setVersion(f, after[i])
	}
	return nil
}

func slicesEqual(a, b pgcc.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !sameValue(a[i], b[i]) {
			return false
		}
	}
	return true
}

// bulkStatements is what UpdateAll needs from the catalog, the column types, and the statements built from
// them. It is built once per Table (see bulkPlan).
type bulkStatements struct {
	types  []colType // per column position; zero for the xmin system column
	update string
	probe  string
}

// columnTypes reads the types of the table's columns. For a domain, oid is its base type's, which pgx knows
// how to encode for; name is the domain's, so that the cast checks its constraints.
const columnTypes = `SELECT a.attname, CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE a.atttypid END, format_type(a.atttypid, NULL)
FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`

// bulkPlan returns the bulk statements, reading the column types in tx on first use. The plan assumes the
// table's column types do not change while the process runs (a migration that changes one calls for a new
// Table).
func (t *Table[T]) bulkPlan(ctx context.Context, tx pgx.Tx) (*bulkStatements, error) {
	if p := t.bulk.Load(); p != nil {
		return p, nil
	}
	rows, err := tx.Query(ctx, columnTypes, t.quoted)
	if err != nil {
		return nil, fmt.Errorf("pgcc: bulk update %s: reading the column types: %w", t.quoted, err)
	}
	byName := map[string]colType{}
	var name string
	var ct colType
	if _, err := pgx.ForEachRow(rows, []any{&name, &ct.oid, &ct.name}, func() error {
		byName[name] = ct
		return nil
	}); err != nil {
		return nil, fmt.Errorf("pgcc: bulk update %s: reading the column types: %w", t.quoted, err)
	}
	p := &bulkStatements{types: make([]colType, len(t.d.cols))}
	for pos, c := range t.d.cols {
		if pos == t.d.version && t.d.kind == VersionXmin {
			continue
		}
		ct, ok := byName[c]
		if !ok {
			return nil, fmt.Errorf("pgcc: bulk update %s: the table has no column %q, which %v maps", t.quoted, c, reflect.TypeFor[T]())
		}
		p.types[pos] = ct
	}
	p.update = t.d.bulkSQL(t.sql.updateSet, p.types)
	p.probe = t.d.bulkProbeSQL(p.types)
	t.bulk.CompareAndSwap(nil, p)
	return t.bulk.Load(), nil
}

// bulkArgs is one text[] parameter per column at cols, holding that column's value for each row in values,
// rendered by the connection's own type map as PostgreSQL's text input for the column's type.
func (t *Table[T]) bulkArgs(tx pgx.Tx, plan *bulkStatements, values []reflect.Value, cols []int) ([]any, error) {
	m := tx.Conn().TypeMap()
	args := make([]any, 0, len(cols)+1)
	ends := make([]int, len(values)) // where each value's text ends in the column's buffer; -1 for NULL
	var buf []byte
	for _, pos := range cols {
		ct := plan.types[pos]
		buf = buf[:0]
		for i, v := range values {
			val := v.FieldByIndex(t.fields[pos].index).Interface()
			out, err := m.Encode(ct.oid, pgtype.TextFormatCode, val, buf)
			if err != nil {
				return nil, fmt.Errorf("pgcc: bulk update %s: row %d, column %q: %w", t.quoted, i, t.d.cols[pos], err)
			}
			if out == nil { // NULL: Encode appends nothing and returns nil
				ends[i] = -1
				continue
			}
			buf = out
			ends[i] = len(buf)
		}
		// One string per column, sliced into the values' texts.
		all := string(buf)
		texts := make([]pgtype.Text, len(values))
		start := 0
		for i, end := range ends {
			if end < 0 {
				continue
			}
			texts[i] = pgtype.Text{String: all[start:end], Valid: true}
			start = end
		}
		args = append(args, texts)
	}
	return args, nil
}

// versionArray is the expected versions as an array parameter: []int64, or []time.Time for timestamps.
func (t *Table[T]) versionArray(vs []version) any {
	if t.d.kind == VersionTimestamp {
		ts := make([]time.Time, len(vs))
		for i, v := range vs {
			ts[i] = v.at
		}
		return ts
	}
	ns := make([]int64, len(vs))
	for i, v := range vs {
		ns[i] = v.n
	}
	return ns
}

// bulkUpdate runs the bulk UPDATE and reports which rows it wrote, recording their versions in after.
func (t *Table[T]) bulkUpdate(ctx context.Context, tx pgx.Tx, sql string, args []any, after []version) ([]bool, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("pgcc: bulk update %s: %w", t.quoted, err)
	}
	written := make([]bool, len(after))
	var ord int64
	var ver version
	dest := []any{&ord, &ver.n}
	if t.d.kind == VersionTimestamp {
		dest[1] = &ver.at
	}
	_, err = pgx.ForEachRow(rows, dest, func() error {
		if t.d.kind == VersionTimestamp {
			ver.n = micros(ver.at)
		}
		written[ord-1] = true
		after[ord-1] = ver
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgcc: bulk update %s: %w", t.quoted, err)
	}
	return written, nil
}

// bulkConflicts reads the current version of the rows at missing and returns the [*BulkConflictError], or
// errRewrite when one of them is at its expected version and rewrite allows another try.
func (t *Table[T]) bulkConflicts(ctx context.Context, tx pgx.Tx, plan *bulkStatements, values []reflect.Value, expected []version, missing []int, rewrite bool) error {
	conflicts := make([]*pgcc.ConflictError, len(missing))
	missed := make([]reflect.Value, len(missing))
	for i, idx := range missing {
		missed[i] = values[idx]
		conflicts[i] = t.conflict(pgcc.OpBulkUpdate, values[idx], expected[idx], version{}, false)
	}
	args, err := t.bulkArgs(tx, plan, missed, t.d.key)
	if err != nil {
		return err
	}
	rows, err := tx.Query(ctx, plan.probe, args...)
	if err != nil {
		return fmt.Errorf("pgcc: bulk update %s: reading current versions after a conflict: %w", t.quoted, err)
	}
	var ord int64
	var ver version
	dest := []any{&ord, &ver.n}
	if t.d.kind == VersionTimestamp {
		dest[1] = &ver.at
	}
	_, err = pgx.ForEachRow(rows, dest, func() error {
		c := conflicts[ord-1]
		c.Deleted, c.Actual = false, ver.n
		if t.d.kind == VersionTimestamp {
			c.Actual, c.ActualTime = micros(ver.at), ver.at
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgcc: bulk update %s: reading current versions after a conflict: %w", t.quoted, err)
	}
	if rewrite {
		for _, c := range conflicts {
			if !c.Deleted && c.Actual == c.Expected {
				return errRewrite
			}
		}
	}
	for _, c := range conflicts {
		t.observeConflict(ctx, tx, c)
	}
	return &BulkConflictError{Table: t.quoted, Rows: len(values), Conflicts: conflicts}
}
