package pginstance_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc/internal/leakcheck"
	"github.com/pgcc/pgcc/internal/pginstance"
	"github.com/pgcc/pgcc/internal/pgtest"
)

// TestMain runs without pgtest.Main: these tests need no shared server, only the binaries.
func TestMain(m *testing.M) {
	before := leakcheck.Take()
	code := m.Run()
	if code == 0 {
		if err := before.Check(2 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "pginstance: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func setup(t *testing.T) context.Context {
	t.Helper()
	t.Parallel()
	pgtest.Watch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryInt(t *testing.T, ctx context.Context, dsn, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestKillAndCrashRecovery(t *testing.T) {
	ctx := setup(t)
	start := time.Now()
	inst := pginstance.Start(t, pginstance.Durable(), pginstance.Setting("max_connections", "30"))
	t.Logf("initdb and start: %v (port %d)", time.Since(start).Round(time.Millisecond), inst.Port())
	inst.CreateDatabase("app")
	conn := connect(t, ctx, inst.DSN("app"))
	var fsync, maxConns string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('max_connections')").Scan(&fsync, &maxConns); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || maxConns != "30" {
		t.Errorf("fsync = %s, max_connections = %s; want on and 30 (Durable, Setting)", fsync, maxConns)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}

	killed := time.Now()
	inst.Kill()
	t.Logf("kill: %v", time.Since(killed).Round(time.Millisecond))
	if inst.Running() {
		t.Fatal("the server still runs after Kill")
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a query succeeded on a connection to a killed server")
	}

	restarted := time.Now()
	inst.Start()
	t.Logf("crash recovery and start: %v", time.Since(restarted).Round(time.Millisecond))
	if n := queryInt(t, ctx, inst.DSN("app"), "SELECT count(*) FROM t"); n != 1000 {
		t.Errorf("%d rows after crash recovery, want 1000", n)
	}

	inst.Restart()
	inst.Stop()
	if inst.Running() {
		t.Fatal("the server still runs after Stop")
	}
	inst.Start()
	inst.Exec("SELECT 1")
}

func TestStandbyAndPromote(t *testing.T) {
	ctx := setup(t)
	primary := pginstance.Start(t)
	primary.Exec("CREATE TABLE t (n int)")
	primary.Exec("INSERT INTO t VALUES (1)")
	start := time.Now()
	standby := primary.Standby(t)
	t.Logf("base backup and standby start: %v", time.Since(start).Round(time.Millisecond))

	primary.Exec("INSERT INTO t VALUES (2)")
	standby.WaitReplay(primary)
	if n := queryInt(t, ctx, standby.DSN("postgres"), "SELECT count(*) FROM t"); n != 2 {
		t.Errorf("standby sees %d rows, want 2", n)
	}
	_, err := connect(t, ctx, standby.DSN("postgres")).Exec(ctx, "INSERT INTO t VALUES (3)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.ReadOnlySQLTransaction {
		t.Errorf("write on the standby: %v, want read_only_sql_transaction", err)
	}
	multi := pginstance.MultiHostDSN(primary, standby, "postgres")
	if port := queryInt(t, ctx, multi, "SELECT inet_server_port()"); port != primary.Port() {
		t.Errorf("multi-host DSN reached port %d, want the primary's %d", port, primary.Port())
	}

	// Failover: the primary crashes, the standby is promoted, clients find it.
	primary.Kill()
	promoted := time.Now()
	standby.Promote()
	t.Logf("promote: %v", time.Since(promoted).Round(time.Millisecond))
	if _, err := connect(t, ctx, standby.DSN("postgres")).Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatalf("write on the promoted standby: %v", err)
	}
	if port := queryInt(t, ctx, multi, "SELECT inet_server_port()"); port != standby.Port() {
		t.Errorf("after failover the multi-host DSN reached port %d, want the promoted standby's %d", port, standby.Port())
	}
}

// TestSynchronousReplication: with the standby synchronous and stopped, a commit on the primary waits (in
// SyncRep) until the standby is back.
func TestSynchronousReplication(t *testing.T) {
	ctx := setup(t)
	primary := pginstance.Start(t)
	primary.Exec("CREATE TABLE t (n int)")
	standby := primary.Standby(t)
	primary.SetSynchronous(standby)
	primary.Exec("INSERT INTO t VALUES (1)") // the standby is up: commits go through

	standby.Stop()
	conn := connect(t, ctx, primary.DSN("postgres"))
	pid := conn.PgConn().PID()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "INSERT INTO t VALUES (2)")
		done <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for queryInt(t, ctx, primary.DSN("postgres"),
		fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event = 'SyncRep'", pid)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the commit never waited for the synchronous standby")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the commit returned (%v) with its synchronous standby down", err)
	default:
	}
	standby.Start()
	if err := <-done; err != nil {
		t.Fatalf("commit after the standby came back: %v", err)
	}
	standby.WaitReplay(primary)
	if n := queryInt(t, ctx, standby.DSN("postgres"), "SELECT count(*) FROM t"); n != 2 {
		t.Errorf("standby has %d rows, want 2", n)
	}

	primary.SetSynchronous()
	standby.Stop()
	primary.Exec("INSERT INTO t VALUES (3)") // asynchronous again: no wait
}

// fatalRecorder is a testing.TB whose Fatal ends the calling goroutine after recording the message, and
// whose cleanups run when the test calls them, so a test can watch Start fail.
type fatalRecorder struct {
	testing.TB
	msg      string
	cleanups []func()
}

func (r *fatalRecorder) Helper()          {}
func (r *fatalRecorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *fatalRecorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestFailedStartShowsTheLog: a server that cannot start fails the test with its log, and leaves nothing.
func TestFailedStartShowsTheLog(t *testing.T) {
	setup(t)
	rec := &fatalRecorder{TB: t}
	done := make(chan *pginstance.Instance, 1)
	go func() {
		defer close(done)
		done <- pginstance.Start(rec, pginstance.Setting("shared_buffers", "plenty"))
	}()
	if inst := <-done; inst != nil {
		t.Fatal("Start returned an instance with an invalid setting")
	}
	for i := len(rec.cleanups) - 1; i >= 0; i-- {
		rec.cleanups[i]()
	}
	if !strings.Contains(rec.msg, `invalid value for parameter "shared_buffers"`) {
		t.Errorf("the failure does not quote the server's log:\n%s", rec.msg)
	}
	dir := regexp.MustCompile(`/\S*pgcc-pginstance-\d+`).FindString(rec.msg)
	if dir == "" {
		t.Fatalf("the failure does not name the instance's directory:\n%s", rec.msg)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after cleanup (%v)", dir, err)
	}
}
