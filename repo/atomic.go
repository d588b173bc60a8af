package repo

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// Guard is a condition an atomic [Table.Add] checks on the value it would leave in its column, in the same
// statement that writes it: when the condition does not hold nothing is written and Add returns a
// [*GuardError]. Make one with [AtLeast] or [AtMost]; the zero Guard is refused.
type Guard struct {
	op    string // ">=" or "<="
	bound int64
}

// AtLeast guards an [Table.Add] so that the new value is at least min: AtLeast(0) keeps a stock or a
// balance from going below zero.
func AtLeast(min int64) Guard { return Guard{op: ">=", bound: min} }

// AtMost guards an [Table.Add] so that the new value is at most max: a quota or a capacity.
func AtMost(max int64) Guard { return Guard{op: "<=", bound: max} }

// String returns the condition as SQL would read it on the new value: ">= 0", "<= 100".
func (g Guard) String() string { return g.op + " " + strconv.FormatInt(g.bound, 10) }

// GuardError is returned by [Table.Add] when the row exists but a [Guard] did not hold on the value the
// addition would have left: nothing was written. errors.Is(err, pgcc.ErrGuardFailed) holds.
type GuardError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// KeyColumns names the key columns, in the order of Key.
	KeyColumns []string
	// Key is the row's key.
	Key pgcc.Key
	// Column is the column Add would have changed.
	Column string
	// Delta is the amount Add would have added.
	Delta int64
	// Guards are the conditions, one of which failed.
	Guards []Guard
}

// Error implements error.
func (e *GuardError) Error() string {
	conds := make([]string, len(e.Guards))
	for i, g := range e.Guards {
		conds[i] = e.Column + " " + g.String()
	}
	return fmt.Sprintf("pgcc: guard failed: adding %d to %s of %s %s would break %s; nothing was written", e.Delta, e.Column, e.Table, pgcc.FormatKey(e.KeyColumns, e.Key), strings.Join(conds, " and "))
}

// Is matches [pgcc.ErrGuardFailed].
func (e *GuardError) Is(target error) bool { return target == pgcc.ErrGuardFailed }

// atomicKey identifies a cached atomic statement: the column and the guards' operators.
type atomicKey struct {
	col    int
	guards string
}

// Add adds delta to the integer column of the row with key in one statement that needs no read (Django's
// F() expressions):
//
//	UPDATE t SET column = column + delta, version = version + 1
//	WHERE key AND column + delta >= min … RETURNING *
//
// and returns the row as written. The version changes as [Table.Update] changes it (a counter is bumped, a
// timestamp moves on, xmin changes by itself), so that every holder of an older copy conflicts. Concurrent
// Adds on one row never lose an update and never read a stale value: PostgreSQL evaluates the expression and
// the guards on the newest committed row version, waiting for a concurrent writer of the row to finish. It is
// the right tool for commutative changes (counters, stock, balances) whose only condition is a bound on the
// result; a change that depends on other columns needs [Table.Modify] or a [Combiner].
//
// guards are checked on the new value in the same statement. When a guard fails nothing is written and the
// error is a [*GuardError] (errors.Is [pgcc.ErrGuardFailed]); a missing row is a [*pgcc.NotFoundError]. The two
// are told apart by a second statement that runs only when the first wrote nothing. column must be mapped
// to a field of an integer type, be neither a key nor the version column, and be NOT NULL in the database (a
// NULL value fails every guard, and cannot be scanned); anything else is refused with
// [pgcc.ErrInvalidArgument] before anything is sent. The statement for each column and set of guards is built
// once and cached in t.
//
// Outside a transaction a statement whose connection failed after it was sent is a
// [*pgcc.CommitUnknownError]: the addition may have been applied, and Add must not simply be repeated. One
// whose connection could not be made (the server down or out of connection slots) is a
// [*pgcc.ConnectionLostError]: nothing was sent. ctx governs both statements.
func (t *Table[T]) Add(ctx context.Context, db pgcc.DBTX, key pgcc.Key, column string, delta int64, guards ...Guard) (T, error) {
	var row T
	if err := t.check("Add", db); err != nil {
		return row, err
	}
	if err := t.checkKey("Add", key); err != nil {
		return row, err
	}
	pos := slices.Index(t.d.cols, column)
	switch {
	case pos < 0:
		return row, fmt.Errorf("%w: Add on %s: no column %q is mapped to a field", pgcc.ErrInvalidArgument, t.quoted, column)
	case pos == t.d.version:
		return row, fmt.Errorf("%w: Add on %s: %q is the version column, which the write itself sets", pgcc.ErrInvalidArgument, t.quoted, column)
	case t.d.isKey(pos):
		return row, fmt.Errorf("%w: Add on %s: %q is a key column, which identifies the row and is never updated", pgcc.ErrInvalidArgument, t.quoted, column)
	case !isInteger(t.fields[pos].typ):
		return row, fmt.Errorf("%w: Add on %s: the field for column %q is %v; Add needs an integer field", pgcc.ErrInvalidArgument, t.quoted, column, t.fields[pos].typ)
	}
	var ops strings.Builder
	for _, g := range guards {
		if g.op == "" {
			return row, fmt.Errorf("%w: Add on %s: a zero Guard (make guards with AtLeast or AtMost)", pgcc.ErrInvalidArgument, t.quoted)
		}
		ops.WriteString(g.op)
	}
	sql := t.atomicSQL(atomicKey{col: pos, guards: ops.String()})

	args := make([]any, 0, len(key)+1+len(guards))
	args = append(args, key...)
	args = append(args, delta)
	for _, g := range guards {
		args = append(args, g.bound)
	}
	v := reflect.ValueOf(&row).Elem()
	dest := make([]any, len(t.fields))
	for i, f := range t.fields {
		dest[i] = v.FieldByIndex(f.index).Addr().Interface()
	}
	err := db.QueryRow(ctx, sql, args...).Scan(dest...)
	if err == nil {
		t.track(v)
		return row, nil
	}
	var zero T
	if !errors.Is(err, pgx.ErrNoRows) {
		return zero, pgfail.Autocommit(db, fmt.Errorf("pgcc: add to %s of %s %s: %w", column, t.quoted, pgcc.FormatKey(t.keyCols, key), err))
	}
	notFound := &pgcc.NotFoundError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: slices.Clone(key)}
	if len(guards) == 0 {
		return zero, notFound
	}
	// The UPDATE saw no row that passed its guards. The probe (FOR SHARE) sees the newest committed version:
	// a row deleted meanwhile is not found, a row that exists failed a guard.
	_, found, err := t.probe(ctx, db, key)
	switch {
	case err != nil:
		return zero, fmt.Errorf("pgcc: add to %s of %s %s: telling a failed guard from a missing row: %w", column, t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	case !found:
		return zero, notFound
	}
	return zero, &GuardError{Table: t.quoted, KeyColumns: t.KeyColumns(), Key: slices.Clone(key), Column: column, Delta: delta, Guards: slices.Clone(guards)}
}

// isInteger reports whether typ is a signed or unsigned integer type.
func isInteger(typ reflect.Type) bool {
	switch typ.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// atomicSQL returns the cached statement of k, building it on first use.
func (t *Table[T]) atomicSQL(k atomicKey) string {
	if s, ok := t.atomic.Load(k); ok {
		return s.(string)
	}
	s, _ := t.atomic.LoadOrStore(k, t.d.addSQL(k.col, k.guards))
	return s.(string)
}

// addSQL is the atomic addition to the column at pos with guards (their operators, two bytes each, ">=" or
// "<="). Parameters: the key, the delta, then one bound per guard. It returns every column as Get reads them.
func (d *desc) addSQL(pos int, guards string) string {
	var b strings.Builder
	c := d.col("t", pos)
	delta := "$" + strconv.Itoa(len(d.key)+1)
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	b.WriteString(quote(d.cols[pos]) + " = " + c + " + " + delta)
	if d.kind != VersionXmin {
		b.WriteString(", " + quote(d.cols[d.version]) + " = " + d.nextVersion("t"))
	}
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, "t", 1) + 1
	for i := 0; i+1 < len(guards); i += 2 {
		b.WriteString(" AND " + c + " + " + delta + " " + guards[i:i+2] + " $" + strconv.Itoa(n))
		n++
	}
	b.WriteString(" RETURNING ")
	for i := range d.cols {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == d.version {
			b.WriteString(d.versionRead("t"))
			continue
		}
		b.WriteString(d.col("t", i))
	}
	return b.String()
}
