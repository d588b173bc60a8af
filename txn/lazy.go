package txn

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lazyTx is the transaction of an outermost [Run] on a connection Run holds itself. It begins nothing until
// fn sends its first statement: BEGIN and its SET LOCALs are then queued before that statement in one
// pipeline ([pgx.Batch.BeginTx]), so that they cost no round trip of their own, and a fn that sends nothing
// costs none at all. Once begun it is the pgx transaction that flight returned, and every method delegates
// to it.
//
// The methods that cannot travel with BEGIN (CopyFrom, Begin for a savepoint, LargeObjects, Conn, and a
// statement given options a batch does not take) begin eagerly, as pgx.BeginTx does, and then delegate.
// Conn in particular must begin first: a statement fn sends on the connection itself would otherwise run
// outside the transaction.
//
// A failure of BEGIN or of a SET LOCAL in the first flight is kept in beginErr: the transaction never began,
// every later call returns that error, and the attempt is classified as a failed BEGIN (a certain abort).
type lazyTx struct {
	ctx      context.Context // Run's, for the eager BEGIN of the methods that take no context
	conn     *pgx.Conn
	eager    pgx.TxOptions // BEGIN and its SET LOCALs as one simple-protocol statement, for an eager begin
	batch    pgx.TxOptions // BEGIN alone, for Batch.BeginTx
	prelude  []string      // the SET LOCALs, queued after BEGIN in the first flight
	tx       pgx.Tx        // the transaction once begun
	beginErr error         // why BEGIN failed; the transaction never began
	closed   bool          // committed or rolled back before anything was sent
}

var _ pgx.Tx = (*lazyTx)(nil)

// newLazyTx prepares a transaction with opts on conn, sending nothing.
func newLazyTx(ctx context.Context, conn *pgx.Conn, c *config, opts pgx.TxOptions) *lazyTx {
	l := &lazyTx{ctx: ctx, conn: conn, eager: opts, batch: opts, prelude: setLocals(c)}
	l.batch.BeginQuery = ""
	return l
}

// begun reports whether BEGIN was sent and succeeded.
func (l *lazyTx) begun() bool { return l.tx != nil }

// unusable is the error of a call on a transaction that cannot be used, nil when it can.
func (l *lazyTx) unusable() error {
	switch {
	case l.beginErr != nil:
		return l.beginErr
	case l.closed:
		return pgx.ErrTxClosed
	}
	return nil
}

// begin sends BEGIN (with its SET LOCALs) now, on its own, unless it has been sent.
func (l *lazyTx) begin(ctx context.Context) error {
	if l.tx != nil {
		return nil
	}
	if err := l.unusable(); err != nil {
		return err
	}
	tx, err := l.conn.BeginTx(ctx, l.eager)
	if err != nil {
		l.beginErr = err // a SET LOCAL that failed after BEGIN leaves a transaction for Rollback to end
		return err
	}
	l.tx = tx
	return nil
}

// beginNoContext is begin for the methods that take no context; a connection left outside a transaction
// by a failed BEGIN is closed, so that nothing fn sends on it runs outside the transaction.
func (l *lazyTx) beginNoContext() error {
	err := l.begin(l.ctx)
	if err != nil && !l.conn.IsClosed() && l.conn.PgConn().TxStatus() == 'I' {
		_ = l.conn.Close(context.WithoutCancel(l.ctx))
	}
	return err
}

// batchable reports whether the statement can be queued in a batch behind BEGIN as Conn.Exec or Conn.Query
// would send it: a batch takes no query-mode options, and a statement without arguments, which pgx sends
// with the simple protocol, may be several statements, which the extended protocol refuses.
func batchable(sql string, args []any) bool {
	if len(args) == 0 {
		return !strings.Contains(sql, ";")
	}
	switch args[0].(type) {
	case pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
		return false
	}
	return true
}

// send sends BEGIN, the SET LOCALs and what add queues in one flight and reads the results of the first two.
// On success the transaction has begun and the results of add's statements are next in the returned batch.
func (l *lazyTx) send(ctx context.Context, add func(b *pgx.Batch)) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	b.BeginTx(l.batch)
	for _, q := range l.prelude {
		b.Queue(q)
	}
	own := len(b.QueuedQueries)
	add(b)
	br := l.conn.SendBatch(ctx, b)
	tx := br.Tx()
	for range own {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, l.firstFailed(b.QueuedQueries[own:], err)
		}
	}
	l.tx = tx
	return br, nil
}

// firstFailed sorts out an error read from the BEGIN part of the first flight. An error preparing or
// encoding fn's own statement is that statement's: nothing was sent, the transaction has not begun, and fn
// gets the error as Conn.Exec would give it. Anything else is BEGIN's.
func (l *lazyTx) firstFailed(own []*pgx.QueuedQuery, err error) error {
	var pre pgx.ErrPreprocessingBatch
	if errors.As(err, &pre) && !l.conn.IsClosed() && l.conn.PgConn().TxStatus() == 'I' {
		for _, q := range own {
			if q.SQL == pre.SQL() {
				return pre.Unwrap()
			}
		}
	}
	l.beginErr = err
	return err
}

// Begin starts a savepoint, beginning the transaction first.
func (l *lazyTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := l.begin(ctx); err != nil {
		return nil, err
	}
	return l.tx.Begin(ctx)
}

// Commit commits the transaction; one that never began has nothing to commit.
func (l *lazyTx) Commit(ctx context.Context) error {
	if l.tx != nil {
		return l.tx.Commit(ctx)
	}
	if err := l.unusable(); err != nil {
		return err
	}
	l.closed = true
	return nil
}

// Rollback rolls the transaction back. One that never began has nothing to roll back; one whose BEGIN
// succeeded and a SET LOCAL after it failed is ended with ROLLBACK, and its connection closed if that fails.
func (l *lazyTx) Rollback(ctx context.Context) error {
	switch {
	case l.tx != nil:
		return l.tx.Rollback(ctx)
	case l.closed:
		return pgx.ErrTxClosed
	}
	l.closed = true
	if l.beginErr != nil && !l.conn.IsClosed() && l.conn.PgConn().TxStatus() != 'I' {
		if _, err := l.conn.Exec(ctx, "ROLLBACK"); err != nil {
			_ = l.conn.Close(ctx)
			return err
		}
	}
	return nil
}

// open gives an attempt its transaction and the connection it runs on, and release, to call when the
// attempt has ended. On a pool or a single connection (unless the transaction records an idempotency key,
// whose INSERT must be checked before fn runs) the transaction is a [lazyTx]: nothing is sent yet.
func (r *runner) open(ctx context.Context, opts pgx.TxOptions) (raw pgx.Tx, conn *pgx.Conn, release func(), err error) {
	if !r.keyed {
		switch db := r.db.(type) {
		case *pgxpool.Pool:
			pc, err := db.Acquire(ctx)
			if err != nil {
				return nil, nil, nil, err
			}
			return newLazyTx(ctx, pc.Conn(), r.cfg, opts), pc.Conn(), pc.Release, nil
		case *pgx.Conn, *pgxpool.Conn:
			return newLazyTx(ctx, r.conn, r.cfg, opts), r.conn, func() {}, nil
		}
	}
	raw, err = r.begin(ctx, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	return raw, raw.Conn(), func() {}, nil
}

// endsUnbegun reports whether the attempt ends without its transaction having begun: BEGIN failed, or fn
// returned without sending anything (and queued no [Final] write, which would carry BEGIN with COMMIT).
func (l *lazyTx) endsUnbegun(fnErr error, tx *managed) bool {
	return !l.begun() && (fnErr != nil || l.beginErr != nil || len(tx.final) == 0)
}

// notBegun ends an attempt whose lazy transaction never began: its BEGIN failed (a certain abort, classified
// as a failed BEGIN), or fn sent nothing, so that there is nothing to commit.
func (r *runner) notBegun(ctx context.Context, l *lazyTx, tx *managed, conn *pgx.Conn, fnErr error) (kind outcome, committed bool, err error) {
	switch {
	case l.beginErr != nil:
		kind, err = r.beginFailed(ctx, l.beginErr)
		if kind != final && fnErr != nil {
			err = fnErr // fn's own error, which carries BEGIN's
		}
		return kind, false, err
	case fnErr != nil:
		kind, err = r.fnFailed(ctx, conn, fnErr)
		return kind, false, err
	}
	l.closed = true
	tx.committed(ctx)
	return failed, true, nil
}

// CopyFrom begins the transaction and copies.
func (l *lazyTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := l.begin(ctx); err != nil {
		return 0, err
	}
	return l.tx.CopyFrom(ctx, table, columns, src)
}

// SendBatch sends b, behind BEGIN when the transaction has not begun.
func (l *lazyTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if l.tx != nil {
		return l.tx.SendBatch(ctx, b)
	}
	if err := l.unusable(); err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	if b.Len() == 0 || pgx.FailedBatchResults(b, nil).Tx() != nil {
		// Nothing to carry BEGIN, or a batch that begins a transaction of its own, which the transaction
		// refuses: both as the begun transaction answers them.
		if err := l.begin(ctx); err != nil {
			return pgx.FailedBatchResults(b, err)
		}
		return l.tx.SendBatch(ctx, b)
	}
	br, err := l.send(ctx, func(nb *pgx.Batch) { nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...) })
	if err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return batchOnly{br}
}

// batchOnly hides the transaction a batch began from the caller, whose batch began none.
type batchOnly struct{ pgx.BatchResults }

func (batchOnly) Tx() pgx.Tx { return nil }

// LargeObjects begins the transaction and returns its large objects. If BEGIN fails, it returns those of a
// closed transaction, whose every method fails with [pgx.ErrTxClosed].
func (l *lazyTx) LargeObjects() pgx.LargeObjects {
	if err := l.beginNoContext(); err != nil {
		b := &pgx.Batch{}
		b.BeginTx(pgx.TxOptions{})
		return pgx.FailedBatchResults(b, err).Tx().LargeObjects()
	}
	return l.tx.LargeObjects()
}

// Prepare prepares sql on the connection; a prepared statement belongs to the session, not the transaction,
// so nothing needs to begin.
func (l *lazyTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if l.tx != nil {
		return l.tx.Prepare(ctx, name, sql)
	}
	if err := l.unusable(); err != nil {
		return nil, err
	}
	return l.conn.Prepare(ctx, name, sql)
}

// Exec runs sql, behind BEGIN when the transaction has not begun.
func (l *lazyTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if l.tx != nil {
		return l.tx.Exec(ctx, sql, args...)
	}
	if err := l.unusable(); err != nil {
		return pgconn.CommandTag{}, err
	}
	if !batchable(sql, args) {
		if err := l.begin(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
		return l.tx.Exec(ctx, sql, args...)
	}
	br, err := l.send(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

// Query runs sql, behind BEGIN when the transaction has not begun.
func (l *lazyTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if l.tx != nil {
		return l.tx.Query(ctx, sql, args...)
	}
	if err := l.unusable(); err != nil {
		return errRows{err: err, conn: l.conn}, err
	}
	if !batchable(sql, args) {
		if err := l.begin(ctx); err != nil {
			return errRows{err: err, conn: l.conn}, err
		}
		return l.tx.Query(ctx, sql, args...)
	}
	br, err := l.send(ctx, func(b *pgx.Batch) { b.Queue(sql, args...) })
	if err != nil {
		return errRows{err: err, conn: l.conn}, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return errRows{err: err, conn: l.conn}, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

// QueryRow runs sql, behind BEGIN when the transaction has not begun.
func (l *lazyTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if l.tx != nil {
		return l.tx.QueryRow(ctx, sql, args...)
	}
	rows, _ := l.Query(ctx, sql, args...)
	return lazyRow{rows}
}

// Conn begins the transaction and returns its connection: what fn sends on it must run inside.
func (l *lazyTx) Conn() *pgx.Conn {
	_ = l.beginNoContext() // the error reaches fn from its next statement, and Run from beginErr
	return l.conn
}

// batchRows are the rows of the first flight's statement; closing them reads the rest of the flight.
type batchRows struct {
	pgx.Rows
	br     pgx.BatchResults
	err    error
	closed bool
}

func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *batchRows) Close() {
	if r.closed {
		return
	}
	r.closed = true
	r.Rows.Close()
	r.err = r.br.Close()
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.err
}

// lazyRow is the pgx.Row of QueryRow sent with BEGIN; Scan behaves as pgx's.
type lazyRow struct{ rows pgx.Rows }

func (r lazyRow) Scan(dest ...any) error {
	if err := r.rows.Err(); err != nil {
		r.rows.Close()
		return err
	}
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		r.rows.Close()
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// errRows are the rows of a query that could not be sent.
type errRows struct {
	err  error
	conn *pgx.Conn
}

func (r errRows) Close()                                       {}
func (r errRows) Err() error                                   { return r.err }
func (r errRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (r errRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (r errRows) Next() bool                                   { return false }
func (r errRows) Scan(...any) error                            { return r.err }
func (r errRows) Values() ([]any, error)                       { return nil, r.err }
func (r errRows) RawValues() [][]byte                          { return nil }
func (r errRows) Conn() *pgx.Conn                              { return r.conn }
func (r errRows) TypeMap() *pgtype.Map                         { return nil }
