package pgfail_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgfail"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func pgErr(code, severity string) error {
	return &pgconn.PgError{Code: code, Severity: severity, SeverityUnlocalized: severity, Message: "raised for a test"}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, tc := range []struct {
		name         string
		err          error
		beforeCommit pgfail.Class
		atCommit     pgfail.Class
	}{
		{"backend terminated (57P01)", pgErr(pgerrcode.AdminShutdown, "FATAL"), pgfail.Aborted, pgfail.Unknown},
		{"crash of another backend (57P02)", pgErr(pgerrcode.CrashShutdown, "FATAL"), pgfail.Aborted, pgfail.Unknown},
		{"server starting up (57P03)", pgErr(pgerrcode.CannotConnectNow, "FATAL"), pgfail.Aborted, pgfail.Unknown},
		{"connection failure (08006)", pgErr(pgerrcode.ConnectionFailure, "FATAL"), pgfail.Aborted, pgfail.Unknown},
		{"unexpected EOF", fmt.Errorf("failed to deallocate cached statement(s): %w", io.ErrUnexpectedEOF), pgfail.Aborted, pgfail.Unknown},
		{"EOF", io.EOF, pgfail.Aborted, pgfail.Unknown},
		{"conn closed", fmt.Errorf("wrapped: %w", pgconn.ErrConnClosed), pgfail.Aborted, pgfail.Unknown},
		{"connection reset", reset, pgfail.Aborted, pgfail.Unknown},
		{"broken pipe", syscall.EPIPE, pgfail.Aborted, pgfail.Unknown},
		{"serialization failure", pgErr(pgerrcode.SerializationFailure, "ERROR"), pgfail.Plain, pgfail.Plain},
		{"deferred unique violation at COMMIT", pgErr(pgerrcode.UniqueViolation, "ERROR"), pgfail.Plain, pgfail.Plain},
		{"COMMIT answered ROLLBACK", pgx.ErrTxCommitRollback, pgfail.Plain, pgfail.Plain},
		{"read-only server (25006)", pgErr(pgerrcode.ReadOnlySQLTransaction, "ERROR"), pgfail.Plain, pgfail.Plain},
		{"ambiguous commit (40003)", pgErr(pgerrcode.StatementCompletionUnknown, "ERROR"), pgfail.Plain, pgfail.Unknown},
		{"a FATAL that is not about the connection", pgErr(pgerrcode.InvalidAuthorizationSpecification, "FATAL"), pgfail.Plain, pgfail.Unknown},
		{"context cancelled mid-statement", context.Canceled, pgfail.Plain, pgfail.Unknown},
		{"deadline mid-statement", fmt.Errorf("timeout: %w", context.DeadlineExceeded), pgfail.Plain, pgfail.Unknown},
		{"the caller's own error", errors.New("insufficient funds"), pgfail.Plain, pgfail.Plain},
	} {
		if got := pgfail.Classify(tc.err, pgfail.BeforeCommit); got != tc.beforeCommit {
			t.Errorf("%s before COMMIT: %v, want %v", tc.name, got, tc.beforeCommit)
		}
		if got := pgfail.Classify(tc.err, pgfail.Commit); got != tc.atCommit {
			t.Errorf("%s at COMMIT: %v, want %v", tc.name, got, tc.atCommit)
		}
	}
}

// TestClassifyRealErrors classifies errors pgx itself returns.
func TestClassifyRealErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// Nothing listens on port 1: connection refused, wrapped in a *pgconn.ConnectError.
	_, refused := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=5")
	var connectErr *pgconn.ConnectError
	if !errors.As(refused, &connectErr) {
		t.Fatalf("connect to a closed port: %v, want a *pgconn.ConnectError", refused)
	}
	// At either phase: a pool opening a connection for an autocommitted write sent nothing of it.
	for _, phase := range []pgfail.Phase{pgfail.BeforeCommit, pgfail.Commit} {
		if got := pgfail.Classify(refused, phase); got != pgfail.Aborted {
			t.Errorf("connection refused at phase %d: %v, want aborted", phase, got)
		}
	}

	// A database that does not exist: FATAL 3D000 inside the ConnectError. Trying again cannot help.
	db := pgtest.NewDB(t)
	cfg, err := pgx.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = db.Name + "_missing"
	_, missing := pgx.ConnectConfig(ctx, cfg)
	if missing == nil || pgfail.ConnectionFailed(missing) {
		t.Errorf("a missing database is a connection failure: %v", missing)
	}
	if got := pgfail.Classify(missing, pgfail.Commit); got != pgfail.Plain {
		t.Errorf("a missing database for an autocommitted write: %v, want plain (its FATAL came while connecting)", got)
	}

	// Every connection slot taken (the role's limit is 0): FATAL 53300 inside the ConnectError. Nothing was
	// sent, and a slot frees when another session ends: a connection failure, aborted at either phase.
	_, tooMany := pgx.Connect(ctx, db.LimitedRole(t, 0))
	var pgErr *pgconn.PgError
	if !errors.As(tooMany, &pgErr) || pgErr.Code != pgerrcode.TooManyConnections || !errors.As(tooMany, &connectErr) {
		t.Fatalf("connect past the role's limit: %v, want a ConnectError carrying 53300", tooMany)
	}
	if !pgfail.ConnectionFailed(tooMany) {
		t.Errorf("53300 while connecting is not a connection failure: %v", tooMany)
	}
	for _, phase := range []pgfail.Phase{pgfail.BeforeCommit, pgfail.Commit} {
		if got := pgfail.Classify(tooMany, phase); got != pgfail.Aborted {
			t.Errorf("53300 while connecting, phase %d: %v, want aborted", phase, got)
		}
	}
	// The same SQLSTATE outside a connect (no server sends it then) is not taken for one.
	if pgfail.ConnectionFailed(pgErr) {
		t.Errorf("a bare 53300 is a connection failure")
	}

	// A context that ended before the statement was written: pgx proves nothing was sent.
	conn := db.Conn(t)
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, notSent := conn.Exec(done, "SELECT 1")
	if got := pgfail.Classify(notSent, pgfail.Commit); got != pgfail.Plain {
		t.Errorf("context done before sending: %v (%v), want plain", got, notSent)
	}
}

func TestReconnects(t *testing.T) {
	t.Parallel()
	type embedsPool struct{ *pgxpool.Pool }
	for _, tc := range []struct {
		db   any
		want bool
	}{
		{(*pgxpool.Pool)(nil), true},
		{embedsPool{}, true},
		{(*pgxpool.Conn)(nil), false},
		{(*pgx.Conn)(nil), false},
	} {
		if got := pgfail.Reconnects(tc.db); got != tc.want {
			t.Errorf("Reconnects(%T) = %v, want %v", tc.db, got, tc.want)
		}
	}
}
