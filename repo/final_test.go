package repo_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/faultnet"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// finalRetry keeps the retries of these tests short.
var finalRetry = txn.WithBackoff(txn.Backoff{Base: time.Millisecond, Cap: 5 * time.Millisecond})

// proxiedFinal returns setup's database and pool (direct, for assertions and for the other session) and a
// pool of one connection through a faultnet proxy.
func proxiedFinal(t *testing.T, configure ...func(*pgxpool.Config)) (*pgxpool.Pool, *repo.Table[Account], *pgxpool.Pool, *faultnet.Proxy) {
	t.Helper()
	db, direct, accounts := setup(t, 2)
	p, dsn := faultnet.ForDSN(t, db.DSN)
	through := (&pgtest.DB{Name: db.Name, DSN: dsn}).Pool(t, append([]func(*pgxpool.Config){func(c *pgxpool.Config) {
		c.MaxConns = 1
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	}}, configure...)...)
	return direct, accounts, through, p
}

// depositLast is the transaction of these tests: Modify through txn.Last adds amount to account 1's balance.
func depositLast(accounts *repo.Table[Account], amount int64, before func()) func(ctx context.Context, tx pgx.Tx) (Account, error) {
	return func(ctx context.Context, tx pgx.Tx) (Account, error) {
		return accounts.Modify(ctx, txn.Last(tx), pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error {
			if before != nil {
				before()
			}
			a.Balance += amount
			return nil
		})
	}
}

// TestModifyLastRoundTrips: Modify through txn.Last inside Run costs two round trips (BEGIN with the read,
// the compare-and-swap with COMMIT), against three without Last, and returns the row as stored.
func TestModifyLastRoundTrips(t *testing.T) {
	t.Parallel()
	direct, accounts, pool, p := proxiedFinal(t)
	ctx := context.Background()
	count := func(fn func(context.Context, pgx.Tx) (Account, error)) (Account, int64) {
		t.Helper()
		if _, err := txn.RunValue(ctx, pool, fn); err != nil { // prepares the statements
			t.Fatal(err)
		}
		p.ResetStats()
		got, err := txn.RunValue(ctx, pool, fn)
		if err != nil {
			t.Fatal(err)
		}
		return got, p.Stats().Flights
	}
	got, n := count(depositLast(accounts, 10, nil))
	if n != 2 {
		t.Errorf("Modify through txn.Last: %d round trips, want 2", n)
	}
	if want := (Account{ID: 1, Owner: "owner-1", Balance: 120, Version: 3}); got != want {
		t.Errorf("Modify returned %+v, want %+v", got, want)
	}
	if stored := mustGet(t, accounts, direct, int64(1)); stored != got {
		t.Errorf("stored %+v, Modify returned %+v", stored, got)
	}
	_, n = count(func(ctx context.Context, tx pgx.Tx) (Account, error) {
		return accounts.Modify(ctx, tx, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error { a.Balance++; return nil })
	})
	if n != 3 {
		t.Errorf("Modify on the transaction itself: %d round trips, want 3", n)
	}
}

// TestModifyLastConflict: another session writes the row between Modify's read and COMMIT. The server
// refuses the final compare-and-swap and skips COMMIT, so that nothing of the attempt commits (neither the
// write nor the transaction's other statement); the conflict carries the table, key and versions; Run runs
// the transaction again, whose fresh read succeeds. With a single attempt, the conflict is returned.
func TestModifyLastConflict(t *testing.T) {
	t.Parallel()
	for _, attempts := range []int{10, 1} {
		direct, accounts, pool, _ := proxiedFinal(t)
		ctx := context.Background()
		calls := 0
		var retried []error
		fn := func(ctx context.Context, tx pgx.Tx) (Account, error) {
			calls++
			if _, err := tx.Exec(ctx, "UPDATE accounts SET owner = owner || '+' WHERE id = 2"); err != nil {
				return Account{}, err
			}
			return depositLast(accounts, 10, func() {
				if calls == 1 {
					if _, err := direct.Exec(ctx, "UPDATE accounts SET balance = balance + 1, version = version + 1 WHERE id = 1"); err != nil {
						t.Error(err)
					}
				}
			})(ctx, tx)
		}
		got, err := txn.RunValue(ctx, pool, fn, txn.WithMaxAttempts(attempts), finalRetry,
			txn.OnRetry(func(_ int, err error, _ time.Duration) { retried = append(retried, err) }))
		want := pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2}
		if attempts == 1 {
			wantConflict(t, err, want)
			if !errors.Is(err, pgcc.ErrRetriesExhausted) || calls != 1 {
				t.Errorf("one attempt: err = %v after %d calls, want the conflict as retries exhausted after 1", err, calls)
			}
			if a := mustGet(t, accounts, direct, int64(1)); a.Balance != 101 || a.Version != 2 {
				t.Errorf("one attempt: account 1 is %+v, want balance 101 at version 2 (the other session's write only)", a)
			}
			if owner := mustGet(t, accounts, direct, int64(2)).Owner; owner != "owner-2" {
				t.Errorf("one attempt: owner of 2 is %q: the refused transaction committed its other write", owner)
			}
			continue
		}
		if err != nil || calls != 2 || len(retried) != 1 {
			t.Fatalf("RunValue: %v after %d calls and %d retries, want success after 2 calls and 1 retry", err, calls, len(retried))
		}
		wantConflict(t, retried[0], want)
		if ce := asConflict(t, retried[0]); len(ce.KeyColumns) != 1 || ce.KeyColumns[0] != "id" {
			t.Errorf("key columns %v, want [id]", ce.KeyColumns)
		}
		if w := (Account{ID: 1, Owner: "owner-1", Balance: 111, Version: 3}); got != w || mustGet(t, accounts, direct, int64(1)) != w {
			t.Errorf("returned %+v, stored %+v; want %+v", got, mustGet(t, accounts, direct, int64(1)), w)
		}
		if owner := mustGet(t, accounts, direct, int64(2)).Owner; owner != "owner-2+" {
			t.Errorf("owner of 2 is %q, want owner-2+ (committed once, by the second attempt)", owner)
		}
	}
}

// TestModifyLastDeleted: the row is deleted between the read and COMMIT: a conflict with Deleted set.
func TestModifyLastDeleted(t *testing.T) {
	t.Parallel()
	direct, accounts, pool, _ := proxiedFinal(t)
	ctx := context.Background()
	_, err := txn.RunValue(ctx, pool, depositLast(accounts, 10, func() {
		if _, err := direct.Exec(ctx, "DELETE FROM accounts WHERE id = 1"); err != nil {
			t.Error(err)
		}
	}), txn.WithMaxAttempts(1))
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Deleted: true})
}

// TestUpdateLastConflict: Update and UpdateColumns through txn.Last travel with COMMIT too; their conflict is
// returned by Run, not retried (Update does not re-read), and the row's version is put back.
func TestUpdateLastConflict(t *testing.T) {
	t.Parallel()
	direct, accounts, pool, p := proxiedFinal(t)
	ctx := context.Background()
	for _, cols := range [][]string{nil, {"balance"}} {
		row := mustGet(t, accounts, direct, int64(1))
		before := row.Version
		update := func(ctx context.Context, tx pgx.Tx) error {
			row.Balance += 5
			if cols == nil {
				return accounts.Update(ctx, txn.Last(tx), &row)
			}
			return accounts.UpdateColumns(ctx, txn.Last(tx), &row, cols...)
		}
		if err := txn.Run(ctx, pool, update); err != nil { // prepares the statement
			t.Fatal(err)
		}
		p.ResetStats()
		if err := txn.Run(ctx, pool, update); err != nil {
			t.Fatal(err)
		}
		before++
		if n := p.Stats().Flights; n != 1 {
			t.Errorf("Update through txn.Last alone: %d round trips, want 1 (BEGIN, the write and COMMIT together)", n)
		}
		if row.Version != before+1 || mustGet(t, accounts, direct, int64(1)) != row {
			t.Fatalf("row %+v, stored %+v, want them equal at version %d", row, mustGet(t, accounts, direct, int64(1)), before+1)
		}
		if _, err := direct.Exec(ctx, "UPDATE accounts SET version = version + 1 WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		calls := 0
		err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error { calls++; return update(ctx, tx) })
		wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: before + 1, Actual: before + 2})
		if calls != 1 || row.Version != before+1 {
			t.Errorf("%d calls, row version %d; want 1 call and the version put back to %d", calls, row.Version, before+1)
		}
	}
}

// TestModifyLastConcurrent: writers on a pool increment one row through Modify with txn.Last; every conflict
// found at COMMIT is retried by Run, and no increment is lost or applied twice.
func TestModifyLastConcurrent(t *testing.T) {
	t.Parallel()
	const writers, each = 6, 20
	_, pool, accounts := setup(t, 1, func(c *pgxpool.Config) { c.MaxConns = writers })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := txn.RunValue(ctx, pool, depositLast(accounts, 1, nil), txn.WithMaxAttempts(txn.UnlimitedAttempts), finalRetry); err != nil {
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
	a := mustGet(t, accounts, pool, int64(1))
	if a.Balance != 100+writers*each || a.Version != 1+writers*each {
		t.Errorf("account %+v, want balance %d at version %d", a, 100+writers*each, 1+writers*each)
	}
}

// TestModifyLastConnectionLost: the connection fails once the flight carrying the compare-and-swap and
// COMMIT was sent (the server commits, the answer is lost): Run reports commit-unknown and does not retry.
func TestModifyLastConnectionLost(t *testing.T) {
	t.Parallel()
	direct, accounts, pool, p := proxiedFinal(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec })
	p.OnQuery(faultnet.IsCommit, faultnet.LoseReply, faultnet.Times(1))
	calls := 0
	_, err := txn.RunValue(context.Background(), pool, func(ctx context.Context, tx pgx.Tx) (Account, error) {
		calls++
		return depositLast(accounts, 10, nil)(ctx, tx)
	}, finalRetry)
	var cu *pgcc.CommitUnknownError
	if !errors.As(err, &cu) || errors.Is(err, pgcc.ErrConflict) || calls != 1 {
		t.Fatalf("err = %v after %d calls, want one *pgcc.CommitUnknownError", err, calls)
	}
	if a := mustGet(t, accounts, direct, int64(1)); a.Balance != 110 || a.Version != 2 {
		t.Errorf("account %+v, want balance 110 at version 2 (the server committed; only the answer was lost)", a)
	}
}

// TestCombineBatchRoundTrips: a combined batch is one transaction whose only write travels with COMMIT: BEGIN
// with the locking read, the write with COMMIT, two round trips for the whole batch, and the row returned is
// the row stored.
func TestCombineBatchRoundTrips(t *testing.T) {
	t.Parallel()
	direct, accounts, pool, p := proxiedFinal(t)
	ctx := context.Background()
	c, err := accounts.Combine(pool)
	if err != nil {
		t.Fatal(err)
	}
	deposit := func() Account {
		t.Helper()
		got, err := c.Modify(ctx, pgcc.Key{int64(1)}, func(_ context.Context, a *Account) error { a.Balance += 5; return nil })
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	deposit() // prepares the statements
	p.ResetStats()
	got := deposit()
	if n := p.Stats().Flights; n != 2 {
		t.Errorf("a combined batch of one: %d round trips, want 2", n)
	}
	if want := (Account{ID: 1, Owner: "owner-1", Balance: 110, Version: 3}); got != want {
		t.Errorf("Modify returned %+v, want %+v", got, want)
	}
	if stored := mustGet(t, accounts, direct, int64(1)); stored != got {
		t.Errorf("stored %+v, Modify returned %+v", stored, got)
	}
}
