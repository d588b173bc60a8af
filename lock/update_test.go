package lock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// counterRow is a row of the counters table: a value under a CHECK (n <= 1000) and a version counter.
type counterRow struct {
	ID      int64  `db:"id"`
	N       int64  `db:"n"`
	Note    string `db:"note"`
	Version int64  `db:"version"`
}

// queued is a row of the queue table.
type queued struct {
	ID   int64 `db:"id"`
	Done bool  `db:"done"`
	By   int64 `db:"by_worker"`
}

// setupUpdate creates the counters (rows 1..n) and queue (jobs 1..jobs) tables on a fresh database, and returns
// a pool with up to conns connections, its DSN and the tables.
func setupUpdate(t *testing.T, n, jobs, conns int) (*pgxpool.Pool, string, *repo.Table[counterRow], *lock.TableDef[queued]) {
	t.Helper()
	db := pgtest.NewDB(t)
	pool := db.Pool(t, func(c *pgxpool.Config) { c.MaxConns = int32(conns) })
	_, err := pool.Exec(context.Background(), fmt.Sprintf(`
		CREATE TABLE counters (id bigint PRIMARY KEY, n bigint NOT NULL CHECK (n <= 1000), note text NOT NULL DEFAULT '', version bigint NOT NULL DEFAULT 1);
		INSERT INTO counters (id, n) SELECT g, 0 FROM generate_series(1, %d) g;
		CREATE TABLE queue (id bigint PRIMARY KEY, done bool NOT NULL DEFAULT false, by_worker bigint NOT NULL DEFAULT 0 CHECK (by_worker >= 0));
		INSERT INTO queue (id) SELECT g FROM generate_series(1, %d) g`, n, jobs))
	if err != nil {
		t.Fatal(err)
	}
	counters := must(repo.NewTable[counterRow]("counters"))
	queue := must(lock.NewTable[queued]("queue"))
	return pool, db.DSN, counters, queue
}

func increment(_ context.Context, r *counterRow) error {
	r.N++
	return nil
}

// TestUpdateConcurrent runs increments from many goroutines on a small pool, on a hot row and on a few others,
// and checks the exact final counts and versions: no update lost, each committed once.
func TestUpdateConcurrent(t *testing.T) {
	t.Parallel()
	pool, _, counters, _ := setupUpdate(t, 4, 0, 4)
	ctx := context.Background()
	const workers, each = 12, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := int64(1) // half the operations hit row 1
				if i%2 == 1 {
					id = int64(2 + (w+i)%3)
				}
				if _, err := lock.Update(ctx, pool, counters, pgcc.Key{id}, increment, lock.WithTimeout(20*time.Second)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var total, hot, hotVersion int64
	if err := pool.QueryRow(ctx, "SELECT sum(n), (SELECT n FROM counters WHERE id = 1), (SELECT version FROM counters WHERE id = 1) FROM counters").Scan(&total, &hot, &hotVersion); err != nil {
		t.Fatal(err)
	}
	if total != workers*each || hot != workers*each/2 || hotVersion != 1+workers*each/2 {
		t.Fatalf("sum %d, row 1 n %d version %d; want %d, %d, %d", total, hot, hotVersion, workers*each, workers*each/2, 1+workers*each/2)
	}
}

// TestUpdateReturnsTheRowAsWritten checks the returned row, the version counter advanced with it, a function
// that changes nothing writing nothing, fn's own error returned unchanged with nothing written, and a changed
// key refused.
func TestUpdateReturnsTheRowAsWritten(t *testing.T) {
	t.Parallel()
	pool, _, counters, _ := setupUpdate(t, 2, 0, 2)
	ctx := context.Background()
	got, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, func(_ context.Context, r *counterRow) error {
		r.N, r.Note = 7, "seven"
		return nil
	})
	if err != nil || got != (counterRow{ID: 1, N: 7, Note: "seven", Version: 2}) {
		t.Fatalf("Update = %+v, %v", got, err)
	}
	stored := must(counters.Get(ctx, pool, pgcc.Key{1}))
	if stored != got {
		t.Fatalf("stored %+v, returned %+v", stored, got)
	}
	// Nothing changed: nothing written, the version stays.
	if got, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, func(context.Context, *counterRow) error { return nil }); err != nil || got.Version != 2 {
		t.Fatalf("no-op Update = %+v, %v", got, err)
	}
	errOwn := errors.New("no, thanks")
	if _, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, func(_ context.Context, r *counterRow) error {
		r.N = 100
		return errOwn
	}); err != errOwn {
		t.Fatalf("fn's error: got %v", err)
	}
	if _, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, func(_ context.Context, r *counterRow) error {
		r.ID = 2
		return nil
	}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("changed key: got %v", err)
	}
	if stored := must(counters.Get(ctx, pool, pgcc.Key{1})); stored != got {
		t.Fatalf("after refused calls the row is %+v, want %+v", stored, got)
	}
	var missing *lock.MissingError
	if _, err := lock.Update(ctx, pool, counters, pgcc.Key{9}, increment); !errors.As(err, &missing) || !errors.Is(err, pgcc.ErrNotFound) {
		t.Fatalf("missing row: got %v", err)
	}
}

// TestUpdateRefusedWriteCommitsNothing makes the final write break a CHECK constraint: the error names the
// table and key and carries the server's error, and nothing of the transaction commits. ClaimAndUpdate writing
// two rows, the second refused, leaves both as they were.
func TestUpdateRefusedWriteCommitsNothing(t *testing.T) {
	t.Parallel()
	pool, _, counters, queue := setupUpdate(t, 1, 3, 2)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "UPDATE counters SET n = 1000 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	_, err := lock.Update(ctx, pool, counters, pgcc.Key{int64(1)}, func(_ context.Context, r *counterRow) error {
		r.N++
		r.Note = "too far"
		return nil
	})
	var we *lock.WriteError
	var pgErr *pgconn.PgError
	if !errors.As(err, &we) || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.CheckViolation {
		t.Fatalf("err = %v, want a *lock.WriteError with a check violation", err)
	}
	if we.Table != `"counters"` || len(we.Keys) != 1 || we.Keys[0][0] != int64(1) || pgErr.TableName != "counters" {
		t.Fatalf("WriteError %+v (server's table %q)", we, pgErr.TableName)
	}
	if want := `pgcc: write of "counters" id=1 refused: `; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Fatalf("message %q", err)
	}
	if stored := must(counters.Get(ctx, pool, pgcc.Key{1})); stored.N != 1000 || stored.Note != "" || stored.Version != 1 {
		t.Fatalf("a refused write committed: %+v", stored)
	}

	_, err = lock.ClaimAndUpdate(ctx, pool, queue, 2, func(_ context.Context, jobs []queued) error {
		jobs[0].Done, jobs[0].By = true, 1
		jobs[1].Done, jobs[1].By = true, -1 // breaks the CHECK
		return nil
	})
	if !errors.As(err, &we) || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.CheckViolation {
		t.Fatalf("ClaimAndUpdate: err = %v, want a *lock.WriteError with a check violation", err)
	}
	if len(we.Keys) != 2 || we.Keys[0][0] != int64(1) || we.Keys[1][0] != int64(2) {
		t.Fatalf("ClaimAndUpdate: keys %v, want ids 1 and 2", we.Keys)
	}
	var done int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM queue WHERE done OR by_worker <> 0").Scan(&done); err != nil || done != 0 {
		t.Fatalf("%d jobs changed by a refused flight (%v)", done, err)
	}
}

// TestClaimAndUpdateProcessesEachJobOnce has workers claim batches of a queue concurrently until it is empty:
// every job is done exactly once, by the worker that claimed it.
func TestClaimAndUpdateProcessesEachJobOnce(t *testing.T) {
	t.Parallel()
	const jobs, workers = 120, 6
	pool, _, _, queue := setupUpdate(t, 0, jobs, workers)
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[int64]int64{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := lock.ClaimAndUpdate(ctx, pool, queue, 4, func(_ context.Context, batch []queued) error {
					for i := range batch {
						batch[i].Done, batch[i].By = true, int64(w+1)
					}
					return nil
				}, lock.Where("NOT done"), lock.OrderBy("id"))
				if err != nil {
					errs <- err
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, j := range got {
					if prev, dup := seen[j.ID]; dup {
						errs <- fmt.Errorf("job %d done by workers %d and %d", j.ID, prev, j.By)
					}
					seen[j.ID] = j.By
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT id, done, by_worker FROM queue ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowToStructByName[queued])
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != jobs {
		t.Fatalf("%d jobs returned as done, want %d", len(seen), jobs)
	}
	for _, j := range stored {
		if !j.Done || j.By != seen[j.ID] {
			t.Errorf("job %d stored as %+v, returned as done by worker %d", j.ID, j, seen[j.ID])
		}
	}
}

// TestUpdateTwoRoundTrips counts the flights through the proxy: Update and ClaimAndUpdate cost two round trips
// each (BEGIN with the lock statement, the write with COMMIT), with or without a lock timeout.
func TestUpdateTwoRoundTrips(t *testing.T) {
	t.Parallel()
	_, dsn, counters, queue := setupUpdate(t, 3, 50, 1)
	p, proxied := faultnet.ForDSN(t, dsn)
	pool := (&pgtest.DB{DSN: proxied}).Pool(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	ctx := context.Background()
	if err := pool.Ping(ctx); err != nil { // the connection is opened outside the count
		t.Fatal(err)
	}
	complete := func(_ context.Context, jobs []queued) error {
		for i := range jobs {
			jobs[i].Done = true
		}
		return nil
	}
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"Update", func() error { _, err := lock.Update(ctx, pool, counters, pgcc.Key{2}, increment); return err }},
		{"Update with timeout", func() error {
			_, err := lock.Update(ctx, pool, counters, pgcc.Key{3}, increment, lock.WithTimeout(5*time.Second))
			return err
		}},
		{"ClaimAndUpdate", func() error {
			_, err := lock.ClaimAndUpdate(ctx, pool, queue, 2, complete, lock.Where("NOT done"))
			return err
		}},
	} {
		if err := tc.op(); err != nil { // prepares the statements
			t.Fatal(err)
		}
		const n = 5
		p.ResetStats()
		for range n {
			if err := tc.op(); err != nil {
				t.Fatal(err)
			}
		}
		if got := p.Stats().Flights; got != 2*n {
			t.Errorf("%s: %d round trips for %d calls, want %d", tc.name, got, n, 2*n)
		}
	}
}

// TestUpdateOptionsAndInput checks what is refused before anything is sent.
func TestUpdateOptionsAndInput(t *testing.T) {
	t.Parallel()
	pool, _, counters, queue := setupUpdate(t, 1, 1, 2)
	ctx := context.Background()
	for name, err := range map[string]error{
		"skip locked": func() error {
			_, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, increment, lock.WithWait(lock.SkipLocked))
			return err
		}(),
		"nil fn": func() error { _, err := lock.Update[counterRow](ctx, pool, counters, pgcc.Key{1}, nil); return err }(),
		"nil db": func() error { _, err := lock.Update(ctx, nil, counters, pgcc.Key{1}, increment); return err }(),
		"where": func() error {
			_, err := lock.Update(ctx, pool, counters, pgcc.Key{1}, increment, lock.Where("true"))
			return err
		}(),
		"zero limit": func() error { _, err := lock.ClaimAndUpdate(ctx, pool, queue, 0, nil); return err }(),
		"run on Load": func() error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := lock.Load(ctx, tx, counters, []pgcc.Key{{1}}, lock.WithRunOptions(txn.WithMaxAttempts(2)))
				return err
			})
		}(),
	} {
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want pgcc.ErrInvalidArgument", name, err)
		}
	}
	// Run's options reach Run: a nested Run refuses them.
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := lock.Update(ctx, tx, counters, pgcc.Key{1}, increment, lock.WithRunOptions(txn.WithMaxAttempts(3)))
		return err
	})
	if !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("run options on a nested Update: err = %v", err)
	}
}

// TestUpdateInsideATransaction gives Update the caller's transaction: it runs in a savepoint, writes at once,
// and commits with the caller's transaction, or not at all.
func TestUpdateInsideATransaction(t *testing.T) {
	t.Parallel()
	pool, _, counters, _ := setupUpdate(t, 1, 0, 2)
	ctx := context.Background()
	errLater := errors.New("later failure")
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := lock.Update(ctx, tx, counters, pgcc.Key{1}, increment); err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRow(ctx, "SELECT n FROM counters WHERE id = 1").Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("inside the transaction n = %d (%v), want 1", n, err)
		}
		return errLater
	})
	if err != errLater {
		t.Fatal(err)
	}
	if stored := must(counters.Get(ctx, pool, pgcc.Key{1})); stored.N != 0 {
		t.Fatalf("rolled back transaction left n = %d", stored.N)
	}
	if err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := lock.Update(ctx, tx, counters, pgcc.Key{1}, increment)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if stored := must(counters.Get(ctx, pool, pgcc.Key{1})); stored.N != 1 || stored.Version != 2 {
		t.Fatalf("committed: %+v", stored)
	}
}
