package lock

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// Rows locks the rows of t with the given keys in tx, in one statement, and returns the keys of the rows it
// locked, as the caller gave them and in the order asked.
//
// A key without a row is an error, a [*MissingError] listing every such key (errors.Is [pgcc.ErrNotFound]),
// unless [AllowMissing] is given or the wait policy is [SkipLocked] (which leaves out rows another
// transaction holds, and cannot tell them from missing ones): those keys are then left out of the result. The
// rows that were found stay locked either way.
//
// The rows are locked in ascending key order whatever the order of keys, so two transactions locking
// overlapping sets never deadlock with each other through this call. The strength is [ForNoKeyUpdate] unless
// [WithStrength] says otherwise. Any number of keys, of any number of columns, is one statement with one
// parameter per key column (typed arrays), so it works with every pgx query exec mode, behind PgBouncer too.
// Key values are checked first: one per key column, none NULL, the values of a column of one kind, and a
// floating-point value only if integral (except for a [TableDef] with a float key field); a refusal matches
// [pgcc.ErrInvalidArgument] and nothing is sent.
//
// ctx bounds the wait for the locks: its deadline (when sooner than [WithTimeout], or the lock_timeout in
// force) becomes the statement's lock_timeout, and cancellation makes the server abort the wait while the
// connection stays usable (the transaction is then aborted and must be rolled back). A lock that was not
// granted is a [*pgcc.LockError]: errors.Is [pgcc.ErrLockNotAvailable] for NOWAIT and timeouts,
// [pgcc.ErrDeadlock] for a deadlock, context.Canceled or context.DeadlineExceeded when ctx ended.
func Rows(ctx context.Context, tx pgx.Tx, t Table, keys []pgcc.Key, opts ...Option) ([]pgcc.Key, error) {
	cfg, ks, d, err := prepareKeys(useRows, tx, t, keys, false, opts)
	if err != nil || ks.Len() == 0 {
		return nil, err
	}
	found := make([]bool, ks.Len())
	req := d.keyedRequest(ks, nil, cfg)
	req.Scan = func(rows pgx.Rows) error {
		for rows.Next() {
			ord := int64(1)
			if ks.Ordinal() {
				if err := rows.Scan(&ord); err != nil {
					return err
				}
			}
			found[ord-1] = true
		}
		return rows.Err()
	}
	if err := lockwait.Run(ctx, cfg.bounds(tx), tx, req); err != nil {
		return nil, err
	}
	locked := make([]pgcc.Key, 0, len(keys))
	for i, k := range keys {
		if found[i] {
			locked = append(locked, k)
		}
	}
	if err := d.missing(cfg, keys, found); err != nil {
		return nil, err
	}
	return locked, nil
}

// Row locks the row of t with key in tx, as [Rows] does for one key. It returns a [*pgcc.NotFoundError]
// (errors.Is [pgcc.ErrNotFound]) when no such row exists or, under [SkipLocked], when another transaction
// holds it.
func Row(ctx context.Context, tx pgx.Tx, t Table, key pgcc.Key, opts ...Option) error {
	cfg, ks, d, err := prepareKeys(useRow, tx, t, []pgcc.Key{key}, false, opts)
	if err != nil {
		return err
	}
	found := false
	req := d.keyedRequest(ks, nil, cfg)
	req.Scan = func(rows pgx.Rows) error {
		found = rows.Next()
		return rows.Err()
	}
	if err := lockwait.Run(ctx, cfg.bounds(tx), tx, req); err != nil {
		return err
	}
	if !found {
		return &pgcc.NotFoundError{Table: d.ident, KeyColumns: d.keyCols, Key: key}
	}
	return nil
}

// Load locks the rows of t with the given keys, as [Rows] does, and returns them as T values in the order
// asked: rows[i] is the row of keys[i] (a key given twice gives its row twice), the select_for_update of
// Django or lock! of Rails. A key without a row is a [*MissingError] unless [AllowMissing] or [SkipLocked]
// is given; the result then has only the rows found, still in the order of their keys.
//
// T is inferred from t (a *repo.Table[T] or a [*TableDef][T]). T's fields are matched to
// [Table.SelectColumns] by name, as pgx.RowToStructByName does; a mismatch is an error naming the table and
// T. Locking happens in ascending key order whatever the order asked.
func Load[T any](ctx context.Context, tx pgx.Tx, t TableOf[T], keys []pgcc.Key, opts ...Option) ([]T, error) {
	cfg, err := newConfig(useRows, opts)
	if err != nil {
		return nil, err
	}
	return load(ctx, tx, t, keys, cfg)
}

// load is [Load] with its options applied.
func load[T any](ctx context.Context, tx pgx.Tx, t TableOf[T], keys []pgcc.Key, cfg *config) ([]T, error) {
	ks, d, err := checkKeys(tx, t, keys, true)
	if err != nil || ks.Len() == 0 {
		return nil, err
	}
	out := make([]T, ks.Len())
	found := make([]bool, ks.Len())
	req := d.keyedRequest(ks, d.cols, cfg)
	req.Scan = func(rows pgx.Rows) error {
		for rows.Next() {
			ord := int64(1)
			var row pgx.CollectableRow = rows
			if ks.Ordinal() {
				row = ordinalRow{rows, &ord}
			}
			v, err := pgx.RowToStructByName[T](row)
			if err != nil {
				return scanError[T](d.ident, err)
			}
			out[ord-1], found[ord-1] = v, true
		}
		return rows.Err()
	}
	if err := lockwait.Run(ctx, cfg.bounds(tx), tx, req); err != nil {
		return nil, err
	}
	if err := d.missing(cfg, keys, found); err != nil {
		return nil, err
	}
	n := 0
	for i := range out {
		if found[i] {
			out[n] = out[i]
			n++
		}
	}
	return out[:n], nil
}

// Select locks and returns the rows of t that match a [Where] predicate (all rows without one), in the order
// of [OrderBy] (the key columns by default), at most [Limit] of them: Django's
// filter(…).order_by(…).select_for_update()[:n]. Unlike [Claim] it waits for rows other transactions hold,
// unless [WithWait] says otherwise. The statement is
//
//	SELECT <select columns> FROM <table> [WHERE (<predicate>)] ORDER BY <order> [LIMIT $n] FOR <strength> [NOWAIT|SKIP LOCKED]
//
// PostgreSQL evaluates the predicate before locking and, for a row it had to wait for, again on the version
// it finally locks: a row changed meanwhile so that it no longer matches is left out, and the limit is filled
// from the next matching rows (locking stops once enough rows are locked). A row whose ORDER BY columns
// changed while it was waited for keeps its place from before the change, so the result can be out of order
// in that case (PostgreSQL's documented caveat). ctx bounds the wait as in [Rows]. With [WithDiagnostics], a
// failed wait reports the holders of the first thousand matching rows.
func Select[T any](ctx context.Context, tx pgx.Tx, t TableOf[T], opts ...Option) ([]T, error) {
	cfg, err := newConfig(useSelect, opts)
	if err != nil {
		return nil, err
	}
	return selectRows[T](ctx, tx, t, cfg, "Select")
}

// Claim locks and returns up to limit rows of t that no other transaction holds, optionally only rows
// matching a [Where] predicate, in the order of [OrderBy] (the key columns by default): the work-queue
// pattern. Concurrent claimers get disjoint rows (SKIP LOCKED); each keeps its rows until its transaction
// ends, so a claimer that deletes or marks its rows before committing processes every row exactly once. The
// statement is
//
//	SELECT <select columns> FROM <table> [WHERE (<predicate>)] ORDER BY <order> LIMIT $n FOR NO KEY UPDATE SKIP LOCKED
//
// A queue table without a version column is described with [NewTable]. Claim takes [WithStrength], [Where],
// [OrderBy], [WithTimeout] and [WithDiagnostics]. It never waits for a row; ctx and the timeout bound the
// statement, including a wait for a table-level lock (a concurrent ALTER TABLE, say).
func Claim[T any](ctx context.Context, tx pgx.Tx, t TableOf[T], limit int, opts ...Option) ([]T, error) {
	cfg, err := newConfig(useClaim, opts)
	if err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, fmt.Errorf("%w: Claim needs a limit of at least 1, got %d", pgcc.ErrInvalidArgument, limit)
	}
	cfg.limit, cfg.limitSet = limit, true
	return selectRows[T](ctx, tx, t, cfg, "Claim")
}

func selectRows[T any](ctx context.Context, tx pgx.Tx, t TableOf[T], cfg *config, fn string) ([]T, error) {
	if err := checkTx(tx); err != nil {
		return nil, err
	}
	d, err := describe(t, true)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("SELECT ")
	lockwait.WriteColumns(&b, d.cols)
	b.WriteString(" FROM ")
	b.WriteString(d.ident)
	from := b.Len()
	if cfg.whereSet {
		b.WriteString(" WHERE (")
		b.WriteString(cfg.where)
		b.WriteString(")")
	}
	b.WriteString(" ORDER BY ")
	if cfg.orderBy != "" {
		b.WriteString(cfg.orderBy)
	} else {
		lockwait.WriteColumns(&b, d.keyCols)
	}
	filtered := b.String()[from:]
	args := append(make([]any, 0, len(cfg.whereArgs)+1), cfg.whereArgs...)
	if cfg.limitSet {
		b.WriteString(" LIMIT $")
		b.WriteString(strconv.Itoa(len(args) + 1))
		args = append(args, cfg.limit)
	}
	b.WriteString(" ")
	b.WriteString(cfg.strength.String())
	if w := cfg.wait.String(); w != "" {
		b.WriteString(" ")
		b.WriteString(w)
	}
	var out []T
	req := lockwait.Request{
		SQL: b.String(), Args: args, InTx: true, NoWait: cfg.wait == NoWait,
		Scan: func(rows pgx.Rows) error {
			for rows.Next() {
				v, err := pgx.RowToStructByName[T](rows)
				if err != nil {
					return scanError[T](d.ident, err)
				}
				out = append(out, v)
			}
			return rows.Err()
		},
		Describe: func(e *pgcc.LockError) { e.Table, e.KeyColumns = d.ident, d.keyCols },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			xmax := "SELECT xmax FROM " + d.ident + filtered + " LIMIT 1000"
			return lockwait.RowBlockersFrom(ctx, db, self, d.ident, xmax, cfg.whereArgs)
		},
	}
	if err := lockwait.Run(ctx, cfg.bounds(tx), tx, req); err != nil {
		return nil, err
	}
	return out, nil
}

// prepareKeys applies the options and checks the transaction, the table and the keys, before anything is
// sent.
func prepareKeys(u use, tx pgx.Tx, t Table, keys []pgcc.Key, withCols bool, opts []Option) (*config, lockwait.KeySet, described, error) {
	cfg, err := newConfig(u, opts)
	if err != nil {
		return nil, lockwait.KeySet{}, described{}, err
	}
	ks, d, err := checkKeys(tx, t, keys, withCols)
	return cfg, ks, d, err
}

// checkKeys checks the transaction, the table and the keys, before anything is sent.
func checkKeys(tx pgx.Tx, t Table, keys []pgcc.Key, withCols bool) (lockwait.KeySet, described, error) {
	var ks lockwait.KeySet
	if err := checkTx(tx); err != nil {
		return ks, described{}, err
	}
	d, err := describe(t, withCols)
	if err != nil {
		return ks, d, err
	}
	ks, err = lockwait.NewKeySet(d.ident, d.keyCols, keys, d.floatOK)
	return ks, d, err
}

// keyedRequest builds the lock statement for the keys of ks, reading cols (none for Rows and Row):
//
//	SELECT [k.ord,] <cols> FROM <table> t <keys> [ORDER BY <key columns>] FOR <strength> OF t [NOWAIT|SKIP LOCKED]
func (d described) keyedRequest(ks lockwait.KeySet, cols []string, cfg *config) lockwait.Request {
	var b strings.Builder
	b.Grow(256)
	args := ks.WriteSelect(&b, cols, 1)
	if ks.Ordinal() {
		b.WriteString(" ORDER BY ")
		lockwait.WriteQualified(&b, "t", d.keyCols)
	}
	b.WriteString(" ")
	b.WriteString(cfg.strength.String())
	b.WriteString(" OF t")
	if w := cfg.wait.String(); w != "" {
		b.WriteString(" ")
		b.WriteString(w)
	}
	keys := ks.Keys()
	return lockwait.Request{
		SQL: b.String(), Args: args, InTx: true, NoWait: cfg.wait == NoWait,
		Describe: func(e *pgcc.LockError) { e.Table, e.KeyColumns, e.Keys = d.ident, d.keyCols, keys },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			return lockwait.RowBlockers(ctx, db, self, ks)
		},
	}
}

// missing returns the error for the keys without a row, if that is an error under cfg.
func (d described) missing(cfg *config, keys []pgcc.Key, found []bool) error {
	if cfg.allowMissing || cfg.wait == SkipLocked {
		return nil
	}
	var absent []pgcc.Key
	for i, k := range keys {
		if !found[i] {
			absent = append(absent, k)
		}
	}
	if len(absent) == 0 {
		return nil
	}
	return &MissingError{Table: d.ident, KeyColumns: d.keyCols, Keys: absent}
}

// MissingError reports keys given to [Rows] or [Load] that have no row. errors.Is(err, pgcc.ErrNotFound)
// holds, and errors.As finds a [*pgcc.NotFoundError] naming the first missing key.
type MissingError struct {
	// Table is the table, as its quoted SQL name.
	Table string
	// KeyColumns names the key columns.
	KeyColumns []string
	// Keys are the keys without a row, in the order asked.
	Keys []pgcc.Key
}

// Error implements error: `pgcc: "accounts" id=7, id=9 not found`.
func (e *MissingError) Error() string {
	var b strings.Builder
	b.WriteString("pgcc: ")
	b.WriteString(e.Table)
	b.WriteString(" ")
	for i, k := range e.Keys {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(pgcc.FormatKey(e.KeyColumns, k))
	}
	b.WriteString(" not found")
	return b.String()
}

// Is matches [pgcc.ErrNotFound].
func (e *MissingError) Is(target error) bool { return target == pgcc.ErrNotFound }

// Unwrap returns a [*pgcc.NotFoundError] for the first missing key.
func (e *MissingError) Unwrap() error {
	if len(e.Keys) == 0 {
		return nil
	}
	return &pgcc.NotFoundError{Table: e.Table, KeyColumns: e.KeyColumns, Key: e.Keys[0]}
}

// ordinalRow is a row whose first column, the position of the key it matched, is scanned into ord and hidden
// from the struct scan.
type ordinalRow struct {
	pgx.Rows
	ord *int64
}

func (r ordinalRow) FieldDescriptions() []pgconn.FieldDescription {
	return r.Rows.FieldDescriptions()[1:]
}

func (r ordinalRow) Scan(dest ...any) error {
	return r.Rows.Scan(append([]any{r.ord}, dest...)...)
}

func (r ordinalRow) Values() ([]any, error) {
	v, err := r.Rows.Values()
	if err != nil || len(v) == 0 {
		return v, err
	}
	return v[1:], nil
}

func (r ordinalRow) RawValues() [][]byte { return r.Rows.RawValues()[1:] }

// scanError names the table and the row type in pgx's scan error ("struct doesn't have corresponding row
// field owner"), which names neither.
func scanError[T any](ident string, err error) error {
	return fmt.Errorf("pgcc: reading rows of %s into %v: %w (the table's SelectColumns and the struct's fields must match)",
		ident, reflect.TypeFor[T](), err)
}
