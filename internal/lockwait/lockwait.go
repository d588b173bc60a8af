// Package lockwait runs lock statements the way packages lock and lease promise: bounded by the context
// without losing the connection when the server answers, and failing with a *pgcc.LockError that names the
// lock and, when asked, who holds it.
//
// How a request is bounded:
//   - lock_timeout for the one statement, sent in the same round trip and restored after it: the least of the
//     caller's explicit timeout (or, without one, the lock_timeout already in force, 0 meaning none) and the
//     context's deadline, computed by the server so that a shorter SET LOCAL lock_timeout of the caller's
//     transaction is never lengthened. The deadline's share ends the wait deadlineLead early, so that the
//     server's answer is back by the deadline.
//   - the context: the statement runs on a context pgx does not watch (pgx closes the connection on
//     cancellation). When ctx is cancelled, a cancel request is sent and, with the statement's return, must
//     come back within CancelGrace; when the deadline passes, the server's own lock_timeout is due and its
//     answer gets DeadlineGrace. Past the grace, or when the server did not acknowledge the cancel request,
//     the connection is closed: it can no longer be trusted.
package lockwait

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
)

const (
	// CancelGrace is how long, after its context was cancelled, a lock request waits for the server to
	// acknowledge the cancel request and end the statement before it closes the connection. It bounds the
	// whole sequence once: the cancel request and the wait for the statement share it.
	CancelGrace = 2 * time.Second

	// DeadlineGrace is CancelGrace after a deadline: the server's own lock_timeout was set to end the wait
	// deadlineLead before the deadline, so an answer still missing at the deadline means a server that is
	// busy with something else or cannot be reached; the request returns at most this long after the deadline.
	DeadlineGrace = 20 * time.Millisecond

	// deadlineLead is how much sooner than the deadline the server is asked to end the wait (at most a quarter
	// of the time left), so that its answer travels back before the deadline.
	deadlineLead = 10 * time.Millisecond

	// MaxTimeout is the longest lock_timeout PostgreSQL accepts (2^31-1 ms, about 24.8 days).
	MaxTimeout = time.Duration(math.MaxInt32) * time.Millisecond

	// diagTimeout bounds the diagnostic queries run after a failed lock request.
	diagTimeout = 2 * time.Second
)

// Request is one lock statement and what is needed to run and report it.
type Request struct {
	SQL  string
	Args []any
	// Scan reads the statement's rows; nil discards them.
	Scan func(pgx.Rows) error
	// InTx is true when the statement runs in the caller's transaction (lock_timeout is restored after it)
	// and false on a bare session (the batch's implicit transaction scopes it).
	InTx bool
	// NoWait is true when the statement fails at once rather than wait (NOWAIT): its SQLSTATE 55P03 is then
	// the refusal, never the deadline, unless the context really ended.
	NoWait bool
	// Describe fills the LockError's lock fields (table and keys, or advisory key).
	Describe func(e *pgcc.LockError)
	// Blockers finds the sessions holding the lock, through db; self is the requester's backend pid (0 when
	// unknown). nil when it cannot be told.
	Blockers func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error)
}

// Config bounds a request: Timeout (0 for none) is an explicit lock timeout, and Diag, when not nil, is the
// handle through which the blockers of a failed request are looked up.
type Config struct {
	Timeout time.Duration
	Diag    pgcc.DBTX
	// Obs receives a pgcc.LockWaitEvent for each request; its Observer is nil when nothing observes.
	Obs pgcc.Observation
}

// SQL that bounds one statement: it computes the lock_timeout to use from the explicit timeout ($1, 0 for
// none), the lock_timeout in force (0 = none) and the deadline's share ($2, 0 for none), sets it for the
// transaction (saving the old value first when the statement runs in the caller's transaction), and returns
// it, whether the deadline decided it, and the backend's pid.
const (
	boundFrom = ` FROM (SELECT CASE WHEN x.d > 0 AND (x.c = 0 OR x.d <= x.c) THEN x.d ELSE x.c END AS ms,
	x.d > 0 AND (x.c = 0 OR x.d <= x.c) AS by_deadline
	FROM (SELECT $2::int8 AS d, CASE WHEN $1::int8 > 0 THEN $1::int8
		ELSE (extract(epoch FROM current_setting('lock_timeout')::interval) * 1000)::int8 END AS c) x) b`
	boundSaving = `SELECT set_config('pgcc.saved_lock_timeout', current_setting('lock_timeout'), true),
	set_config('lock_timeout', b.ms::text, true), b.ms, b.by_deadline, pg_backend_pid()` + boundFrom
	bound              = `SELECT '', set_config('lock_timeout', b.ms::text, true), b.ms, b.by_deadline, pg_backend_pid()` + boundFrom
	restoreLockTimeout = "SELECT set_config('lock_timeout', current_setting('pgcc.saved_lock_timeout'), true)"
	backendPID         = "SELECT pg_backend_pid()"
)

// bounds are the limits sent with a statement, in milliseconds (0 for none).
type bounds struct {
	explicit int64
	deadline int64
}

func (b bounds) set() bool { return b.explicit > 0 || b.deadline > 0 }

// sent is what the bounding statement reported.
type sent struct {
	ms         int64 // the lock_timeout in force for the statement, 0 for none
	byDeadline bool  // the deadline decided it
	pid        int32 // the backend's pid, 0 if not asked
}

// Querier is where a lock statement is sent: a transaction (a pgx.Tx) or a connection (a *pgx.Conn).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// pendingConn is a transaction whose BEGIN may not have been sent yet (txn.Run's, which sends BEGIN with the
// first statement): PendingConn returns its connection without sending anything, where Conn would begin.
type pendingConn interface{ PendingConn() *pgx.Conn }

// pgConnOf is the connection q sends on, for cancel requests.
func pgConnOf(q Querier) *pgconn.PgConn {
	switch q := q.(type) {
	case interface{ PgConn() *pgconn.PgConn }:
		return q.PgConn()
	case pendingConn:
		return q.PendingConn().PgConn()
	case interface{ Conn() *pgx.Conn }:
		return q.Conn().PgConn()
	}
	return nil
}

// Run sends the lock statement through q, bounded by ctx and cfg. It returns nil, a *pgcc.LockError for a lock
// that was not granted (or a context that ended), or the database's error unchanged for anything else. The
// statement goes through q itself, not its connection, so that a transaction that has not sent BEGIN yet
// sends it in the same round trip.
func Run(ctx context.Context, cfg Config, q Querier, req Request) error {
	if cfg.Obs.Observer == nil {
		return run(ctx, cfg, q, req)
	}
	start := time.Now()
	err := run(ctx, cfg, q, req)
	observe(ctx, cfg, req, err, time.Since(start))
	return err
}

func run(ctx context.Context, cfg Config, q Querier, req Request) error {
	if err := ctx.Err(); err != nil {
		return notSent(req, context.Cause(ctx))
	}
	start := time.Now()
	b := bounds{explicit: Millis(cfg.Timeout)}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return notSent(req, context.DeadlineExceeded)
		}
		if left <= MaxTimeout {
			// Past lock_timeout's range the deadline is left to the context watch below.
			lead := min(deadlineLead, left/4)
			b.deadline = max(int64((left-lead)/time.Millisecond), 1)
		}
	}
	wantPID := cfg.Diag != nil && req.Blockers != nil

	pg := pgConnOf(q)
	qctx, stop := ctx, func() watched { return watched{} }
	if ctx.Done() != nil {
		qctx, stop = watch(ctx, pg, b.deadline > 0)
	}
	var s sent
	var err error
	if b.set() || wantPID {
		s, err = runBatch(qctx, q, req, b)
	} else {
		err = runPlain(qctx, q, req)
	}
	w := stop()
	closed := false
	if w.interrupted || w.cancelSent && !w.acknowledged {
		// The statement was cut off, or a cancel request may still be on its way to the server, where it
		// would cancel whatever runs next on this session: the connection cannot be trusted any more.
		closeConn(pg)
		closed = true
	}

	var cause error
	if w.cancelSent || closed {
		cause = context.Cause(ctx)
	}
	if err == nil {
		if !closed {
			return nil
		}
		// Granted, but the connection (and with it the lock and the transaction) is gone.
		return fail(ctx, cfg, req, errConnClosed, cause, time.Since(start), int(s.pid))
	}
	switch code := pgcc.SQLState(err); {
	case code == pgerrcode.LockNotAvailable:
		if cause == nil && ctx.Err() != nil {
			cause = context.Cause(ctx)
		}
		if cause == nil && !req.NoWait && s.byDeadline && time.Since(start) >= time.Duration(s.ms)*time.Millisecond {
			// The lock_timeout that ran out was the context's deadline's share.
			cause = context.DeadlineExceeded
		}
	case code == pgerrcode.DeadlockDetected:
		cause = nil
	case cause != nil && (code == pgerrcode.QueryCanceled || code == ""):
	default:
		return err
	}
	return fail(ctx, cfg, req, err, cause, time.Since(start), int(s.pid))
}

// errConnClosed reports a lock granted on a connection that had to be closed afterwards.
var errConnClosed = errors.New("pgcc: connection closed after the context ended: a cancel request could not be confirmed")

// Millis is d in whole milliseconds, rounded up; 0 for d <= 0.
func Millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func runPlain(ctx context.Context, q Querier, req Request) error {
	rows, err := q.Query(ctx, req.SQL, req.Args...)
	if err != nil {
		return err
	}
	return consume(rows, req.Scan)
}

// runBatch sends, in one round trip, the bounding statement (or only a pid query), the lock statement and,
// inside the caller's transaction, the statement restoring lock_timeout.
func runBatch(ctx context.Context, q Querier, req Request, b bounds) (sent, error) {
	var s sent
	batch := &pgx.Batch{}
	switch {
	case !b.set():
		batch.Queue(backendPID)
	case req.InTx:
		batch.Queue(boundSaving, b.explicit, b.deadline)
	default:
		batch.Queue(bound, b.explicit, b.deadline)
	}
	batch.Queue(req.SQL, req.Args...)
	restore := b.set() && req.InTx
	if restore {
		batch.Queue(restoreLockTimeout)
	}
	br := q.SendBatch(ctx, batch)
	var err error
	if b.set() {
		var saved, set string
		err = br.QueryRow().Scan(&saved, &set, &s.ms, &s.byDeadline, &s.pid)
	} else {
		err = br.QueryRow().Scan(&s.pid)
	}
	if err == nil {
		var rows pgx.Rows
		if rows, err = br.Query(); err == nil {
			err = consume(rows, req.Scan)
		}
	}
	if err == nil && restore {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return s, err
}

func consume(rows pgx.Rows, scan func(pgx.Rows) error) error {
	defer rows.Close()
	if scan != nil {
		if err := scan(rows); err != nil {
			return err
		}
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// watched is what happened while a statement was watched.
type watched struct {
	cancelSent   bool // ctx ended before the statement returned, and a cancel request was sent
	acknowledged bool // the server closed the cancel connection: it has signalled the backend
	interrupted  bool // the socket's deadline was expired to end the statement
}

// watch returns a context for the statement that ctx does not cancel, and a stop function to call once the
// statement has returned. When ctx is cancelled first, a callback sends a cancel request for the connection's
// backend, then waits for the statement to return, both within CancelGrace. When ctx ends by its deadline
// and serverBound says the server was told to end the wait before it (lock_timeout), no cancel request is
// sent: the server's answer is due, and the callback waits DeadlineGrace for it (a cancel request at that
// moment could only arrive late); without serverBound it is a cancel request within DeadlineGrace. Past the
// grace it expires the socket's deadline, so the statement fails (pgx then closes the connection).
//
// What stop guarantees: when it returns, the callback has finished, so nothing outlives the request; and
// either no cancel request was sent, or the server acknowledged it, or the result says it was not
// acknowledged (the caller then closes the connection). An acknowledged cancel request is harmless to the
// next statement: PostgreSQL closes the cancel connection only after signalling the backend, the signal is
// pending before the caller can send anything else, and a backend that takes it while idle discards it
// (lock's TestCancelRace checks this with thousands of cancels). Until ctx ends nothing runs:
// context.AfterFunc starts no goroutine, and the returned context has no Done channel for pgx to watch.
func watch(ctx context.Context, pg *pgconn.PgConn, serverBound bool) (context.Context, func() watched) {
	done := make(chan struct{})
	finished := make(chan struct{})
	var w watched
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(finished)
		grace := CancelGrace
		byDeadline := errors.Is(ctx.Err(), context.DeadlineExceeded)
		if byDeadline {
			grace = DeadlineGrace
		}
		limit := time.Now().Add(grace)
		if byDeadline && serverBound {
			if !waitFor(done, grace) {
				w.interrupted = true
				_ = pg.Conn().SetDeadline(time.Now().Add(-time.Second))
			}
			return
		}
		w.cancelSent = true
		cctx, cancel := context.WithDeadline(context.Background(), limit)
		err := pg.CancelRequest(cctx)
		// pgx's CancelRequest returns nil when its wait for the server's acknowledgement times out, too.
		w.acknowledged = err == nil && cctx.Err() == nil
		cancel()
		if w.acknowledged && waitFor(done, time.Until(limit)) {
			return
		}
		select {
		case <-done:
		default:
			w.interrupted = true
			_ = pg.Conn().SetDeadline(time.Now().Add(-time.Second))
		}
	})
	return context.WithoutCancel(ctx), func() watched {
		if stopAfter() {
			return watched{}
		}
		close(done)
		<-finished
		return w
	}
}

// waitFor reports whether ch was closed within d.
func waitFor(ch <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// closeConn closes pg at once (its socket's deadline may already have expired).
func closeConn(pg *pgconn.PgConn) {
	if pg.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), DeadlineGrace)
	defer cancel()
	_ = pg.Close(ctx)
}

// notSent is the LockError for a request whose context ended before anything was sent.
func notSent(req Request, cause error) error {
	e := &pgcc.LockError{Cause: cause}
	req.Describe(e)
	return e
}

// Fail builds the LockError for a request that was not granted after waiting for waited (err is nil for a
// failed try-lock) and, when cfg asks for it, looks up who holds the lock, excluding the backend self.
func Fail(ctx context.Context, cfg Config, req Request, err, cause error, waited time.Duration, self int) error {
	ferr := fail(ctx, cfg, req, err, cause, waited, self)
	if cfg.Obs.Observer != nil {
		observe(ctx, cfg, req, ferr, waited)
	}
	return ferr
}

func fail(ctx context.Context, cfg Config, req Request, err, cause error, waited time.Duration, self int) error {
	e := &pgcc.LockError{Err: err, Cause: cause, Waited: waited}
	req.Describe(e)
	if cfg.Diag != nil && req.Blockers != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), diagTimeout)
		defer cancel()
		e.Blockers, e.DiagnosticsErr = req.Blockers(dctx, cfg.Diag, self)
	}
	return e
}

// observe reports a request's result err (nil when granted) to cfg's observer.
func observe(ctx context.Context, cfg Config, req Request, err error, waited time.Duration) {
	ev := pgcc.LockWaitEvent{Label: cfg.Obs.Label, Wait: waited, Err: err, Outcome: pgcc.LockAcquired}
	var le *pgcc.LockError
	if errors.As(err, &le) {
		ev.Table, ev.KeyColumns, ev.Keys, ev.Advisory, ev.Blockers = le.Table, le.KeyColumns, le.Keys, le.Advisory, le.Blockers
		switch {
		case le.Cause != nil:
			ev.Outcome = pgcc.LockInterrupted
		case pgcc.SQLState(le.Err) == pgerrcode.DeadlockDetected:
			ev.Outcome = pgcc.LockDeadlock
		case le.Err == nil || pgcc.SQLState(le.Err) == pgerrcode.LockNotAvailable:
			ev.Outcome = pgcc.LockNotAvailable
		default:
			ev.Outcome = pgcc.LockFailed
		}
	} else {
		var d pgcc.LockError
		if req.Describe != nil {
			req.Describe(&d)
		}
		ev.Table, ev.KeyColumns, ev.Keys, ev.Advisory = d.Table, d.KeyColumns, d.Keys, d.Advisory
		if err != nil {
			ev.Outcome = pgcc.LockFailed
		}
	}
	cfg.Obs.Observer.ObserveLockWait(ctx, ev)
}
