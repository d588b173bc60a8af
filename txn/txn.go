package txn

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgfail"
)

// txBeginner is the part of a pool or connection that can start a transaction with options.
type txBeginner interface {
	BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error)
}

// acquirer is a pool: each Acquire may give a fresh connection.
type acquirer interface {
	Acquire(ctx context.Context) (*pgxpool.Conn, error)
}

var (
	_ acquirer   = (*pgxpool.Pool)(nil)
	_ txBeginner = (*pgxpool.Pool)(nil)
	_ txBeginner = (*pgxpool.Conn)(nil)
	_ txBeginner = (*pgx.Conn)(nil)
)

// rollbackTimeout bounds the ROLLBACK sent after a failed attempt. It runs on a context detached from the
// caller's, so that a cancelled caller still leaves a clean connection behind when the server answers.
const rollbackTimeout = 5 * time.Second

// Run runs fn in a transaction on db and commits it. If fn returns an error or panics, the transaction is
// rolled back and the error returned unchanged (the panic continues after the rollback).
//
// When db is a pool or a connection, Run starts a new transaction, the outermost one, and retries the whole of
// it (BEGIN, fn, COMMIT) while PostgreSQL reports an error that [Retryable] accepts (or the predicate given
// by [RetryIf]), up to the attempts, backoff and deadline allowed. fn must therefore be safe to run again:
// everything it does through tx is rolled back before a retry, but side effects outside the database are
// not. A retry starts from a fresh transaction, so fn must re-read what it decides on.
//
// On a pool (a *pgxpool.Pool, or a type embedding one), a transaction that certainly did not commit because
// its connection failed before COMMIT was sent (a terminated backend, a reset, SQLSTATE class 08, 57P01,
// 57P02, 57P03) is retried on a fresh connection under the same policy, and so are failures to connect or
// BEGIN while the server restarts, and a write refused by a server that has become read-only (SQLSTATE 25006
// in a transaction not begun [ReadOnly]: that connection is closed, so that the pool opens a new one). On a
// single connection (a *pgx.Conn or *pgxpool.Conn), which cannot be replaced, such a failure is returned as a
// [*pgcc.ConnectionLostError].
//
// A COMMIT that was, or may have been, sent and got no answer has an unknown outcome. Run never retries it
// on its own: it returns a [*pgcc.CommitUnknownError], unless the transaction carries an idempotency key
// ([WithIdempotencyKey]), with which Run finds out, or fn is declared [Idempotent].
//
// When db is a pgx.Tx, Run is nested: fn runs in a savepoint (SAVEPOINT … RELEASE), an error rolls back to
// the savepoint and leaves the outer transaction usable, and nothing is retried, since a conflict aborts the
// outer transaction, which only its owner can retry. Options belong to the outermost call: a nested Run given
// any (isolation, access mode, timeouts, retry policy, idempotency key) returns an error matching
// [pgcc.ErrInvalidArgument] that names them, and with [Outermost] it refuses to nest at all.
//
// ctx governs every statement (BEGIN, fn's queries if fn passes it on, COMMIT, the look-up of an idempotency
// key) and the sleeps between attempts: when it ends, Run returns promptly with an [*pgcc.InterruptedError].
// Run never starts a sleep that would end past ctx's deadline; it returns at once instead.
//
// Errors, besides fn's own:
//   - [*pgcc.RetriesExhaustedError] (errors.Is [pgcc.ErrRetriesExhausted]) when the last attempt failed
//     retryably; it also matches that attempt's condition ([pgcc.ErrSerialization], [pgcc.ErrConnectionLost], …);
//   - [*pgcc.InterruptedError] when ctx ended;
//   - [*pgcc.CommitUnknownError] (errors.Is [pgcc.ErrCommitUnknown]) when COMMIT was sent but no answer came
//     and no idempotency key settled the outcome;
//   - [*pgcc.ConnectionLostError] (errors.Is [pgcc.ErrConnectionLost]) when the single connection given failed
//     before COMMIT: nothing was committed;
//   - [*pgcc.AlreadyAppliedError] (errors.Is [pgcc.ErrAlreadyApplied]) when the idempotency key has already
//     committed;
//   - an error matching [pgcc.ErrInvalidArgument] for an option that cannot be honoured.
//
// Round trips: on a pool or a connection, BEGIN (with the SET LOCALs of the timeouts) is not sent on its
// own but in the same round trip as fn's first statement, so a transaction of one read and one write costs
// three round trips where hand-written pgx spends four, and two when the write is queued with [Final] to
// travel with COMMIT. A fn that sends nothing costs none. A failure in that first round trip is a failed
// BEGIN: nothing committed, and it is classified and retried as one; fn sees it as its statement's error.
// Methods that cannot carry BEGIN (CopyFrom, LargeObjects, Conn, a savepoint's Begin) send it first. With an
// idempotency key, BEGIN and the key's INSERT are sent before fn runs, so that fn never runs for a key
// that has already committed.
func Run(ctx context.Context, db pgcc.Beginner, fn func(ctx context.Context, tx pgx.Tx) error, opts ...Option) error {
	cfg, err := newConfig(opts)
	if err != nil {
		return err
	}
	if db == nil || fn == nil {
		return fmt.Errorf("%w: Run needs a database handle and a function (got %T, fn nil: %v)", pgcc.ErrInvalidArgument, db, fn == nil)
	}
	if tx, ok := db.(pgx.Tx); ok {
		if err := cfg.nestedError(); err != nil {
			return err
		}
		return nested(ctx, tx, fn)
	}
	if cfg.obs != nil {
		cfg.obs.operation = pgcc.OperationRun
	}
	r := runner{cfg: cfg, db: db, reconnects: pgfail.Reconnects(db)}
	if err := r.init(); err != nil {
		return err
	}
	r.reserveLookup(ctx)
	return loop(ctx, cfg, r.reconnects, func(ctx context.Context) (outcome, error) {
		return r.attempt(ctx, fn)
	})
}

// RunValue is [Run] for a fn that returns a value: the value of the attempt that committed. On error it
// returns T's zero value.
func RunValue[T any](ctx context.Context, db pgcc.Beginner, fn func(ctx context.Context, tx pgx.Tx) (T, error), opts ...Option) (T, error) {
	var out T
	err := Run(ctx, db, func(ctx context.Context, tx pgx.Tx) error {
		v, err := fn(ctx, tx)
		if err == nil {
			out = v
		}
		return err
	}, opts...)
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// Retry runs fn until it returns nil, with the policy of [Run]: the same attempts, backoff, context handling,
// hooks and errors, deciding by [Retryable] or the predicate given with [RetryIf]. It is for operations that
// are not one transaction, such as an optimistic read-modify-write whose write may conflict; fn is
// responsible for its own statements, so Retry cannot know what a connection failure left behind and
// retries one only if the predicate says so. An error of fn's matching [pgcc.ErrCommitUnknown] is never
// passed to the predicate: it is returned (with its attempt number) unless [Idempotent] is given. Options
// that shape a transaction (isolation, access mode, timeouts, idempotency key) are rejected with
// [pgcc.ErrInvalidArgument].
func Retry(ctx context.Context, fn func(ctx context.Context) error, opts ...Option) error {
	cfg, err := newConfig(opts)
	if err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("%w: Retry needs a function", pgcc.ErrInvalidArgument)
	}
	if cfg.hasTxSettings || cfg.hasLocalConfig || cfg.key != "" || cfg.outermost {
		return fmt.Errorf("%w: Retry runs no transaction of its own; isolation, access mode, timeouts, idempotency keys and Outermost belong to Run", pgcc.ErrInvalidArgument)
	}
	if cfg.obs != nil {
		cfg.obs.operation = pgcc.OperationRetry
	}
	return loop(ctx, cfg, false, func(ctx context.Context) (outcome, error) {
		err := fn(ctx)
		if err != nil && errors.Is(err, pgcc.ErrCommitUnknown) {
			return commitUnknown, err
		}
		return failed, err
	})
}

// outcome says how an attempt's error is to be treated.
type outcome int

const (
	failed        outcome = iota // retry if the predicate says so
	lost                         // the connection failed before COMMIT was sent: retry on a fresh connection if there is one
	readOnly                     // the server refused a write as read-only: retry on a fresh connection if there is one
	commitUnknown                // COMMIT was sent and no answer came: retry only if fn is idempotent
	unresolved                   // as commitUnknown, after an idempotency key could not settle it: never retried
	final                        // a definite answer to return as it is
)

// loop is the retry policy shared by Run and Retry. reconnects says whether a new attempt gets a new
// connection, so that an attempt whose connection failed may be retried.
func loop(ctx context.Context, cfg *config, reconnects bool, try func(context.Context) (outcome, error)) (ret error) {
	var last error // the last retryable error, kept for an InterruptedError
	var ob attemptObs
	if cfg.obs != nil {
		defer func() { ob.finish(ctx, cfg.obs, cfg.isolation, ret) }()
	}
	for n := 1; ; n++ {
		if ctx.Err() != nil {
			return &pgcc.InterruptedError{Attempts: n - 1, Cause: context.Cause(ctx), Last: last}
		}
		if cfg.obs != nil {
			ob = attemptObs{n: n, start: time.Now(), pending: true}
		}
		kind, err := try(ctx)
		if err == nil {
			return nil
		}
		var retry bool
		switch kind {
		case final:
			return err
		case commitUnknown:
			err = commitUnknownError(err, n)
			retry = cfg.idempotent
		case unresolved:
			err = commitUnknownError(err, n)
		case lost:
			err = &pgcc.ConnectionLostError{Attempts: n, SingleConnection: !reconnects, Err: pgcc.Classify(err)}
			retry = reconnects
		case readOnly:
			err = pgcc.Classify(err)
			retry = reconnects
		default:
			err = attemptOf(pgcc.Classify(err), n)
			retry = cfg.retryable(err)
		}
		if ctx.Err() != nil {
			if kind == commitUnknown || kind == unresolved {
				return err
			}
			if last != nil && causedByContext(err) {
				// The error is the cancellation itself; keep the conflict that led here instead.
				err = last
			}
			return &pgcc.InterruptedError{Attempts: n, Cause: context.Cause(ctx), Last: err}
		}
		if !retry {
			return err
		}
		if n >= cfg.maxAttempts {
			return &pgcc.RetriesExhaustedError{Attempts: n, Err: err}
		}
		last = err
		delay := cfg.backoff.Delay(n)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= delay {
			// The next attempt could not start before the deadline: say so now rather than sleep through it.
			return &pgcc.InterruptedError{Attempts: n, Cause: context.DeadlineExceeded, Last: err}
		}
		if cfg.obs != nil {
			ob.retried(ctx, cfg.obs, cfg.isolation, err, delay)
		}
		if cfg.onRetry != nil {
			cfg.onRetry(n, err, delay)
		}
		if err := sleep(ctx, delay); err != nil {
			return &pgcc.InterruptedError{Attempts: n, Cause: err, Last: last}
		}
	}
}

// commitUnknownError is err as the [*pgcc.CommitUnknownError] of attempt n. One fn already returned (an
// autocommitted write of package repo, say) is copied with the attempt number of the loop.
func commitUnknownError(err error, n int) error {
	if cu, ok := err.(*pgcc.CommitUnknownError); ok {
		c := *cu
		c.Attempts = n
		return &c
	}
	return &pgcc.CommitUnknownError{Attempts: n, Err: pgcc.Classify(err)}
}

// attemptOf is err with the attempt number of the loop when it is a [*pgcc.ConnectionLostError] fn built for
// a single attempt (repo.Modify's, say), copied, so that the error of the last attempt says which it was.
func attemptOf(err error, n int) error {
	if cl, ok := err.(*pgcc.ConnectionLostError); ok && cl.Attempts != n {
		c := *cl
		c.Attempts = n
		return &c
	}
	return err
}

// sleep waits for d or until ctx ends, whichever is first, and returns the context's cause in the second case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// runner holds what the attempts of one Run share.
type runner struct {
	cfg        *config
	db         pgcc.Beginner
	reconnects bool          // each attempt gets a fresh connection (db is a pool)
	txBegin    txBeginner    // db's BeginTx, nil when db has none
	conn       *pgx.Conn     // db's connection when db is a single one, else nil
	txOptions  pgx.TxOptions // the options of every BEGIN
	keyed      bool          // the transaction records an idempotency key
	lookup     time.Duration // the end of ctx kept for the key's look-up; 0 when there is none to keep
	attempts   int           // attempts started
}

// init checks db against the options and prepares the BEGIN.
func (r *runner) init() error {
	switch db := r.db.(type) {
	case *pgx.Conn:
		r.conn = db
	case *pgxpool.Conn:
		r.conn = db.Conn()
	}
	if r.conn != nil && r.conn.PgConn().TxStatus() != 'I' {
		return fmt.Errorf("%w: the connection given to Run is already in a transaction begun outside Run, which Run's COMMIT would end; pass that pgx.Tx instead", pgcc.ErrInvalidArgument)
	}
	if b, ok := r.db.(txBeginner); ok {
		r.txBegin = b
		r.txOptions = r.cfg.txOptions()
	} else if r.cfg.hasTxSettings || r.cfg.hasLocalConfig || r.cfg.key != "" {
		return fmt.Errorf("%w: %T has no BeginTx method, so isolation, access mode, timeouts and idempotency keys cannot be applied", pgcc.ErrInvalidArgument, r.db)
	}
	r.keyed = r.cfg.key != ""
	return nil
}

func (r *runner) begin(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error) {
	if r.txBegin != nil {
		return r.txBegin.BeginTx(ctx, opts)
	}
	return r.db.Begin(ctx)
}

// attempt runs one BEGIN, fn, COMMIT. The deferred rollback also runs while a panic from fn unwinds.
func (r *runner) attempt(ctx context.Context, fn func(context.Context, pgx.Tx) error) (outcome, error) {
	r.attempts++
	if err := r.tooLateToConfirm(ctx); err != nil {
		return final, err
	}
	opts := r.txOptions
	var attemptID int64
	if r.keyed {
		attemptID = newAttemptID()
		opts.BeginQuery = r.cfg.keyedBeginQuery(attemptID)
	}
	raw, conn, release, err := r.open(ctx, opts)
	if err != nil {
		return r.beginFailed(ctx, err)
	}
	defer release()
	tx := &managed{Tx: raw, top: &unobserved}
	if r.cfg.obs != nil {
		tx.top = &r.cfg.obs.obs
	}
	done := false
	defer func() {
		if !done {
			rollback(ctx, raw)
			tx.rolledBack()
		}
	}()
	err = fn(ctx, tx)
	if l, ok := raw.(*lazyTx); ok && l.endsUnbegun(err, tx) {
		kind, committed, err := r.notBegun(ctx, l, tx, conn, err)
		done = committed
		return kind, err
	}
	if err != nil {
		return r.fnFailed(ctx, conn, err)
	}
	if conn.IsClosed() {
		// fn let a statement's connection failure pass. COMMIT cannot be written to a closed connection: this
		// is the proof that nothing committed.
		return lost, errClosedBeforeCommit
	}
	if ctx.Err() != nil {
		return failed, context.Cause(ctx) // no COMMIT sent; the deferred rollback ends the transaction
	}
	if err := r.tooLateToConfirm(ctx); err != nil {
		return final, err // not committed: the deferred rollback ends the transaction
	}
	done = true // Commit closes tx whatever it returns.
	cctx, cancel := r.commitContext(ctx)
	err = commit(cctx, raw, tx)
	cancel()
	if err == nil {
		tx.committed(ctx)
		return failed, nil
	}
	if fe := (*finalError)(nil); errors.As(err, &fe) {
		// A final write failed before COMMIT ran: nothing committed. When its connection failed, the attempt
		// is lost, as any attempt whose connection fails before COMMIT.
		tx.rolledBack()
		if !fe.mapped && pgfail.ConnectionFailed(fe.err) {
			return lost, fe.err
		}
		return failed, err
	}
	if pgfail.Classify(err, pgfail.Commit) != pgfail.Unknown {
		tx.rolledBack()
		return failed, err
	}
	if r.cfg.readOnly {
		// A READ ONLY transaction wrote nothing its COMMIT could make durable: whatever became of the COMMIT,
		// running fn again on a fresh connection changes nothing, so the attempt counts as lost, not unknown.
		tx.rolledBack()
		return lost, err
	}
	if !r.keyed {
		tx.rolledBack()
		return commitUnknown, err
	}
	lookUpStart := time.Now()
	res := r.resolve(ctx, conn, attemptID)
	if r.cfg.obs != nil {
		r.cfg.obs.lookUp = time.Since(lookUpStart)
	}
	switch {
	case res.committed:
		tx.committed(ctx)
		return failed, nil
	case res.applied != nil:
		tx.rolledBack()
		return final, res.applied
	case res.notCommitted:
		tx.rolledBack()
		return lost, err
	default:
		tx.rolledBack()
		return unresolved, res.unresolvedError(err, r.cfg.key)
	}
}

// The share of a keyed transaction's time (its context's, when Run starts) kept for the key's look-up, and
// its cap.
const (
	lookupReserveDivisor = 4
	// maxLookupReserve was 2 s until a make faults run on a loaded machine (load average 12–19, every
	// connection reset every 0.2–0.6 s) ended eight keyed transfers unsettled, their look-ups unable to get
	// a connection through in time (raceConn now also opens its own again); 5 s leaves room for several tries.
	maxLookupReserve = 5 * time.Second
)

// reserveLookup sets the time a keyed transaction keeps at the end of ctx for looking its key up: a quarter of
// what ctx has left when Run starts, at most [maxLookupReserve]. None without a key or a deadline.
func (r *runner) reserveLookup(ctx context.Context) {
	if deadline, ok := ctx.Deadline(); ok && r.keyed {
		r.lookup = max(min(time.Until(deadline)/lookupReserveDivisor, maxLookupReserve), 0)
	}
}

// tooLateToConfirm returns the error of a keyed attempt that would start, or send COMMIT, inside the time kept
// for the look-up: a COMMIT whose answer was lost then could not be settled before the deadline, and the
// caller would get ErrCommitUnknown although it gave a key to avoid it. Not committing is a certain answer
// instead: a [*pgcc.InterruptedError] whose cause is context.DeadlineExceeded, nothing committed, and the
// request can be sent again with its key.
func (r *runner) tooLateToConfirm(ctx context.Context) error {
	if r.lookup <= 0 {
		return nil
	}
	deadline, _ := ctx.Deadline()
	if left := time.Until(deadline); left < r.lookup {
		return &pgcc.InterruptedError{Attempts: r.attempts, Cause: context.DeadlineExceeded,
			Last: fmt.Errorf("pgcc: not committed: %v of the deadline left, less than the %v kept to confirm a commit by its idempotency key %s",
				left.Round(time.Millisecond), r.lookup.Round(time.Millisecond), pgcc.FormatValue(r.cfg.key))}
	}
	return nil
}

// commitContext is the context COMMIT is sent with. A keyed transaction stops waiting for COMMIT's answer when
// only the time kept for the look-up is left: an answer that has not come by then is treated as lost, and the
// look-up, on a new connection, settles the outcome within the caller's deadline. A hung connection would
// otherwise take the whole deadline, leaving the key, the one thing that can tell, no time to be read.
func (r *runner) commitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.lookup <= 0 {
		return ctx, func() {}
	}
	deadline, _ := ctx.Deadline()
	return context.WithDeadline(ctx, deadline.Add(-r.lookup))
}

// errClosedBeforeCommit is the error of an attempt whose connection was found closed before COMMIT.
var errClosedBeforeCommit = fmt.Errorf("the connection was closed before COMMIT was sent: %w", pgconn.ErrConnClosed)

// beginFailed classifies an error of BEGIN (with the idempotency key's INSERT, when there is one).
func (r *runner) beginFailed(ctx context.Context, err error) (outcome, error) {
	if r.conn != nil && !r.conn.IsClosed() && r.conn.PgConn().TxStatus() != 'I' {
		// A statement after BEGIN in the same message failed (the key's INSERT, a SET LOCAL) and left the
		// caller's connection in the aborted transaction. A pool destroys such a connection on release.
		closeCtx, cancel := detached(ctx)
		_, _ = r.conn.Exec(closeCtx, "ROLLBACK")
		cancel()
	}
	if r.keyed {
		if kerr := r.keyBeginFailed(ctx, err); kerr != nil {
			return final, kerr
		}
	}
	switch {
	case pgfail.ConnectionFailed(err):
		return lost, err
	case r.readOnlyServer(err):
		return readOnly, err
	}
	return failed, err
}

// fnFailed classifies fn's error. A connection failure counts only when it is the transaction's own
// connection that failed: an error fn got from another connection says nothing about this transaction.
func (r *runner) fnFailed(ctx context.Context, conn *pgx.Conn, err error) (outcome, error) {
	switch {
	case conn.IsClosed() && pgfail.ConnectionFailed(err):
		return lost, err
	case r.readOnlyServer(err):
		if r.reconnects {
			// The server accepts no writes; a new connection may reach the one that does.
			closeCtx, cancel := detached(ctx)
			defer cancel()
			_ = conn.Close(closeCtx)
		}
		return readOnly, err
	}
	return failed, err
}

// readOnlyServer reports a write refused by a read-only server: SQLSTATE 25006 in a transaction that was not
// begun READ ONLY.
func (r *runner) readOnlyServer(err error) bool {
	return !r.cfg.readOnly && pgfail.ReadOnlyServer(err)
}

// nested runs fn in a savepoint of tx.
func nested(ctx context.Context, tx pgx.Tx, fn func(context.Context, pgx.Tx) error) error {
	raw, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	sp := &managed{Tx: raw}
	if parent, err := managedOf(tx, "Run"); err == nil {
		sp.parent = parent
	}
	released := false
	defer func() {
		if !released {
			rollback(ctx, raw)
			sp.rolledBack()
		}
	}()
	if err := fn(ctx, sp); err != nil {
		return err
	}
	released = true
	if err := raw.Commit(ctx); err != nil {
		sp.rolledBack()
		return err
	}
	sp.released()
	return nil
}

// rollback ends tx after a failure. Its error is not the caller's concern: if ROLLBACK fails, pgx closes the
// connection and a pool replaces it.
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := detached(ctx)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// causedByContext reports whether err is a context's error, as pgx reports a query the context interrupted.
func causedByContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}
