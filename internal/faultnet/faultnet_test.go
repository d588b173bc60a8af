package faultnet_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// setup returns a fresh database with a table t (id int primary key, n int) holding row (1, 0), the proxy in
// front of its server, and the same database reached through the proxy.
func setup(t *testing.T) (direct *pgtest.DB, p *faultnet.Proxy, proxied *pgtest.DB) {
	t.Helper()
	direct = pgtest.NewDB(t)
	p, dsn := faultnet.ForDSN(t, direct.DSN)
	proxied = &pgtest.DB{Name: direct.Name, DSN: dsn}
	_, err := direct.Pool(t).Exec(context.Background(),
		"CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL); INSERT INTO t VALUES (1, 0)")
	if err != nil {
		t.Fatal(err)
	}
	return direct, p, proxied
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a connection that the test closes itself (or a fault closes), unlike pgtest's DB.Conn.
func connect(t *testing.T, ctx context.Context, dsn string, configure ...func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range configure {
		f(cfg)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func count(t *testing.T, ctx context.Context, db *pgtest.DB, sql string) int {
	t.Helper()
	var n int
	if err := db.Pool(t).QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond every 5ms for up to 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForwardsConcurrentAndLargeTraffic(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, p, proxied := setup(t)
	pool := proxied.Pool(t, func(c *pgxpool.Config) { c.MaxConns = 4 })

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				var got int
				if err := pool.QueryRow(ctx, "SELECT $1::int * 2", w*100+i).Scan(&got); err != nil || got != 2*(w*100+i) {
					errs <- errors.Join(err, errors.New("wrong answer"))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Messages far larger than the proxy's 64 KB buffers, both ways.
	big := strings.Repeat("0123456789abcdef", 256<<10) // 4 MB
	var echoed string
	if err := pool.QueryRow(ctx, "SELECT $1::text || repeat('x', 3000000)", big).Scan(&echoed); err != nil {
		t.Fatal(err)
	}
	if echoed != big+strings.Repeat("x", 3000000) {
		t.Fatalf("a 4 MB parameter came back as %d bytes", len(echoed))
	}
	if s := p.Stats(); s.ToServer < int64(len(big)) || s.ToClient < int64(len(echoed)) {
		t.Errorf("stats %+v count fewer bytes than were sent", s)
	}
}

// TestFlights counts the round trips of common pgx calls on an established connection, after one warm-up
// call so that pgx has prepared and described its statements.
func TestFlights(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, p, proxied := setup(t)

	p.ResetStats()
	conn := connect(t, ctx, proxied.DSN)
	if s := p.Stats(); s.Flights != 1 || s.Connections != 1 {
		t.Errorf("connecting (trust authentication): %+v, want 1 flight on 1 connection", s)
	}

	tests := []struct {
		name string
		want int64
		run  func() error
	}{
		{"SELECT 1", 1, func() error {
			var n int
			return conn.QueryRow(ctx, "SELECT 1").Scan(&n)
		}},
		{"SELECT with an argument", 1, func() error {
			var n int
			return conn.QueryRow(ctx, "SELECT $1::int", 7).Scan(&n)
		}},
		{"BEGIN; UPDATE; COMMIT", 3, func() error {
			tx, err := conn.Begin(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if _, err := tx.Exec(ctx, "UPDATE t SET n = n + $1 WHERE id = 1", 1); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}},
		{"batch of 3", 1, func() error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue("UPDATE t SET n = n + $1 WHERE id = 1", 1)
			b.Queue("SELECT n FROM t WHERE id = $1", 1)
			return conn.SendBatch(ctx, b).Close()
		}},
	}
	for _, tt := range tests {
		if err := tt.run(); err != nil { // warm-up
			t.Fatalf("%s: %v", tt.name, err)
		}
		p.ResetStats()
		if err := tt.run(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := p.Stats().Flights; got != tt.want {
			t.Errorf("%s: %d flights, want %d", tt.name, got, tt.want)
		}
	}

	p.ResetStats()
	if _, err := conn.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats().Flights; got != 1 {
		t.Errorf("simple protocol SELECT 1: %d flights, want 1", got)
	}
}

// TestLoseReplyOnCommit is the ambiguous commit: the COMMIT reaches the server and runs, the client gets an
// error instead of its answer.
func TestLoseReplyOnCommit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	rule := p.OnQuery(faultnet.IsCommit, faultnet.LoseReply)
	conn := connect(t, ctx, proxied.DSN)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2, 0)"); err != nil {
		t.Fatal(err)
	}
	err = tx.Commit(ctx)
	if err == nil {
		t.Fatal("commit succeeded: its answer should have been lost")
	}
	// pgx v5.12 reports a connection lost while reading a simple-protocol answer as ErrConnClosed, whose
	// SafeToRetry is true (MultiResultReader.NextResult drops peekMessage's read error, and the next read finds
	// the connection closed): a caller must not trust SafeToRetry for a COMMIT.
	t.Logf("commit error: %v (SafeToRetry %v, ErrConnClosed %v)", err, pgconn.SafeToRetry(err), errors.Is(err, pgconn.ErrConnClosed))
	if n := count(t, ctx, direct, "SELECT count(*) FROM t WHERE id = 2"); n != 1 {
		t.Errorf("the row is not there (%d): the commit should have happened on the server", n)
	}
	if rule.Fired() != 1 {
		t.Errorf("rule fired %d times, want 1", rule.Fired())
	}

	// The rule fired once: a new connection commits normally.
	conn2 := connect(t, ctx, proxied.DSN)
	if _, err := conn2.Exec(ctx, "BEGIN; INSERT INTO t VALUES (3, 0); COMMIT"); err != nil {
		t.Fatalf("a statement holding a COMMIT is not a COMMIT and must pass: %v", err)
	}
	tx2, err := conn2.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx2.Commit(ctx); err != nil {
		t.Fatalf("second commit: %v", err)
	}
}

// TestLoseReplyOnParse applies a rule to extended-protocol statements. With QueryExecModeExec the Parse travels
// with Bind, Execute and Sync, so the statement runs and its answer is lost. With a statement pgx prepares
// first (QueryExecModeCacheStatement, cold cache), the Parse goes in the prepare round trip: that is the
// reply lost, and the statement never runs.
func TestLoseReplyOnParse(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	tests := []struct {
		mode pgx.QueryExecMode
		want int // rows inserted
	}{
		{pgx.QueryExecModeExec, 1},
		{pgx.QueryExecModeCacheStatement, 0},
	}
	for _, tt := range tests {
		rule := p.OnQuery(faultnet.SQLHasPrefix("insert into t"), faultnet.LoseReply)
		conn := connect(t, ctx, proxied.DSN)
		if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ($1, 0)", tt.mode, 2); err == nil {
			t.Fatalf("%v: insert succeeded: its answer should have been lost", tt.mode)
		}
		if n := count(t, ctx, direct, "SELECT count(*) FROM t WHERE id = 2"); n != tt.want || rule.Fired() != 1 {
			t.Errorf("%v: %d rows inserted, rule fired %d times; want %d and 1", tt.mode, n, rule.Fired(), tt.want)
		}
		if _, err := direct.Pool(t).Exec(ctx, "DELETE FROM t WHERE id = 2"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResetInsteadOfCommit: the COMMIT never reaches the server, so the transaction never commits.
func TestResetInsteadOfCommit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	p.OnQuery(faultnet.IsCommit, faultnet.ResetInstead)
	conn := connect(t, ctx, proxied.DSN)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2, 0)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("commit succeeded through a reset")
	}
	if n := count(t, ctx, direct, "SELECT count(*) FROM t WHERE id = 2"); n != 0 {
		t.Errorf("%d rows committed, want 0: the COMMIT must not have reached the server", n)
	}
}

func TestRuleLimits(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, p, proxied := setup(t)
	twice := p.OnQuery(faultnet.SQLHasPrefix("select 'limited'"), faultnet.ResetInstead, faultnet.Times(2))
	never := p.OnQuery(faultnet.SQLHasPrefix("select 'removed'"), faultnet.ResetInstead, faultnet.Always())
	never.Remove()
	var failed int
	for range 4 {
		conn := connect(t, ctx, proxied.DSN)
		if _, err := conn.Exec(ctx, "select 'limited'"); err != nil {
			failed++
		}
		if _, err := conn.Exec(ctx, "select 'removed'"); err != nil && !conn.IsClosed() {
			t.Errorf("a removed rule fired: %v", err)
		}
	}
	if failed != 2 || twice.Fired() != 2 || never.Fired() != 0 {
		t.Errorf("%d statements failed, rules fired %d and %d times; want 2, 2 and 0", failed, twice.Fired(), never.Fired())
	}
}

// TestHangAfter: the server runs the statement, the answer is held until Resume.
func TestHangAfter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	p.OnQuery(faultnet.SQLHasPrefix("update t"), faultnet.HangAfter)
	conn := connect(t, ctx, proxied.DSN)
	pid := conn.PgConn().PID()

	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "UPDATE t SET n = 42 WHERE id = 1")
		done <- err
	}()
	waitFor(t, "the server to run the statement", func() bool {
		return count(t, ctx, direct, "SELECT count(*) FROM t WHERE n = 42") == 1
	})
	waitFor(t, "the connection to be held", func() bool { return p.Stats().Held == 1 })
	select {
	case err := <-done:
		t.Fatalf("the statement returned (%v) while its answer should be held", err)
	case <-time.After(100 * time.Millisecond):
	}
	var state string
	if err := direct.Pool(t).QueryRow(ctx, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state); err != nil || state != "idle" {
		t.Errorf("server session state %q (%v), want idle: it has answered", state, err)
	}
	p.Resume()
	if err := <-done; err != nil {
		t.Fatalf("after Resume: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the connection is unusable after Resume: %v", err)
	}
}

// TestHangAndResume holds one direction, then both.
func TestHangAndResume(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	conn := connect(t, ctx, proxied.DSN)

	for _, dir := range []faultnet.Direction{faultnet.ToClient, faultnet.Both} {
		p.Hang(dir)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "UPDATE t SET n = n + 1 WHERE id = 1")
			done <- err
		}()
		if dir == faultnet.ToClient {
			// The statement reaches the server and runs; only its answer is held.
			waitFor(t, "the update to run", func() bool { return count(t, ctx, direct, "SELECT n FROM t") == 1 })
		}
		select {
		case err := <-done:
			t.Fatalf("Hang(%v): the statement returned (%v)", dir, err)
		case <-time.After(100 * time.Millisecond):
		}
		p.Resume()
		if err := <-done; err != nil {
			t.Fatalf("Hang(%v), Resume: %v", dir, err)
		}
	}
	if n := count(t, ctx, direct, "SELECT n FROM t"); n != 2 {
		t.Errorf("n = %d, want 2", n)
	}
}

func TestResetAllAndRefuseNew(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, p, proxied := setup(t)
	conn := connect(t, ctx, proxied.DSN)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	p.ResetAll()
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a query succeeded on a reset connection")
	}
	waitFor(t, "no open connection", func() bool { return p.Stats().Open == 0 })

	kept := connect(t, ctx, proxied.DSN)
	p.RefuseNew(true)
	if c, err := pgx.Connect(ctx, proxied.DSN); err == nil {
		_ = c.Close(ctx)
		t.Fatal("connected while the proxy refuses new connections")
	}
	if _, err := kept.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("RefuseNew broke an open connection: %v", err)
	}
	p.RefuseNew(false)
	if _, err := connect(t, ctx, proxied.DSN).Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// TestCancelRequestPassesThrough: pgx cancels a query on a connection of its own, through the proxy.
func TestCancelRequestPassesThrough(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, p, proxied := setup(t)
	conn := connect(t, ctx, proxied.DSN, func(c *pgx.ConnConfig) {
		c.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
			return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
		}
	})
	p.ResetStats()
	qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := conn.Exec(qctx, "SELECT pg_sleep(30)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.QueryCanceled {
		t.Fatalf("err = %v, want the server's query_canceled", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("connection unusable after the cancel: %v", err)
	}
	if s := p.Stats(); s.Connections != 1 || s.CancelRequests != 1 {
		t.Errorf("%d connections accepted, %d of them cancel requests; want 1, the cancel request's", s.Connections, s.CancelRequests)
	}
}

// TestTLSPassesThrough negotiates TLS through the proxy, which then forwards encrypted bytes untouched.
func TestTLSPassesThrough(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	direct, p, proxied := setup(t)
	var ssl string
	if err := direct.Pool(t).QueryRow(ctx, "SHOW ssl").Scan(&ssl); err != nil {
		t.Fatal(err)
	}
	mode := "require"
	if ssl != "on" {
		mode = "prefer" // the server answers N to SSLRequest and the client carries on in the clear
	}
	cfg, err := pgx.ParseConfig(proxied.DSN)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := p.RewriteDSN("host=x port=1 user=" + cfg.User + " dbname=" + cfg.Database + " sslmode=" + mode)
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, dsn)
	var encrypted bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&encrypted); err != nil {
		t.Fatal(err)
	}
	if encrypted != (ssl == "on") {
		t.Errorf("sslmode=%s, server ssl=%s: connection encrypted = %v", mode, ssl, encrypted)
	}
}

func TestRewriteDSN(t *testing.T) {
	t.Parallel()
	p := faultnet.Start(t, "127.0.0.1:1")
	tests := []struct{ in, want string }{
		{"postgres://u@db.example:5432/x?sslmode=disable", "postgres://u@" + p.Addr() + "/x?sslmode=disable"},
		{"postgres://u@a:1,b:2/x?target_session_attrs=read-write", "postgres://u@" + p.Addr() + "/x?target_session_attrs=read-write"},
	}
	for _, tt := range tests {
		if got, err := p.RewriteDSN(tt.in); err != nil || got != tt.want {
			t.Errorf("RewriteDSN(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	got, err := p.RewriteDSN("host=a port=1 user=u dbname=x")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(got)
	if err != nil || net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))) != p.Addr() || cfg.User != "u" || cfg.Database != "x" {
		t.Errorf("RewriteDSN(keyword/value) = %q, parsed as %+v, %v", got, cfg, err)
	}
}

func TestIsCommit(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"commit", "COMMIT", "  Commit ;", "commit  transaction", "END", "end work;"} {
		if !faultnet.IsCommit(s) {
			t.Errorf("IsCommit(%q) = false", s)
		}
	}
	for _, s := range []string{"", "begin", "commit; select 1", "rollback", "commit prepared 'x'", "select 'commit'"} {
		if faultnet.IsCommit(s) {
			t.Errorf("IsCommit(%q) = true", s)
		}
	}
}
