package lock

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// Table describes a table whose rows can be locked by key. A *repo.Table[T] satisfies it; so does any small
// type that returns constants.
type Table interface {
	// Identifier is the table's name, schema-qualified or not.
	Identifier() pgx.Identifier
	// KeyColumns are the columns of the key rows are locked by, usually the primary key.
	KeyColumns() []string
	// SelectColumns are the columns [Load] and [Claim] read, named like the fields of the row struct.
	SelectColumns() []string
}

// Rows locks the rows of t with the given keys in tx, in one statement, and returns the keys of the rows it
// locked, in the canonical order (ascending by key), as pgx decodes the key columns (an int column gives
// int32, a text column string). Keys with no row are left out, and so are rows another transaction holds
// when the wait policy is [SkipLocked].
//
// The rows are locked in ascending key order whatever the order of keys, so two transactions locking
// overlapping sets never deadlock with each other through this call. The statement is
//
//	SELECT <key columns> FROM <table> WHERE <key> = ANY($1) ORDER BY <key columns> FOR UPDATE [NOWAIT|SKIP LOCKED]
//
// (with a row comparison for multi-column keys) under the strength and wait policy of the options.
//
// ctx bounds the wait for the locks: a deadline becomes the statement's lock_timeout, and cancellation makes
// the server abort the wait while the connection stays usable (the transaction is then aborted and must be
// rolled back). A lock that was not granted is a [*pgcc.LockError]: errors.Is [pgcc.ErrLockNotAvailable] for NOWAIT
// and timeouts, [pgcc.ErrDeadlock] for a deadlock, context.Canceled or context.DeadlineExceeded when ctx ended.
func Rows(ctx context.Context, tx pgx.Tx, t Table, keys []pgcc.Key, opts ...Option) ([]pgcc.Key, error) {
	cfg, err := newConfig(useRows, opts)
	if err != nil {
		return nil, err
	}
	req, err := buildLock(t, keys, cfg, t.KeyColumns())
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	var locked []pgcc.Key
	req.Scan = func(rows pgx.Rows) error {
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return err
			}
			locked = append(locked, pgcc.Key(v))
		}
		return rows.Err()
	}
	if err := lockwait.Run(ctx, cfg.bounds(), tx.Conn(), req); err != nil {
		return nil, err
	}
	return locked, nil
}

// Row locks the row of t with key in tx, as [Rows] does for one key. It returns [pgcc.ErrNotFound] ([*pgcc.NotFoundError]) when no such
// row exists or, under [SkipLocked], when another transaction holds it.
func Row(ctx context.Context, tx pgx.Tx, t Table, key pgcc.Key, opts ...Option) error {
	locked, err := Rows(ctx, tx, t, []pgcc.Key{key}, opts...)
	if err != nil {
		return err
	}
	if len(locked) == 0 {
		return &pgcc.NotFoundError{Table: t.Identifier().Sanitize(), KeyColumns: t.KeyColumns(), Key: key}
	}
	return nil
}

// Load locks the rows of t with the given keys, as [Rows] does, and returns them as T values, in ascending
// key order: the select_for_update of Django or lock! of Rails. T's fields are matched to
// [Table.SelectColumns] by name, as pgx.RowToStructByName does.
func Load[T any](ctx context.Context, tx pgx.Tx, t Table, keys []pgcc.Key, opts ...Option) ([]T, error) {
	cfg, err := newConfig(useRows, opts)
	if err != nil {
		return nil, err
	}
	req, err := buildLock(t, keys, cfg, t.SelectColumns())
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	var out []T
	req.Scan = func(rows pgx.Rows) error {
		out, err = pgx.CollectRows(rows, pgx.RowToStructByName[T])
		return err
	}
	if err := lockwait.Run(ctx, cfg.bounds(), tx.Conn(), req); err != nil {
		return nil, err
	}
	return out, nil
}

// Claim locks and returns up to limit rows of t that no other transaction holds, in ascending key order,
// optionally only rows matching a [Where] predicate: the work-queue pattern. Concurrent claimers get disjoint
// rows (FOR UPDATE SKIP LOCKED); each keeps its rows until its transaction ends, so a claimer that deletes or
// marks its rows before committing processes every row exactly once. The statement is
//
//	SELECT <select columns> FROM <table> [WHERE <predicate>] ORDER BY <key columns> LIMIT $n FOR UPDATE SKIP LOCKED
//
// Claim takes [WithStrength], [Where] and [WithTimeout]. It never waits for a row; ctx and the timeout
// bound the statement, including a wait for a table-level lock (a concurrent ALTER TABLE, say).
func Claim[T any](ctx context.Context, tx pgx.Tx, t Table, limit int, opts ...Option) ([]T, error) {
	cfg, err := newConfig(useClaim, opts)
	if err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, fmt.Errorf("%w: Claim needs a limit of at least 1, got %d", pgcc.ErrInvalidArgument, limit)
	}
	if err := checkTable(t, t.SelectColumns()); err != nil {
		return nil, err
	}
	ident := t.Identifier().Sanitize()
	var b strings.Builder
	b.WriteString("SELECT ")
	lockwait.WriteColumns(&b, t.SelectColumns())
	b.WriteString(" FROM ")
	b.WriteString(ident)
	if cfg.where != "" {
		b.WriteString(" WHERE (")
		b.WriteString(cfg.where)
		b.WriteString(")")
	}
	b.WriteString(" ORDER BY ")
	lockwait.WriteColumns(&b, t.KeyColumns())
	b.WriteString(" LIMIT $")
	b.WriteString(strconv.Itoa(len(cfg.whereArgs) + 1))
	b.WriteString(" ")
	b.WriteString(cfg.strength.String())
	b.WriteString(" SKIP LOCKED")
	args := append(append(make([]any, 0, len(cfg.whereArgs)+1), cfg.whereArgs...), limit)

	var out []T
	req := lockwait.Request{
		SQL: b.String(), Args: args, InTx: true,
		Scan: func(rows pgx.Rows) error {
			out, err = pgx.CollectRows(rows, pgx.RowToStructByName[T])
			return err
		},
		Describe: func(e *pgcc.LockError) { e.Table, e.KeyColumns = ident, t.KeyColumns() },
	}
	if err := lockwait.Run(ctx, cfg.bounds(), tx.Conn(), req); err != nil {
		return nil, err
	}
	return out, nil
}

// buildLock builds the lock statement for keys of t, reading cols. One key of one column is matched with = $1,
// several with = ANY($1) (one statement text per table and mode either way, so pgx's statement cache
// prepares each once); multi-column keys with a row-value IN list.
func buildLock(t Table, keys []pgcc.Key, cfg *config, cols []string) (lockwait.Request, error) {
	if err := checkTable(t, cols); err != nil {
		return lockwait.Request{}, err
	}
	keyCols := t.KeyColumns()
	for _, k := range keys {
		if len(k) != len(keyCols) {
			return lockwait.Request{}, fmt.Errorf("%w: key %v has %d values, table %s has %d key columns", pgcc.ErrInvalidArgument, k, len(k), t.Identifier().Sanitize(), len(keyCols))
		}
	}
	ident := t.Identifier().Sanitize()
	var b strings.Builder
	b.Grow(128)
	b.WriteString("SELECT ")
	lockwait.WriteColumns(&b, cols)
	b.WriteString(" FROM ")
	b.WriteString(ident)
	b.WriteString(" WHERE ")
	args := lockwait.WriteKeyCondition(&b, keyCols, keys, 1)
	b.WriteString(" ORDER BY ")
	lockwait.WriteColumns(&b, keyCols)
	b.WriteString(" ")
	b.WriteString(cfg.strength.String())
	if w := cfg.wait.String(); w != "" {
		b.WriteString(" ")
		b.WriteString(w)
	}
	return lockwait.Request{
		SQL: b.String(), Args: args, InTx: true,
		Describe: func(e *pgcc.LockError) { e.Table, e.KeyColumns, e.Keys = ident, keyCols, keys },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			return lockwait.RowBlockers(ctx, db, self, ident, keyCols, keys)
		},
	}, nil
}

func checkTable(t Table, cols []string) error {
	if t == nil {
		return fmt.Errorf("%w: no table", pgcc.ErrInvalidArgument)
	}
	if len(t.Identifier()) == 0 || len(t.KeyColumns()) == 0 || len(cols) == 0 {
		return fmt.Errorf("%w: table %q needs a name, key columns and columns to read", pgcc.ErrInvalidArgument, t.Identifier())
	}
	return nil
}
