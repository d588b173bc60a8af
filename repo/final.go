package repo

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/finalwrite"
)

// This file queues a compare-and-swap as a final write of txn.Run, sent with COMMIT, when the caller passes
// the handle of txn.Last. A final write gets no answer before COMMIT, so the statement must make the server
// abort the transaction by itself when it matches no row; and what the write would have returned (the new
// version) must be known before it is sent, which holds for a counter version bumped unconditionally only.

// deferrable returns db's queue of final writes when db is a handle of txn.Last and t's writes can travel
// with COMMIT: a [VersionCounter] table, whose next version the client computes. It returns nil otherwise:
// the write is then sent at once. xmin is set by the server to the writing transaction's id, and a
// timestamp version is the server's clock; neither can be known before the write runs.
func (t *Table[T]) deferrable(db pgcc.DBTX) finalwrite.Queuer {
	if t.d.kind != VersionCounter {
		return nil
	}
	q, _ := db.(finalwrite.Queuer)
	return q
}

// queueFinal queues on q the compare-and-swap of row by sql (built by finalUpdateSQL), whose parameters are
// the columns at set, the key and row's version, and sets row's version to the one the write gives it: the
// next one with bump, else the same. With restore, a rollback of db's transaction puts the version back. A
// conflict the server reports at COMMIT becomes the [*pgcc.ConflictError] of op; retry lets txn.Run run the
// transaction again for it.
func (t *Table[T]) queueFinal(db pgcc.DBTX, q finalwrite.Queuer, row *T, op, sql string, set []int, bump, restore, retry bool) {
	v := reflect.ValueOf(row).Elem()
	vf := v.FieldByIndex(t.version.index)
	expected := t.versionValue(vf)
	args := t.values(make([]any, 0, len(set)+len(t.d.key)+1), v, set)
	args = t.keyArgs(args, v)
	args = append(args, t.versionArg(vf))
	key := t.keyValues(v)
	q.QueueFinalWrite(finalwrite.Write{SQL: sql, Args: args, Retry: retry,
		Failed: func(ctx context.Context, conn *pgx.Conn, err error) error {
			return t.finalFailed(ctx, db, conn, op, key, expected, err)
		}})
	if !bump {
		return
	}
	if restore {
		restoreOnRollback(db, vf, nil)
	}
	setInt(vf, expected.n+1)
}

// finalFailed is the error of a final compare-and-swap the server refused with err. Division by zero is the
// statement's own signal that it matched no row (see finalUpdateSQL): a conflict, whose current version is
// read on conn after the rollback, so that the error says what [Table.Update] would have said. Any other
// error is returned wrapped with the table and key.
func (t *Table[T]) finalFailed(ctx context.Context, db pgcc.DBTX, conn *pgx.Conn, op string, key pgcc.Key, expected version, err error) error {
	if pgcc.SQLState(err) != pgerrcode.DivisionByZero {
		return fmt.Errorf("pgcc: %s %s %s: %w", op, t.quoted, pgcc.FormatKey(t.keyCols, key), err)
	}
	ce := &pgcc.ConflictError{Table: t.quoted, Op: op, KeyColumns: t.KeyColumns(), Key: key, Expected: expected.n}
	actual, found, perr := t.probe(ctx, conn, []any(key))
	if perr != nil {
		// The conflict is certain; only the version found is not known.
		return fmt.Errorf("%w (the current version could not be read after the rollback: %w)", t.observeConflict(ctx, db, ce), perr)
	}
	ce.Actual, ce.Deleted = actual.n, !found
	return t.observeConflict(ctx, db, ce)
}

// finalUpdateSQL is the compare-and-swap of the columns at set as a final write, for a counter table.
// Parameters are those of updateSQL with the check: the columns, the key, the expected version. With bump the
// version is the old one plus one whether or not a value changes (the client must know it before the write
// runs); without, it is kept.
//
// The statement returns one row when it wrote one, and fails with division_by_zero (SQLSTATE 22012) when it
// matched none. The error is raised at execution: count(*) over the data-modifying WITH is not known when the
// statement is planned, so no constant folding can raise it early (as it would for 1/0 written out), and the
// UPDATE runs to completion before the SELECT reads its rows.
func (d *desc) finalUpdateSQL(set []int, bump bool) string {
	return "WITH w AS (" + d.casSQL(set, bump) + " RETURNING 1) SELECT 1 / count(*) FROM w"
}

// casSQL is the compare-and-swap of the columns at set for a counter table, with the parameters of updateSQL
// with the check: with bump the version is the old one plus one whether or not a value changes; without, it
// is kept. Nothing is returned: the client knows the version the write gives the row.
func (d *desc) casSQL(set []int, bump bool) string {
	var b strings.Builder
	b.WriteString("UPDATE ")
	b.WriteString(d.ident().Sanitize())
	b.WriteString(" AS t SET ")
	for i, pos := range set {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quote(d.cols[pos]) + " = $" + strconv.Itoa(i+1))
	}
	v := quote(d.cols[d.version])
	switch {
	case bump:
		if len(set) > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v + " = " + d.nextVersion("t"))
	case len(set) == 0:
		b.WriteString(v + " = t." + v)
	}
	b.WriteString(" WHERE ")
	n := d.whereKey(&b, "t", len(set)+1)
	d.whereVersion(&b, "t", n)
	return b.String()
}
