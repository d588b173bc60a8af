package lease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
)

// The release statement, as the proxy sees it (the renewal updates renewed_at first).
var isRelease = faultnet.SQLHasPrefix("UPDATE pgcc.leases SET expires_at")

// leaseEvents records the lease events of an observer.
type leaseEvents struct {
	pgcc.NopObserver
	mu    sync.Mutex
	kinds []pgcc.LeaseEventKind
}

func (o *leaseEvents) ObserveLease(_ context.Context, e pgcc.LeaseEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.kinds = append(o.kinds, e.Kind)
}

// count returns how many events of kind were observed.
func (o *leaseEvents) count(kind pgcc.LeaseEventKind) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, k := range o.kinds {
		if k == kind {
			n++
		}
	}
	return n
}

// onePooledConn configures a pool of one connection that is handed out without a ping, so a connection whose
// backend died while idle is used as it is, and whose statements go as simple queries (one message the proxy
// can lose the reply of, after the server ran it).
func onePooledConn(c *pgxpool.Config) {
	c.MaxConns = 1
	c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
}

// terminate ends the backend pid from direct and waits until it is gone.
func terminate(t *testing.T, direct *pgxpool.Pool, pid int64) {
	t.Helper()
	if queryInt(t, direct, "SELECT pg_terminate_backend($1::int)::int", pid) != 1 {
		t.Fatalf("backend %d not terminated", pid)
	}
	for queryInt(t, direct, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", pid) != 0 {
		time.Sleep(5 * time.Millisecond)
	}
}

// released reports whether the lease name is expired under token (released, not taken over).
func released(t *testing.T, direct *pgxpool.Pool, name string, token int64) bool {
	t.Helper()
	return queryInt(t, direct, "SELECT count(*) FROM pgcc.leases WHERE name = $1 AND token = $2 AND expires_at <= clock_timestamp()",
		name, token) == 1
}

// takeOver acquires name as another holder, which must succeed at once.
func takeOver(t *testing.T, ctx context.Context, direct *pgxpool.Pool, name string, token int64) *lease.Lease {
	t.Helper()
	next, err := lease.New(direct).TryAcquire(ctx, name, "b", time.Minute)
	if err != nil {
		t.Fatalf("TryAcquire by another holder after the release: %v", err)
	}
	if next.Token <= token {
		t.Fatalf("the next grant's token %d is not above the released %d", next.Token, token)
	}
	return next
}

// proxied opens a pool of onePooledConn on db through a fault-injecting proxy.
func proxied(t *testing.T, db *pgtest.DB, configure ...func(*pgxpool.Config)) (*faultnet.Proxy, *pgxpool.Pool) {
	t.Helper()
	proxy, dsn := faultnet.ForDSN(t, db.DSN)
	return proxy, (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, append([]func(*pgxpool.Config){onePooledConn}, configure...)...)
}

// proxiedSetup returns a context for the test, a proxied pool of onePooledConn on a fresh database (configure
// adjusting it), a direct pool on it, and the lease "job" granted to "a" through the proxied pool, reporting to
// events when it is not nil.
func proxiedSetup(t *testing.T, events *leaseEvents, configure ...func(*pgxpool.Config)) (context.Context, *faultnet.Proxy, *pgxpool.Pool, *pgxpool.Pool, *lease.Lease) {
	t.Helper()
	db := pgtest.NewDB(t)
	proxy, pool := proxied(t, db, configure...)
	direct := db.Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx, proxy, pool, direct, grant(t, ctx, pool, events)
}

// grant acquires the lease "job" for holder "a" on db, reporting to events when it is not nil.
func grant(t *testing.T, ctx context.Context, db pgcc.DBTX, events *leaseEvents) *lease.Lease {
	t.Helper()
	var opts []lease.Option
	if events != nil {
		opts = append(opts, lease.WithObserver(events))
	}
	l, err := lease.New(db, opts...).TryAcquire(ctx, "job", "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// liveToken returns the token of the live grant of the lease "job".
func liveToken(t *testing.T, direct *pgxpool.Pool) int64 {
	t.Helper()
	return queryInt(t, direct, "SELECT token FROM pgcc.leases WHERE name = 'job' AND expires_at > clock_timestamp()")
}

// releaseThroughFault releases l, granted on pool, and checks that Release returned nil after the one fault
// (faults counts them), that the lease was released once, observed as such, and that another holder gets it
// at once.
func releaseThroughFault(t *testing.T, ctx context.Context, l *lease.Lease, pool, direct *pgxpool.Pool, events *leaseEvents, faults func() int) {
	t.Helper()
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release: %v (%T)", err, err)
	}
	if n := faults(); n != 1 {
		t.Fatalf("%d faults hit the release, want 1", n)
	}
	if !released(t, direct, l.Name, l.Token) {
		t.Fatal("the lease is not released")
	}
	if n, f := events.count(pgcc.LeaseReleased), events.count(pgcc.LeaseFenced); n != 1 || f != 0 {
		t.Fatalf("observed %d releases and %d fencings, want 1 and 0", n, f)
	}
	next := takeOver(t, ctx, direct, l.Name, l.Token)
	if err := next.Release(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoAcquired(t, pool, direct)
}

func checkNoAcquired(t *testing.T, pools ...*pgxpool.Pool) {
	t.Helper()
	for _, p := range pools {
		if n := p.Stat().AcquiredConns(); n != 0 {
			t.Fatalf("%d connection(s) still acquired", n)
		}
	}
}

// TestReleaseOnTerminatedPooledConnection: the fault suite's lease cell saw Release fail when the pooled
// connection it got had its backend terminated while idle, leaving the account blocked for the TTL. On a pool
// Release now tries another connection and releases the lease.
func TestReleaseOnTerminatedPooledConnection(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	var failures atomic.Int32
	pool := db.Pool(t, onePooledConn, func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = onQueryError{do: func() { failures.Add(1) }}
	})
	direct := db.Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events := &leaseEvents{}
	l := grant(t, ctx, pool, events)
	terminate(t, direct, queryInt(t, pool, "SELECT pg_backend_pid()"))

	releaseThroughFault(t, ctx, l, pool, direct, events, func() int { return int(failures.Load()) })
}

// TestReleaseReplyLost: the release ran but its reply was lost; the retry affects no row, and finds the lease
// expired under its own token. The first attempt was sent while the grant was trusted, so Release reports
// success.
func TestReleaseReplyLost(t *testing.T) {
	t.Parallel()
	events := &leaseEvents{}
	ctx, proxy, pool, direct, l := proxiedSetup(t, events)
	rule := proxy.OnQuery(isRelease, faultnet.LoseReply)

	releaseThroughFault(t, ctx, l, pool, direct, events, rule.Fired)
}

// onQueryError calls do after each statement that failed on the connections it traces.
type onQueryError struct{ do func() }

func (tr onQueryError) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (tr onQueryError) TraceQueryEnd(_ context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if data.Err != nil {
		tr.do()
	}
}

// TestReleaseReplyLostThenTakenOver: the release ran, its reply was lost, and another holder took the lease
// before the retry. The retry finds another token: that is a fencing, not a release, whatever the first
// attempt did.
func TestReleaseReplyLostThenTakenOver(t *testing.T) {
	t.Parallel()
	// The takeover runs, once, when the release's lost reply fails the statement: before the retry.
	var takeOverOnce func()
	var once sync.Once
	tracer := onQueryError{do: func() { once.Do(takeOverOnce) }}
	events := &leaseEvents{}
	ctx, proxy, pool, direct, l := proxiedSetup(t, events, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	var next *lease.Lease
	var takeOverErr error
	takeOverOnce = func() { next, takeOverErr = lease.New(direct).TryAcquire(ctx, "job", "b", time.Minute) }
	rule := proxy.OnQuery(isRelease, faultnet.LoseReply)

	err := l.Release(ctx)
	if takeOverErr != nil {
		t.Fatalf("the takeover between the lost reply and the retry: %v", takeOverErr)
	}
	if next == nil || rule.Fired() != 1 {
		t.Fatalf("takeover made: %v, rule fired %d times; want a takeover and 1", next != nil, rule.Fired())
	}
	var fenced *lease.FencedError
	if !errors.As(err, &fenced) || !errors.Is(err, pgcc.ErrFenced) {
		t.Fatalf("Release after a lost reply and a takeover: %v (%T); want a *FencedError", err, err)
	}
	if fenced.Token != l.Token || fenced.Current != next.Token || fenced.Holder != "b" {
		t.Fatalf("FencedError %+v; want token %d, current %d held by b", fenced, l.Token, next.Token)
	}
	if n, f := events.count(pgcc.LeaseReleased), events.count(pgcc.LeaseFenced); n != 0 || f != 1 {
		t.Fatalf("observed %d releases and %d fencings, want 0 and 1", n, f)
	}
	if got := liveToken(t, direct); got != next.Token {
		t.Fatalf("the live grant's token is %d, want the takeover's %d", got, next.Token)
	}
	if err := next.Release(ctx); err != nil {
		t.Fatal(err)
	}
	checkNoAcquired(t, pool, direct)
}

// TestReleaseOnSingleConnectionIsNotRetried: a *pgx.Conn cannot be replaced, so a release on one whose
// backend was terminated fails at once, typed as before, and the lease stays held until its TTL.
func TestReleaseOnSingleConnectionIsNotRetried(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	conn := db.Conn(t)
	direct := db.Pool(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := grant(t, ctx, conn, nil)
	terminate(t, direct, int64(conn.PgConn().PID()))

	err := l.Release(ctx)
	var unknown *pgcc.CommitUnknownError
	if !errors.As(err, &unknown) || unknown.Attempts != 1 || ctx.Err() != nil {
		t.Fatalf("Release on a terminated single connection: %v (%T); want a *pgcc.CommitUnknownError of 1 attempt", err, err)
	}
	if got := liveToken(t, direct); got != l.Token {
		t.Fatalf("the live grant's token is %d, want %d (not released)", got, l.Token)
	}
	// Another attempt on the same closed connection is refused too, without waiting.
	if err := l.Release(ctx); !errors.Is(err, pgcc.ErrCommitUnknown) && !errors.Is(err, pgcc.ErrConnectionLost) {
		t.Fatalf("second Release on the closed connection: %v (%T)", err, err)
	}
	checkNoAcquired(t, direct)
}

// TestReleaseRetriesEndWithContext: while no connection can be made, Release retries until ctx ends and
// returns ctx's error joined with the last connection failure, promptly; the lease stays held.
func TestReleaseRetriesEndWithContext(t *testing.T) {
	t.Parallel()
	ctx, proxy, pool, direct, l := proxiedSetup(t, nil)
	proxy.RefuseNew(true)
	proxy.ResetAll()

	const budget = 200 * time.Millisecond
	rctx, rcancel := context.WithTimeout(ctx, budget)
	defer rcancel()
	start := time.Now()
	err := l.Release(rctx)
	took := time.Since(start)
	t.Logf("Release returned after %v (ctx %v): %v", took, budget, err)
	if !errors.Is(err, context.DeadlineExceeded) || !(errors.Is(err, pgcc.ErrConnectionLost) || errors.Is(err, pgcc.ErrCommitUnknown)) {
		t.Fatalf("Release with no connection to be had: %v (%T); want the deadline joined with a connection failure", err, err)
	}
	var lost *pgcc.ConnectionLostError
	if !errors.As(err, &lost) || lost.Attempts < 2 {
		t.Fatalf("last error %v; want a *pgcc.ConnectionLostError after several attempts", err)
	}
	// Generous against a loaded machine; the point is that the backoff never sleeps past ctx.
	if took > budget+100*time.Millisecond {
		t.Fatalf("Release returned %v after its context's %v deadline", took-budget, budget)
	}
	proxy.RefuseNew(false)
	if got := liveToken(t, direct); got != l.Token {
		t.Fatalf("the live grant's token is %d, want %d (not released)", got, l.Token)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release once connections are accepted again: %v", err)
	}
	checkNoAcquired(t, pool, direct)
}

// TestReleasedEarlierRule: after an attempt of unknown outcome, a retry that affects no row is a release only
// when that attempt was sent while the grant was trusted and the lease is expired under the same token.
func TestReleasedEarlierRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		e         lease.FencedError
		whileLive bool
		want      bool
	}{
		{"expired under own token, unknown attempt sent while trusted", lease.FencedError{Token: 7, Current: 7, Expired: true}, true, true},
		{"expired under own token, no unknown attempt while trusted", lease.FencedError{Token: 7, Current: 7, Expired: true}, false, false},
		{"taken over, expired", lease.FencedError{Token: 7, Current: 8, Expired: true}, true, false},
		{"taken over, live", lease.FencedError{Token: 7, Current: 8}, true, false},
		{"own token still live", lease.FencedError{Token: 7, Current: 7}, true, false},
		{"no lease row", lease.FencedError{Token: 7}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lease.ReleasedEarlier(&tt.e, tt.whileLive); got != tt.want {
				t.Fatalf("ReleasedEarlier(%+v, %v) = %v, want %v", tt.e, tt.whileLive, got, tt.want)
			}
		})
	}
}
