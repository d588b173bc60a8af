package repo_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
)

func smallPool(n int32) func(*pgxpool.Config) { return func(c *pgxpool.Config) { c.MaxConns = n } }

// awaitWaiting returns once n callers of key are queued in c.
func awaitWaiting(t *testing.T, c *repo.Combiner[Account], key pgcc.Key, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for c.Waiting(key) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d callers queued after 30 s, want %d", c.Waiting(key), n)
		}
		time.Sleep(time.Millisecond)
	}
}

type modifyResult struct {
	row Account
	err error
}

// goModify runs c.Modify in a goroutine and returns where its result will arrive.
func goModify(ctx context.Context, c *repo.Combiner[Account], fn func(context.Context, *Account) error) <-chan modifyResult {
	ch := make(chan modifyResult, 1)
	go func() {
		row, err := c.Modify(ctx, pgcc.Key{int64(1)}, fn)
		ch <- modifyResult{row, err}
	}()
	return ch
}

// blocker is a fn that signals it was entered, then waits for release (on its first call only).
func blocker(entered, release chan struct{}, change func(*Account)) func(context.Context, *Account) error {
	var once sync.Once
	return func(ctx context.Context, a *Account) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		change(a)
		return nil
	}
}

func TestCombineBatchAppliesInOrderAndIsolatesErrors(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1, smallPool(4))
	ctx := context.Background()
	c, err := accounts.Combine(pool)
	if err != nil {
		t.Fatal(err)
	}
	key := pgcc.Key{int64(1)}
	entered, release := make(chan struct{}), make(chan struct{})
	leader := goModify(ctx, c, blocker(entered, release, func(a *Account) { a.Balance++ }))
	<-entered
	double := goModify(ctx, c, func(_ context.Context, a *Account) error { a.Balance *= 2; a.Owner += "+double"; return nil })
	awaitWaiting(t, c, key, 1)
	errRefused := errors.New("refused")
	failing := goModify(ctx, c, func(_ context.Context, a *Account) error { a.Balance = -1; return errRefused })
	awaitWaiting(t, c, key, 2)
	plus10 := goModify(ctx, c, func(_ context.Context, a *Account) error { a.Balance += 10; a.Owner += "+10"; return nil })
	awaitWaiting(t, c, key, 3)
	close(release)

	if r := <-leader; r.err != nil || r.row.Balance != 101 || r.row.Version != 2 {
		t.Fatalf("leader: %+v, want balance 101 at version 2", r)
	}
	if r := <-double; r.err != nil || r.row.Balance != 202 || r.row.Owner != "owner-1+double" || r.row.Version != 3 {
		t.Fatalf("double: %+v, want balance 202 at version 3", r)
	}
	if r := <-failing; !errors.Is(r.err, errRefused) {
		t.Fatalf("failing: %+v, want its own error", r)
	}
	if r := <-plus10; r.err != nil || r.row.Balance != 212 || r.row.Owner != "owner-1+double+10" || r.row.Version != 3 {
		t.Fatalf("plus10: %+v, want balance 212 at version 3 (after double, not after the failed fn)", r)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Balance != 212 || got.Version != 3 {
		t.Fatalf("stored %+v, want balance 212 at version 3: two batches", got)
	}
}

func TestCombineCancelledWhileQueuedAppliesNothing(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1, smallPool(4))
	ctx := context.Background()
	c, err := accounts.Combine(pool)
	if err != nil {
		t.Fatal(err)
	}
	key := pgcc.Key{int64(1)}
	entered, release := make(chan struct{}), make(chan struct{})
	leader := goModify(ctx, c, blocker(entered, release, func(a *Account) { a.Balance++ }))
	<-entered
	qctx, cancel := context.WithCancel(ctx)
	var called atomic.Bool
	queued := goModify(qctx, c, func(_ context.Context, a *Account) error { called.Store(true); a.Balance += 1000; return nil })
	awaitWaiting(t, c, key, 1)
	cancel()
	if r := <-queued; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled caller: %+v, want context.Canceled", r)
	}
	if c.Waiting(key) != 0 {
		t.Fatalf("the cancelled caller is still queued")
	}
	close(release)
	if r := <-leader; r.err != nil {
		t.Fatal(r.err)
	}
	if called.Load() {
		t.Fatal("the cancelled caller's fn was called")
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Balance != 101 || got.Version != 2 {
		t.Fatalf("stored %+v, want only the leader's change", got)
	}
}

// A backend terminated while a batch holds the row: the batch is retried on a fresh connection, so that every
// member is applied exactly once.
func TestCombineBackendKilledMidBatch(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1, smallPool(4))
	ctx := context.Background()
	c, err := accounts.Combine(pool)
	if err != nil {
		t.Fatal(err)
	}
	key := pgcc.Key{int64(1)}
	entered1, release1 := make(chan struct{}), make(chan struct{})
	leader := goModify(ctx, c, blocker(entered1, release1, func(a *Account) { a.Balance++ }))
	<-entered1
	entered2, release2 := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	first := goModify(ctx, c, blocker(entered2, release2, func(a *Account) { calls.Add(1); a.Balance += 10 }))
	awaitWaiting(t, c, key, 1)
	second := goModify(ctx, c, func(_ context.Context, a *Account) error { a.Balance += 100; return nil })
	awaitWaiting(t, c, key, 2)
	close(release1)
	if r := <-leader; r.err != nil {
		t.Fatal(r.err)
	}
	<-entered2 // the second batch holds the row lock and is inside its first fn
	killed := queryInt(t, pool, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%FOR NO KEY UPDATE%'`)
	if killed != 1 {
		t.Fatalf("terminated %d backends, want the batch's one", killed)
	}
	close(release2)
	r1, r2 := <-first, <-second
	if r1.err != nil || r2.err != nil {
		t.Fatalf("after the kill: %v, %v", r1.err, r2.err)
	}
	if calls.Load() != 2 {
		t.Fatalf("first fn called %d times, want 2 (the killed attempt and the retry)", calls.Load())
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Balance != 211 || got.Version != 3 {
		t.Fatalf("stored %+v, want balance 211 at version 3: every change exactly once", got)
	}
}

// Many writers on one key, through two Combiners on two pools (two processes, as far as the database can
// tell): the count is exact, and fewer versions than changes were written.
func TestCombineConcurrentExactAcrossCombiners(t *testing.T) {
	t.Parallel()
	db, pool, accounts := setup(t, 1, smallPool(4))
	other := db.Pool(t, smallPool(4))
	ctx := context.Background()
	var combiners []*repo.Combiner[Account]
	for _, p := range []*pgxpool.Pool{pool, other} {
		c, err := accounts.Combine(p, repo.WithMaxBatch(16))
		if err != nil {
			t.Fatal(err)
		}
		combiners = append(combiners, c)
	}
	const workers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := combiners[w%2]
			for range each {
				if _, err := c.Modify(ctx, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error { a.Balance++; return nil }); err != nil {
					errs <- err
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
	got := mustGet(t, accounts, pool, int64(1))
	if got.Balance != 100+workers*each {
		t.Fatalf("balance %d, want %d", got.Balance, 100+workers*each)
	}
	t.Logf("%d changes in %d transactions", workers*each, got.Version-1)
}

func TestCombineMissingRowAndBadArguments(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1, smallPool(2))
	ctx := context.Background()
	c, err := accounts.Combine(pool)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Modify(ctx, pgcc.Key{int64(9)}, func(context.Context, *Account) error { return nil })
	if !errors.Is(err, pgcc.ErrNotFound) {
		t.Fatalf("missing row: %v, want ErrNotFound", err)
	}
	if _, err := c.Modify(ctx, pgcc.Key{int64(1)}, nil); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("nil fn: %v", err)
	}
	_, err = c.Modify(ctx, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error { a.ID = 2; return nil })
	if !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("key changed: %v, want ErrInvalidArgument", err)
	}
	if _, err := accounts.Combine(pool, repo.WithMaxBatch(0)); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("WithMaxBatch(0): %v", err)
	}
	tx := beginTx(t, pool)
	if _, err := accounts.Combine(tx); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Combine on a pgx.Tx: %v", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the fn's panic", p)
			}
		}()
		_, _ = c.Modify(ctx, pgcc.Key{int64(1)}, func(context.Context, *Account) error { panic("boom") })
	}()
	if got := mustGet(t, accounts, pool, int64(1)); got.Balance != 100 || got.Version != 1 {
		t.Fatalf("stored %+v, want the row untouched", got)
	}
}
