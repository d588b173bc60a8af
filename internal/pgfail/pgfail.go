package pgfail

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
)

// Class is what a failure means for the work it interrupted.
type Class int

const (
	// Plain is an ordinary error with a known outcome: the server's ERROR answer to a statement, a value that
	// could not be encoded, the caller's own error. Nothing about the connection is implied.
	Plain Class = iota
	// Aborted is a transaction that certainly did not commit because its connection failed, or could not be
	// made, before COMMIT was sent. Run again on another connection, it may succeed.
	Aborted
	// Unknown is a COMMIT, or an autocommitted statement, that was or may have been written to the connection
	// and got no answer: it may have committed.
	Unknown
)

// String names the class for messages and tests.
func (c Class) String() string {
	switch c {
	case Aborted:
		return "aborted"
	case Unknown:
		return "unknown"
	default:
		return "plain"
	}
}

// Phase is where a failure happened.
type Phase int

const (
	// BeforeCommit is connecting, BEGIN, or any statement of a transaction before its COMMIT: nothing is
	// committed yet, so a connection failure there is a certain abort.
	BeforeCommit Phase = iota
	// Commit is COMMIT itself, or a statement outside a transaction that commits as it completes (an
	// autocommitted INSERT, UPDATE or DELETE).
	Commit
)

// Classify says what err, raised at phase, means. At [BeforeCommit] a connection failure
// ([ConnectionFailed]) is [Aborted]; at [Commit] it is [Unknown], and so is an interruption by the context
// once the statement may have been sent, and SQLSTATE 40003 (statement_completion_unknown, CockroachDB's
// ambiguous commit). A failure to connect (*pgconn.ConnectError) is never [Unknown], whatever the phase:
// nothing of the statement was written, so it is [Aborted] or, when trying again cannot help (a refused
// password, a missing database), [Plain]. An ERROR reported by the server is always [Plain]: it is the answer. For COMMIT the
// caller must first rule out the provable "not sent" case itself: a connection already closed before COMMIT
// was attempted is [BeforeCommit], since nothing of COMMIT could be written.
func Classify(err error, phase Phase) Class {
	if err == nil {
		return Plain
	}
	if phase == BeforeCommit || connecting(err) {
		if ConnectionFailed(err) {
			return Aborted
		}
		return Plain
	}
	if commitUnknown(err) {
		return Unknown
	}
	return Plain
}

// connecting reports a failure to open a connection (*pgconn.ConnectError): pgx returns it from connecting
// only, before anything of a statement was written, whatever the phase of the work that needed the connection
// (a pool opening one for an autocommitted write, say).
func connecting(err error) bool {
	var connectErr *pgconn.ConnectError
	return errors.As(err, &connectErr)
}

func commitUnknown(err error) bool {
	if errors.Is(err, pgx.ErrTxCommitRollback) {
		return false // COMMIT answered ROLLBACK: the server's definite answer
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// An ERROR is the server's answer: the statement failed, and a failed COMMIT rolled back. FATAL or PANIC,
		// or a shutdown or connection code, is the server going away while it may have committed.
		return pgErr.Code == pgerrcode.StatementCompletionUnknown || connectionCode(pgErr.Code) || fatal(pgErr)
	}
	if causedByContext(err) {
		// pgx checks the context before writing anything and then says so with an error that is safe to retry;
		// that is the one context error that proves nothing was sent. Any other came while the statement was,
		// or may have been, on its way.
		return !pgconn.SafeToRetry(err)
	}
	return ConnectionFailed(err)
}

// ConnectionFailed reports whether err says that the connection to the server failed or could not be made:
// SQLSTATE class 08 (connection_exception), 57P01 (admin_shutdown: the backend was terminated), 57P02
// (crash_shutdown), 57P03 (cannot_connect_now: the server is starting up or shutting down), a failure to
// connect (*pgconn.ConnectError) that carries no other SQLSTATE (connection refused, a reset during the
// handshake, a connect timeout), an I/O error (EOF, a reset, a broken pipe, any net.Error), or pgx's "conn
// closed". So is 53300 (too_many_connections) refusing a new connection (a ConnectError carrying it): every
// connection slot of the server, the database or the role was taken, nothing was sent, and a slot frees as soon as
// another session ends. A context's cancellation or deadline is not a connection failure, even though pgx
// closes the connection to interrupt a statement. An authentication failure or a missing database (a
// ConnectError carrying SQLSTATE 28P01 or 3D000) is not one either: trying again cannot help.
func ConnectionFailed(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return connectionCode(pgErr.Code) || pgErr.Code == pgerrcode.TooManyConnections && connecting(err)
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	if causedByContext(err) {
		return false
	}
	if errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// ReadOnlyServer reports SQLSTATE 25006 (read_only_sql_transaction) in err: a write refused because the
// transaction is read-only. In a transaction that was not begun READ ONLY it means the server itself accepts
// no writes: a standby, or a primary demoted by a failover that a connection opened before (or a stale DNS
// entry) still reaches. Nothing was committed, and a new connection may reach the new primary.
func ReadOnlyServer(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.ReadOnlySQLTransaction
}

// Reconnects reports whether db can give each attempt a fresh connection: a *pgxpool.Pool, or anything that
// has its Acquire method (a type embedding a pool). A *pgx.Conn or a *pgxpool.Conn is one connection, which
// cannot be replaced when it fails.
func Reconnects(db any) bool {
	_, ok := db.(interface {
		Acquire(ctx context.Context) (*pgxpool.Conn, error)
	})
	return ok
}

// Autocommit types the error of a statement that db ran by itself, outside a transaction, and that commits as
// it completes (an INSERT, UPDATE or DELETE on a pool or connection): a [*pgcc.CommitUnknownError] when it was
// or may have been sent and got no answer ([Unknown] at [Commit]: it may have been applied), a
// [*pgcc.ConnectionLostError] when its connection could not be made ([Aborted]: nothing was sent, it may be
// sent again). Inside a transaction (db a pgx.Tx) the error is the transaction owner's to judge, and any other
// error is returned as it is.
func Autocommit(db any, err error) error {
	if _, inTx := db.(pgx.Tx); inTx || err == nil {
		return err
	}
	switch Classify(err, Commit) {
	case Unknown:
		return &pgcc.CommitUnknownError{Attempts: 1, Err: err}
	case Aborted:
		return &pgcc.ConnectionLostError{Attempts: 1, SingleConnection: !Reconnects(db), Err: err}
	}
	return err
}

// connectionCode reports the SQLSTATEs that mean the connection, not the statement, failed.
func connectionCode(code string) bool {
	switch code {
	case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
		return true
	}
	return pgerrcode.IsConnectionException(code)
}

func fatal(pgErr *pgconn.PgError) bool {
	severity := pgErr.SeverityUnlocalized
	if severity == "" {
		severity = pgErr.Severity
	}
	return severity == "FATAL" || severity == "PANIC"
}

func causedByContext(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
