package lock

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
	"github.com/pgcc/pgcc/txn"
)

// Update is a pessimistic read-modify-write of the row of t with key, in a transaction of its own: it locks
// the row ([ForNoKeyUpdate] unless [WithStrength] says otherwise), calls fn with it, and writes the columns fn
// changed, the UPDATE travelling with COMMIT ([txn.Final]). It returns the row as written.
//
// Round trips: BEGIN travels with the lock statement and the write with COMMIT, so Update costs two round
// trips where BEGIN, SELECT … FOR UPDATE, UPDATE and COMMIT sent one by one cost four, and the row lock is held
// for one round trip instead of two: on a hot row, twice the writes per second.
//
// The transaction is txn.Run's on db (a pool or a connection; a pgx.Tx makes it a savepoint of that
// transaction, whose write is then sent at once, since only its owner commits), retried as Run retries it:
// fn must decide from the row it is given, and may be called again. [WithRunOptions] passes Run its options.
// fn's own error rolls the transaction back and is returned unchanged; nothing is written.
//
// What is written: every column of [Table.SelectColumns] but the key columns whose field fn changed (compared
// with reflect.DeepEqual to the value read; replace a slice or map rather than change it in place), by key.
// When fn changes nothing, nothing is written. A table with a version column (a *repo.Table, through its
// VersionColumn method) has its version advanced as repo's writes advance it, so that optimistic writers of
// the same rows see the change: an integer counter by one (the returned row carries the new value), a
// timestamp to the database's clock (the returned row keeps the timestamp read), xmin by the server. fn must
// not change the key: that is an error matching [pgcc.ErrInvalidArgument], and nothing is written.
//
// A write the server refuses (a constraint, a lock timeout, a serialization failure) rolls the whole
// transaction back: nothing commits, and the error, unless Run retried it to success, is a [*WriteError]
// naming the table and key, with the *pgconn.PgError in its chain. A connection lost after the write was sent
// is a [*pgcc.CommitUnknownError], never success and never a certain failure. A key without a row is a
// [*MissingError] (errors.Is [pgcc.ErrNotFound]); a lock not granted a [*pgcc.LockError], as for [Load].
//
// Update takes [WithStrength], [WithWait] (Wait or NoWait), [WithTimeout], [WithDiagnostics], [WithObserver]
// and [WithRunOptions]. ctx governs the transaction as it governs txn.Run (every statement, the lock wait,
// the sleeps between attempts) and is passed to fn.
func Update[T any](ctx context.Context, db pgcc.Beginner, t TableOf[T], key pgcc.Key, fn func(ctx context.Context, row *T) error, opts ...Option) (T, error) {
	var zero T
	cfg, err := newConfig(useUpdate, opts)
	if err != nil {
		return zero, err
	}
	w, err := newWriter(db, t, fn == nil, "Update")
	if err != nil {
		return zero, err
	}
	var out T
	err = w.run(ctx, cfg, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := load(ctx, tx, t, []pgcc.Key{key}, cfg)
		if err != nil {
			return err
		}
		if err := w.apply(ctx, tx, rows, func(ctx context.Context, rows []T) error { return fn(ctx, &rows[0]) }); err != nil {
			return err
		}
		out = rows[0]
		return nil
	})
	if err != nil {
		return zero, err
	}
	return out, nil
}

// ClaimAndUpdate is the work-queue transaction in two round trips: it claims up to limit rows of t that no
// other transaction holds, as [Claim] does (SKIP LOCKED, in the order of [OrderBy], among the rows a [Where]
// predicate matches), calls fn with them, and writes the columns fn changed in each (marking a job done,
// counting an attempt), the UPDATEs travelling with COMMIT. It returns the claimed rows as written, or none
// when there was nothing to claim (fn is then not called, and the transaction has sent one round trip).
//
// fn changes rows[i] in place. Concurrent callers get disjoint rows, and each row is claimed and written in
// one transaction, so a row whose update takes it out of the predicate (done = true) is processed exactly
// once. What is written, the version column, retries, WithRunOptions and the errors (a [*WriteError] naming
// the table and the keys written when the server refuses the writes, nothing committed) are as for [Update];
// the claim itself behaves as Claim's. ClaimAndUpdate takes Claim's options and [WithRunOptions]; ctx is as
// for Update.
func ClaimAndUpdate[T any](ctx context.Context, db pgcc.Beginner, t TableOf[T], limit int, fn func(ctx context.Context, rows []T) error, opts ...Option) ([]T, error) {
	cfg, err := newConfig(useClaimUpdate, opts)
	if err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, fmt.Errorf("%w: ClaimAndUpdate needs a limit of at least 1, got %d", pgcc.ErrInvalidArgument, limit)
	}
	cfg.limit, cfg.limitSet = limit, true
	w, err := newWriter(db, t, fn == nil, "ClaimAndUpdate")
	if err != nil {
		return nil, err
	}
	var out []T
	err = w.run(ctx, cfg, func(ctx context.Context, tx pgx.Tx) error {
		out = nil
		rows, err := selectRows[T](ctx, tx, t, cfg, "ClaimAndUpdate")
		if err != nil || len(rows) == 0 {
			return err
		}
		if err := w.apply(ctx, tx, rows, fn); err != nil {
			return err
		}
		out = rows
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// WriteError is the error of the write [Update] or [ClaimAndUpdate] sent with COMMIT when the server refused
// it: the transaction was rolled back and nothing committed. errors.As finds the *pgconn.PgError (its table,
// constraint and detail), and errors.Is matches what Err matches (pgcc.ErrSerialization, … through
// pgcc.Classify, pgcc.ErrRetriesExhausted when Run gave up).
type WriteError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// KeyColumns names the key columns.
	KeyColumns []string
	// Keys are the keys of the rows the refused flight wrote, in the order written.
	Keys []pgcc.Key
	// Err is the error txn.Run returned, with the server's error in its chain.
	Err error
}

// Error implements error: `pgcc: write of "accounts" id=7 refused: …`.
func (e *WriteError) Error() string {
	var b strings.Builder
	b.WriteString("pgcc: write of ")
	b.WriteString(e.Table)
	for i, k := range e.Keys {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(" ")
		b.WriteString(pgcc.FormatKey(e.KeyColumns, k))
	}
	b.WriteString(" refused: ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns Err.
func (e *WriteError) Unwrap() error { return e.Err }

// writer holds what a read-modify-write helper needs to write rows of T back: the table's description, each
// select column's field, and the version column.
type writer[T any] struct {
	db      pgcc.Beginner
	t       TableOf[T]
	d       described
	fields  [][]int // the field of each select column
	isKey   []bool  // whether each select column is a key column
	version int     // the select column of the version, -1 without one (or for xmin, which the server sets)
	stamp   bool    // whether the version is a timestamp rather than a counter
	// Set by each attempt: the keys the attempt queued writes for, and whether its function returned nil.
	written []pgcc.Key
	done    bool
}

// versioned is implemented by tables with a version column that writes advance (a *repo.Table).
type versioned interface{ VersionColumn() string }

// newWriter checks db, fn and t and maps t's select columns to T's fields, before anything is sent.
func newWriter[T any](db pgcc.Beginner, t TableOf[T], nilFn bool, name string) (*writer[T], error) {
	switch {
	case lockwait.IsNil(db):
		return nil, fmt.Errorf("%w: %s needs a database handle, not nil", pgcc.ErrInvalidArgument, name)
	case nilFn:
		return nil, fmt.Errorf("%w: %s needs a function, not nil", pgcc.ErrInvalidArgument, name)
	}
	d, err := describe(t, true)
	if err != nil {
		return nil, err
	}
	w := &writer[T]{db: db, t: t, d: d, version: -1}
	typ := reflect.TypeFor[T]()
	if typ.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: %s: rows of %s must be a struct type, not %v", pgcc.ErrInvalidArgument, name, d.ident, typ)
	}
	var cols []string
	var fields [][]int
	var types []reflect.Type
	mapFields(typ, nil, &cols, &fields, &types)
	vcol := ""
	if v, ok := t.(versioned); ok {
		vcol = v.VersionColumn()
	}
	for i, c := range d.cols {
		j := indexOf(cols, c)
		if j < 0 {
			for k, fc := range cols {
				if strings.EqualFold(fc, c) {
					j = k
					break
				}
			}
		}
		if j < 0 {
			return nil, fmt.Errorf("%w: %s: %v has no field for column %q of %s", pgcc.ErrInvalidArgument, name, typ, c, d.ident)
		}
		w.fields = append(w.fields, fields[j])
		w.isKey = append(w.isKey, indexOf(d.keyCols, c) >= 0)
		if c != vcol || c == "" {
			continue
		}
		w.isKey[i] = true // never compared nor written as a plain column
		if c == "xmin" {
			continue
		}
		switch ft := types[j]; {
		case ft == reflect.TypeFor[time.Time]():
			w.version, w.stamp = i, true
		case ft.Kind() >= reflect.Int && ft.Kind() <= reflect.Int64:
			w.version = i
		default:
			return nil, fmt.Errorf("%w: %s: version column %q of %s is a %v, not an integer or a time.Time", pgcc.ErrInvalidArgument, name, c, d.ident, ft)
		}
	}
	return w, nil
}

// run runs body in txn.Run with cfg's run options, and names the table and keys in the error of a write the
// server refused in the flight that carried COMMIT.
func (w *writer[T]) run(ctx context.Context, cfg *config, body func(ctx context.Context, tx pgx.Tx) error) error {
	err := txn.Run(ctx, w.db, func(ctx context.Context, tx pgx.Tx) error {
		w.written, w.done = nil, false
		if err := body(ctx, tx); err != nil {
			return err
		}
		w.done = true
		return nil
	}, cfg.run...)
	if err == nil || !w.done || len(w.written) == 0 {
		return err // fn's own error, the lock's, or nothing written
	}
	var pgErr *pgconn.PgError
	if errors.Is(err, pgcc.ErrCommitUnknown) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		!errors.As(err, &pgErr) {
		return err
	}
	return &WriteError{Table: w.d.ident, KeyColumns: w.d.keyCols, Keys: w.written, Err: err}
}

// apply calls fn with rows and queues an UPDATE of the columns fn changed in each row, to travel with COMMIT.
func (w *writer[T]) apply(ctx context.Context, tx pgx.Tx, rows []T, fn func(context.Context, []T) error) error {
	before := make([][]any, len(rows))
	keys := make([]pgcc.Key, len(rows))
	for i := range rows {
		before[i], keys[i] = w.values(&rows[i]), w.t.KeyOf(&rows[i])
	}
	if err := fn(ctx, rows); err != nil {
		return err
	}
	for i := range rows {
		sql, args, err := w.update(before[i], &rows[i], keys[i])
		if err != nil || sql == "" {
			if err != nil {
				return err
			}
			continue
		}
		if err := txn.Final(tx, sql, args...); errors.Is(err, pgcc.ErrInvalidArgument) {
			// A savepoint (db was a pgx.Tx): only the owner of the transaction commits, so the write goes now.
			if _, err := tx.Exec(ctx, sql, args...); err != nil {
				return &WriteError{Table: w.d.ident, KeyColumns: w.d.keyCols, Keys: []pgcc.Key{keys[i]}, Err: err}
			}
		} else if err != nil {
			return err
		}
		w.written = append(w.written, keys[i])
	}
	return nil
}

// values returns the value of each select column's field of row.
func (w *writer[T]) values(row *T) []any {
	v := reflect.ValueOf(row).Elem()
	out := make([]any, len(w.fields))
	for i, f := range w.fields {
		out[i] = v.FieldByIndex(f).Interface()
	}
	return out
}

// update returns the UPDATE of the columns of row that differ from before, by key, advancing the version
// (and, for a counter, row's version field), or "" when nothing changed.
//
//	UPDATE <table> SET <col> = $1, … [, <version> = <next>] WHERE <key col> = $n AND …
func (w *writer[T]) update(before []any, row *T, key pgcc.Key) (string, []any, error) {
	v := reflect.ValueOf(row).Elem()
	var b strings.Builder
	var args []any
	for i, f := range w.fields {
		now := v.FieldByIndex(f).Interface()
		if reflect.DeepEqual(before[i], now) {
			continue
		}
		if w.isKey[i] {
			return "", nil, fmt.Errorf("%w: the function changed column %q of %s %s, a key or version column, which is never written",
				pgcc.ErrInvalidArgument, w.d.cols[i], w.d.ident, pgcc.FormatKey(w.d.keyCols, key))
		}
		if len(args) == 0 {
			b.WriteString("UPDATE ")
			b.WriteString(w.d.ident)
			b.WriteString(" SET ")
		} else {
			b.WriteString(", ")
		}
		args = append(args, now)
		b.WriteString(pgx.Identifier{w.d.cols[i]}.Sanitize())
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(len(args)))
	}
	if len(args) == 0 {
		return "", nil, nil
	}
	if w.version >= 0 {
		col := pgx.Identifier{w.d.cols[w.version]}.Sanitize()
		b.WriteString(", ")
		b.WriteString(col)
		if w.stamp {
			b.WriteString(" = greatest(clock_timestamp(), " + col + " + interval '1 microsecond')")
		} else {
			b.WriteString(" = coalesce(" + col + ", 0) + 1")
			f := v.FieldByIndex(w.fields[w.version])
			f.SetInt(f.Int() + 1)
		}
	}
	b.WriteString(" WHERE ")
	for i, k := range w.d.keyCols {
		if i > 0 {
			b.WriteString(" AND ")
		}
		args = append(args, key[i])
		b.WriteString(pgx.Identifier{k}.Sanitize())
		b.WriteString(" = $")
		b.WriteString(strconv.Itoa(len(args)))
	}
	return b.String(), args, nil
}
