package lease_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
)

// TestKeepRenews: a kept lease outlives several TTLs, its work context stays alive, Guard accepts its token,
// and Stop ends the renewals without error and writes the last expiry back.
func TestKeepRenews(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	l, err := lease.New(pool).TryAcquire(ctx, "kept", "worker-a", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first := l.Expires
	work, keeper := l.Keep(ctx)
	time.Sleep(2 * time.Second)
	if err := work.Err(); err != nil {
		t.Fatalf("work context ended: %v (%v)", err, context.Cause(work))
	}
	if err := guardedWrite(ctx, pool, "kept", l.Token); err != nil {
		t.Errorf("guarded write under a kept lease: %v", err)
	}
	if err := keeper.Stop(); err != nil {
		t.Fatal(err)
	}
	if !l.Expires.After(first.Add(500 * time.Millisecond)) {
		t.Errorf("Expires %v after Stop, want renewed past %v", l.Expires, first)
	}
	if work.Err() == nil {
		t.Error("work context still alive after Stop")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKeepCancelsWorkWhenFenced: another holder takes the lease over (its grant expired meanwhile, say after
// a pause): the next renewal finds it fenced, and the work context is cancelled with a LostError carrying the
// FencedError.
func TestKeepCancelsWorkWhenFenced(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	l, err := leases.TryAcquire(ctx, "taken", "worker-a", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	work, keeper := l.Keep(ctx)
	defer keeper.Stop()
	if _, err := pool.Exec(ctx, "UPDATE pgcc.leases SET expires_at = clock_timestamp() WHERE name = 'taken'"); err != nil {
		t.Fatal(err)
	}
	b, err := leases.TryAcquire(ctx, "taken", "worker-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-work.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("work context not cancelled 5s after a takeover (renewal every 500ms)")
	}
	cause := context.Cause(work)
	var lost *lease.LostError
	var fenced *lease.FencedError
	if !errors.As(cause, &lost) || !errors.As(cause, &fenced) || !errors.Is(cause, pgcc.ErrFenced) {
		t.Fatalf("cause = %v, want a LostError carrying a FencedError", cause)
	}
	if fenced.Current != b.Token || fenced.Holder != "worker-b" {
		t.Errorf("FencedError = %+v, want worker-b's token %d", fenced, b.Token)
	}
	if err := keeper.Stop(); !errors.Is(err, pgcc.ErrFenced) {
		t.Errorf("Stop = %v, want the loss", err)
	}
}

// TestKeepCancelsWorkWhenUnreachable: the database stops answering (the connection hangs): renewals fail, and
// the work context is cancelled before the grant may end, so that nobody else can hold the lease while the
// work still runs.
func TestKeepCancelsWorkWhenUnreachable(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	direct := db.Pool(t)
	fw := startForwarder(t, db)
	pool := db.Pool(t, func(c *pgxpool.Config) {
		c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.Fallbacks = "127.0.0.1", fw.port(), nil
	})
	t.Cleanup(fw.close)
	ctx := context.Background()
	const ttl = time.Second
	l, err := lease.New(pool).TryAcquire(ctx, "far", "worker-a", ttl)
	if err != nil {
		t.Fatal(err)
	}
	work, keeper := l.Keep(ctx)
	defer keeper.Stop()
	fw.hang()
	hung := time.Now()
	select {
	case <-work.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("work context not cancelled 10s after the database became unreachable")
	}
	cancelled := time.Now()
	// The grant's expiry is compared with the moment of cancellation, not with the time a query checking it
	// happens to run (on a loaded machine that query alone can take longer than the TTL/10 margin). The test
	// server runs on this machine, so its clock is this process's.
	var expires time.Time
	if err := direct.QueryRow(ctx, "SELECT expires_at FROM pgcc.leases WHERE name = 'far'").Scan(&expires); err != nil {
		t.Fatal(err)
	}
	if !cancelled.Before(expires) {
		t.Errorf("the work was cancelled at %v, %v after the grant had expired: another holder could already have taken it",
			cancelled.Format(time.RFC3339Nano), cancelled.Sub(expires))
	}
	if !errors.Is(context.Cause(work), pgcc.ErrFenced) {
		t.Errorf("cause = %v", context.Cause(work))
	}
	t.Logf("work cancelled %v after the database became unreachable (TTL %v): %v", cancelled.Sub(hung), ttl, context.Cause(work))
}

// TestKeepSurvivesBackendKill: terminating the backends of the leases' pool fails a renewal or two; the pool
// connects again, a retry succeeds, and the work goes on (renewals every second, three kills in 750ms).
func TestKeepSurvivesBackendKill(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pool := db.Pool(t)
	admin := db.Conn(t)
	ctx := context.Background()
	l, err := lease.New(pool).TryAcquire(ctx, "killed", "worker-a", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	work, keeper := l.Keep(ctx)
	for range 3 {
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // a renewal after the kills
	if err := work.Err(); err != nil {
		t.Fatalf("work cancelled by a backend kill the renewals could ride out: %v", context.Cause(work))
	}
	if err := keeper.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKeepInvalidLease: Keep of a lease that cannot be renewed gives an already cancelled context.
func TestKeepInvalidLease(t *testing.T) {
	t.Parallel()
	for name, l := range map[string]*lease.Lease{
		"nil":       nil,
		"hand-made": {Name: "x", Token: 1, TTL: time.Minute},
		"TTL of 0":  {Name: "x", Token: 1},
	} {
		work, keeper := l.Keep(context.Background())
		if !errors.Is(context.Cause(work), pgcc.ErrInvalidArgument) {
			t.Errorf("%s: cause %v, want ErrInvalidArgument", name, context.Cause(work))
		}
		if err := keeper.Stop(); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: Stop = %v", name, err)
		}
	}
}

// TestAcquireOneStatementPerAttempt: Acquire waiting for a held lease sends one statement per attempt (the
// acquire statement returns the database clock the wait is computed from).
func TestAcquireOneStatementPerAttempt(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var statements []string
	db := pgtest.NewDB(t)
	pool := db.Pool(t, func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = tracer(func(sql string) {
			mu.Lock()
			statements = append(statements, sql)
			mu.Unlock()
		})
	})
	ctx := context.Background()
	leases := lease.New(pool)
	if _, err := leases.TryAcquire(ctx, "busy", "worker-a", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	statements = nil
	mu.Unlock()
	l, err := leases.Acquire(ctx, "busy", "worker-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(statements) < 2 {
		t.Errorf("%d statements: Acquire should have tried at least twice", len(statements))
	}
	for _, s := range statements {
		if !strings.Contains(s, "INSERT INTO pgcc.leases") {
			t.Errorf("Acquire sent %q, want only the acquire statement", s)
		}
	}
	t.Logf("Acquire: %d statements, token %d", len(statements), l.Token)
}

type tracer func(sql string)

func (f tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	f(data.SQL)
	return ctx
}

func (tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// forwarder is a loopback TCP proxy that can stop forwarding (bytes held back, sockets open), for the
// unreachable-database test; lock's tests have the same.
type forwarder struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	hung   atomic.Bool
	done   chan struct{}
	closed bool
	wg     sync.WaitGroup
}

func startForwarder(t testing.TB, db *pgtest.DB) *forwarder {
	t.Helper()
	cfg, err := pgx.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), done: make(chan struct{})}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", f.target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			if f.closed {
				f.mu.Unlock()
				c.Close()
				s.Close()
				return
			}
			f.conns = append(f.conns, c, s)
			f.wg.Add(2)
			f.mu.Unlock()
			go f.pipe(c, s)
			go f.pipe(s, c)
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) port() uint16 { return uint16(f.ln.Addr().(*net.TCPAddr).Port) }

func (f *forwarder) pipe(from, to net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if f.hung.Load() {
				<-f.done
				return
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *forwarder) hang() { f.hung.Store(true) }

func (f *forwarder) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.done)
	f.ln.Close()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
