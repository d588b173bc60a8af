// Package lockwait runs lock statements the way packages lock and lease promise: bounded by the context
// without losing the connection, and failing with a *pgcc.LockError that names the lock and, when asked, who
// holds it. A context deadline becomes lock_timeout for the one statement (in the same round trip); a
// cancellation becomes a server cancel request rather than a closed connection.
package lockwait

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
)

const (
	// CancelGrace is how long a lock request whose context ended waits for the server to answer the cancel
	// request before it gives up on the connection and closes it (pgx's own behaviour on cancellation).
	CancelGrace = 2 * time.Second
	// diagTimeout bounds the diagnostic query run after a failed lock request.
	diagTimeout = 2 * time.Second
)

// SQL that sets lock_timeout for one statement inside a transaction and restores it afterwards. The previous
// value is kept in a custom setting of the transaction, so the three statements travel in one round trip.
const (
	setLockTimeoutSaving = "SELECT set_config('pgcc.saved_lock_timeout', current_setting('lock_timeout'), true), set_config('lock_timeout', $1, true)"
	restoreLockTimeout   = "SELECT set_config('lock_timeout', current_setting('pgcc.saved_lock_timeout'), true)"
	setLockTimeout       = "SELECT set_config('lock_timeout', $1, true)"
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
	// Describe fills the LockError's lock fields (table and keys, or advisory key).
	Describe func(e *pgcc.LockError)
	// Blockers finds the sessions holding the lock, through db; nil when it cannot be told.
	Blockers func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error)
}

// Config bounds a request: Timeout (0 for none) is an explicit lock timeout, and Diag, when not nil, is the
// handle through which the blockers of a failed request are looked up.
type Config struct {
	Timeout time.Duration
	Diag    pgcc.DBTX
}

// Run sends the lock statement on conn, bounded by ctx and cfg. It returns nil, a *pgcc.LockError for a lock that
// was not granted (or a context that ended), or the database's error unchanged for anything else.
//
// How the context is honoured: a deadline becomes lock_timeout (when it comes before cfg's explicit timeout),
// sent in the same round trip as the statement. The statement itself runs on a context that ctx does not
// cancel, because pgx's default reaction to cancellation is to close the connection; instead [watch] sends
// PostgreSQL a cancel request when ctx ends, the server aborts the wait with SQLSTATE 57014, and the
// connection stays usable. Only if the server does not answer within CancelGrace is the connection closed.
func Run(ctx context.Context, cfg Config, conn *pgx.Conn, req Request) error {
	if err := ctx.Err(); err != nil {
		return notSent(req, context.Cause(ctx))
	}
	start := time.Now()
	timeout, fromDeadline := cfg.Timeout, false
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return notSent(req, context.DeadlineExceeded)
		}
		if timeout == 0 || left < timeout {
			timeout, fromDeadline = left, true
		}
	}

	qctx, stop := ctx, func() {}
	if ctx.Done() != nil {
		qctx, stop = watch(ctx, conn.PgConn())
	}
	var err error
	if timeout > 0 {
		err = runWithTimeout(qctx, conn, req, timeout)
	} else {
		err = runPlain(qctx, conn, req)
	}
	// After stop, no cancel request is in flight, and one was sent only if ctx has ended.
	stop()

	var cause error
	if ctx.Err() != nil {
		cause = context.Cause(ctx)
	}
	if err == nil {
		if cause != nil {
			// The lock was granted as the context ended; a cancel request may be on its way. The caller's
			// transaction must not go on.
			return Fail(ctx, cfg, conn, req, nil, cause, time.Since(start))
		}
		return nil
	}
	code := pgcc.SQLState(err)
	if cause == nil && fromDeadline && code == pgerrcode.LockNotAvailable {
		// The lock timeout that ran out was the context's deadline, a hair before Go noticed.
		cause = context.DeadlineExceeded
	}
	switch {
	case code == pgerrcode.LockNotAvailable, code == pgerrcode.DeadlockDetected:
	case cause != nil && (code == pgerrcode.QueryCanceled || code == ""):
	default:
		return err
	}
	return Fail(ctx, cfg, conn, req, err, cause, time.Since(start))
}

func runPlain(ctx context.Context, conn *pgx.Conn, req Request) error {
	rows, err := conn.Query(ctx, req.SQL, req.Args...)
	if err != nil {
		return err
	}
	return consume(rows, req.Scan)
}

func runWithTimeout(ctx context.Context, conn *pgx.Conn, req Request, timeout time.Duration) error {
	ms := strconv.FormatInt(int64((timeout+time.Millisecond-1)/time.Millisecond), 10)
	b := &pgx.Batch{}
	if req.InTx {
		b.Queue(setLockTimeoutSaving, ms)
	} else {
		b.Queue(setLockTimeout, ms)
	}
	b.Queue(req.SQL, req.Args...)
	if req.InTx {
		b.Queue(restoreLockTimeout)
	}
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return err
	}
	rows, err := br.Query()
	if err == nil {
		err = consume(rows, req.Scan)
	}
	if err != nil {
		_ = br.Close()
		return err
	}
	if req.InTx {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return err
		}
	}
	return br.Close()
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

// watch returns a context for the statement that ctx does not cancel, and a stop function to call once the
// statement has returned. When ctx ends first, a callback sends a cancel request for the connection's
// backend; if that fails, or no answer comes within CancelGrace, it expires the socket's deadline, so the
// statement fails and pgx closes the connection (what pgx does at once by default). stop waits for the
// callback, so nothing outlives the lock request and no cancel request is still in flight when the caller
// sends its next statement. Until ctx ends nothing runs: context.AfterFunc starts no goroutine, and the
// returned context has no Done channel for pgx to watch.
func watch(ctx context.Context, pg *pgconn.PgConn) (context.Context, func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(finished)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CancelGrace)
		err := pg.CancelRequest(cctx)
		cancel()
		if err == nil {
			t := time.NewTimer(CancelGrace)
			defer t.Stop()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
		select {
		case <-done:
		default:
			_ = pg.Conn().SetDeadline(time.Now().Add(-time.Second))
		}
	})
	return context.WithoutCancel(ctx), func() {
		if stopAfter() {
			return
		}
		close(done)
		<-finished
	}
}

// notSent is the LockError for a request whose context ended before anything was sent.
func notSent(req Request, cause error) error {
	e := &pgcc.LockError{Cause: cause}
	req.Describe(e)
	return e
}

// Fail builds the LockError for a request that was not granted after waiting for waited (err is nil for a
// failed try-lock) and, when cfg allows, asks who holds the lock.
func Fail(ctx context.Context, cfg Config, conn *pgx.Conn, req Request, err, cause error, waited time.Duration) error {
	e := &pgcc.LockError{Err: err, Cause: cause, Waited: waited}
	req.Describe(e)
	if cfg.Diag != nil && req.Blockers != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), diagTimeout)
		defer cancel()
		e.Blockers, e.DiagnosticsErr = req.Blockers(dctx, cfg.Diag, int(conn.PgConn().PID()))
	}
	return e
}

// blockerColumns reads a session out of pg_stat_activity a, with the database clock for HeldFor.
const blockerColumns = `a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), coalesce(a.query, ''),
	a.xact_start, coalesce(extract(epoch FROM clock_timestamp() - a.xact_start) * 1e6, 0)::bigint,
	coalesce(a.wait_event_type || ':' || a.wait_event, '')`

func collectBlockers(rows pgx.Rows, err error) ([]pgcc.Blocker, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgcc.Blocker, error) {
		var b pgcc.Blocker
		var pid int32
		var start *time.Time
		var heldMicros int64
		if err := row.Scan(&pid, &b.Application, &b.State, &b.Query, &start, &heldMicros, &b.WaitEvent); err != nil {
			return b, err
		}
		b.PID = int(pid)
		if start != nil {
			b.XactStart = *start
		}
		b.HeldFor = time.Duration(heldMicros) * time.Microsecond
		return b, nil
	})
}
