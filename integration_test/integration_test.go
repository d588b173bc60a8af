// Package integration_test holds the scenarios that cross pgcc's packages, as a service composes them: repo
// writes inside txn.Run, rows of repo tables locked through lock, a lease's fencing token guarding a repo
// write, diagnostics naming the session that blocks a lock. Each test gets its own database cloned from the
// migrated template.
package integration_test

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
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Account is the row type of the scenarios.
type Account struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

// setup returns a pool on a fresh database holding n accounts with balance 100 each, and their table.
func setup(t *testing.T, n int) (*pgxpool.Pool, *repo.Table[Account]) {
	t.Helper()
	pool := pgtest.NewDB(t).Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE accounts (
		id bigint PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL, version bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := accounts.Insert(ctx, pool, &Account{ID: int64(i + 1), Owner: "owner", Balance: 100}); err != nil {
			t.Fatal(err)
		}
	}
	return pool, accounts
}

func total(t *testing.T, pool *pgxpool.Pool) (sum, versions int64) {
	t.Helper()
	if err := pool.QueryRow(context.Background(), `SELECT sum(balance), sum(version) FROM accounts`).Scan(&sum, &versions); err != nil {
		t.Fatal(err)
	}
	return sum, versions
}

// TestRepoInsideTxn moves money between accounts with optimistic repo writes inside txn.Run, 8 goroutines at
// once: a conflict on either row rolls back the whole transfer and txn.Run retries it (RetryIf conflict), so
// the total is conserved and every account's version counts exactly the writes it received.
func TestRepoInsideTxn(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 4)
	ctx := context.Background()
	var done, conflicts atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				from, to := int64((g+i)%4+1), int64((g+i+1)%4+1)
				err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					a, err := accounts.Get(ctx, tx, pgcc.Key{from})
					if err != nil {
						return err
					}
					b, err := accounts.Get(ctx, tx, pgcc.Key{to})
					if err != nil {
						return err
					}
					a.Balance--
					b.Balance++
					if err := accounts.Update(ctx, tx, &a); err != nil {
						return err
					}
					return accounts.Update(ctx, tx, &b)
				},
					txn.WithMaxAttempts(txn.UnlimitedAttempts),
					txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 20 * time.Millisecond}),
					txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) || txn.Retryable(err) }),
					txn.OnRetry(func(int, error, time.Duration) { conflicts.Add(1) }))
				if err != nil {
					t.Error(err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	sum, versions := total(t, pool)
	if done.Load() != 320 || sum != 400 {
		t.Fatalf("transfers %d, total %d; want 320 and 400", done.Load(), sum)
	}
	// Each transfer bumps two versions; each account started at 1.
	if want := int64(4 + 2*320); versions != want {
		t.Fatalf("sum of versions %d, want %d", versions, want)
	}
	t.Logf("%d conflicts retried", conflicts.Load())
}

// TestLockRepoRows locks typed rows of a repo table with lock.Load and writes them back with repo.Update in
// the same transaction: 16 goroutines × 50 increments, exact, and no compare-and-swap ever fails under the
// lock.
func TestLockRepoRows(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 1)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					rows, err := lock.Load[Account](ctx, tx, accounts, []pgcc.Key{{int64(1)}})
					if err != nil {
						return err
					}
					rows[0].Balance++
					return accounts.Update(ctx, tx, &rows[0])
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	a, err := accounts.Get(ctx, pool, pgcc.Key{int64(1)})
	if err != nil || a.Balance != 100+16*50 || a.Version != 1+16*50 {
		t.Fatalf("account = %+v, %v; want balance %d, version %d", a, err, 100+16*50, 1+16*50)
	}
}

// TestLeaseFencesRepoWrite plays the failure fencing tokens exist for: holder A takes a lease, pauses past
// its TTL, B takes over and writes; when A wakes up its write, guarded by its old token, is rejected, and B's
// value stands.
func TestLeaseFencesRepoWrite(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 1)
	ctx := context.Background()
	leases := lease.New(pool)
	guardedWrite := func(l *lease.Lease, owner string) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if err := lease.Guard(ctx, tx, l.Name, l.Token); err != nil {
				return err
			}
			_, err := accounts.Modify(ctx, tx, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
				a.Owner = owner
				return nil
			})
			return err
		})
	}
	a, err := leases.TryAcquire(ctx, "account-1-owner", "worker-a", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := guardedWrite(a, "a-early"); err != nil {
		t.Fatalf("A's write while its lease is live: %v", err)
	}
	// A pauses (a GC pause, a stopped VM) past its TTL; B tries until the lease is free.
	var b *lease.Lease
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err = leases.TryAcquire(ctx, "account-1-owner", "worker-b", time.Minute)
		if err == nil {
			break
		}
		var held *lease.HeldError
		if !errors.As(err, &held) || held.Holder != "worker-a" || time.Now().After(deadline) {
			t.Fatalf("B's try: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b.Token <= a.Token {
		t.Fatalf("B's token %d is not above A's %d", b.Token, a.Token)
	}
	if err := guardedWrite(b, "b"); err != nil {
		t.Fatal(err)
	}
	err = guardedWrite(a, "a-late")
	var fenced *lease.FencedError
	if !errors.Is(err, pgcc.ErrFenced) || !errors.As(err, &fenced) {
		t.Fatalf("A's late write: %v, want ErrFenced", err)
	}
	got, err := accounts.Get(ctx, pool, pgcc.Key{int64(1)})
	if err != nil || got.Owner != "b" || got.Version != 3 {
		t.Fatalf("account = %+v, %v; want owner b at version 3", got, err)
	}
}

// TestNoWaitNamesTheBlocker holds a row with a repo write in an open transaction and checks that a NOWAIT
// lock from another transaction fails at once with a typed error naming the table, the key and the blocking
// session (its pid and application name), and that txn.Run retries it when asked and succeeds once the
// holder commits.
func TestNoWaitNamesTheBlocker(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 1)
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	row, err := accounts.Get(ctx, holder, pgcc.Key{int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	row.Balance = 0
	if err := accounts.Update(ctx, holder, &row); err != nil {
		t.Fatal(err)
	}
	holderPID := int(holder.Conn().PgConn().PID())

	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts, pgcc.Key{int64(1)}, lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool))
	})
	var le *pgcc.LockError
	if !errors.Is(err, pgcc.ErrLockNotAvailable) || !errors.As(err, &le) {
		t.Fatalf("err = %v, want a *pgcc.LockError matching ErrLockNotAvailable", err)
	}
	if le.Table != `"accounts"` || len(le.Keys) != 1 || len(le.Blockers) != 1 ||
		le.Blockers[0].PID != holderPID || le.Blockers[0].Application != "pgcc-test" {
		t.Fatalf("lock error = %+v, blockers %+v; want accounts id=1 held by pid %d", le, le.Blockers, holderPID)
	}

	// With RetryLockNotAvailable the same call waits out the holder through retries.
	committed := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		committed <- holder.Commit(ctx)
	}()
	var balance int64
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := lock.Load[Account](ctx, tx, accounts, []pgcc.Key{{int64(1)}}, lock.WithWait(lock.NoWait))
		if err != nil {
			return err
		}
		balance = rows[0].Balance
		return nil
	}, txn.RetryLockNotAvailable(), txn.WithMaxAttempts(50),
		txn.WithBackoff(txn.Backoff{Base: 10 * time.Millisecond, Cap: 50 * time.Millisecond}))
	if cerr := <-committed; cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil || balance != 0 {
		t.Fatalf("after the holder committed: balance %d, %v", balance, err)
	}
}

// TestSqlcStyleCheck is what a team with its own SQL writes: a hand-written compare-and-swap inside txn.Run,
// its result turned into repo's errors by Table.Check.
func TestSqlcStyleCheck(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 1)
	ctx := context.Background()
	const cas = `UPDATE accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3`
	write := func(balance, version int64) error {
		return txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, cas, int64(1), balance, version)
			if err != nil {
				return err
			}
			return accounts.Check(ctx, tx, tag, pgcc.Key{int64(1)}, version)
		})
	}
	if err := write(50, 1); err != nil {
		t.Fatal(err)
	}
	err := write(60, 1)
	var ce *pgcc.ConflictError
	if !errors.As(err, &ce) || ce.Expected != 1 || ce.Actual != 2 || ce.Deleted || ce.Table != `"accounts"` {
		t.Fatalf("stale write: %v (%+v)", err, ce)
	}
	if want := `pgcc: conflict writing "accounts" id=1: expected version 1, found 2`; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
}

// TestTemplateIsMigrated checks that each test database carries the library's schema at its latest version.
func TestTemplateIsMigrated(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t).Pool(t)
	latest, err := schema.Latest()
	if err != nil {
		t.Fatal(err)
	}
	var v uint
	var dirty bool
	if err := pool.QueryRow(context.Background(), `SELECT version, dirty FROM pgcc.schema_migrations`).Scan(&v, &dirty); err != nil || dirty || v != latest {
		t.Fatalf("version %d (latest %d), dirty %v, err %v", v, latest, dirty, err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pgcc.leases`).Scan(&n); err != nil {
		t.Fatal(err)
	}
}
