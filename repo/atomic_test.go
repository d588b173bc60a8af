package repo_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
)

func TestAddReturnsNewRowAndBumpsVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	row, err := accounts.Add(ctx, pool, pgcc.Key{int64(1)}, "balance", -30, repo.AtLeast(0))
	if err != nil {
		t.Fatal(err)
	}
	if row.Balance != 70 || row.Version != 2 || row.ID != 1 || row.Owner != "owner-1" {
		t.Fatalf("Add returned %+v, want balance 70 at version 2", row)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got != row {
		t.Fatalf("stored %+v, Add returned %+v", got, row)
	}
}

func TestAddGuardFailedVersusNotFound(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	_, err := accounts.Add(ctx, pool, pgcc.Key{int64(1)}, "balance", -101, repo.AtLeast(0))
	var ge *repo.GuardError
	if !errors.As(err, &ge) || !errors.Is(err, pgcc.ErrGuardFailed) || errors.Is(err, pgcc.ErrNotFound) {
		t.Fatalf("overdraw: %v (%T), want a *repo.GuardError matching ErrGuardFailed only", err, err)
	}
	if ge.Column != "balance" || ge.Delta != -101 || len(ge.Guards) != 1 || ge.Key[0] != int64(1) {
		t.Fatalf("GuardError = %+v", ge)
	}
	_, err = accounts.Add(ctx, pool, pgcc.Key{int64(1)}, "balance", 1, repo.AtLeast(0), repo.AtMost(100))
	if !errors.Is(err, pgcc.ErrGuardFailed) {
		t.Fatalf("over the cap: %v, want ErrGuardFailed", err)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Balance != 100 || got.Version != 1 {
		t.Fatalf("a failed guard wrote: %+v", got)
	}

	for _, guards := range [][]repo.Guard{nil, {repo.AtLeast(0)}} {
		_, err = accounts.Add(ctx, pool, pgcc.Key{int64(2)}, "balance", 1, guards...)
		var nf *pgcc.NotFoundError
		if !errors.As(err, &nf) || errors.Is(err, pgcc.ErrGuardFailed) {
			t.Fatalf("missing row with %d guards: %v, want a *pgcc.NotFoundError", len(guards), err)
		}
	}
}

func TestAddRefusesBadColumns(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()
	for _, col := range []string{"nope", "id", "version", "owner", ""} {
		if _, err := accounts.Add(ctx, pool, pgcc.Key{int64(1)}, col, 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("Add to %q: %v, want ErrInvalidArgument", col, err)
		}
	}
	if _, err := accounts.Add(ctx, pool, pgcc.Key{int64(1)}, "balance", 1, repo.Guard{}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("zero guard: %v, want ErrInvalidArgument", err)
	}
}

// Concurrent decrements of one stock never oversell: exactly the initial stock is sold, every other attempt
// fails its guard, and the counter of sales matches.
func TestAddConcurrentDecrementsNeverOversell(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 2)
	ctx := context.Background()
	const workers, tries = 8, 40 // 320 attempts on a stock of 100
	var mu sync.Mutex
	sold, refused := 0, 0
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tries {
				_, err := accounts.Add(ctx, pool, pgcc.Key{int64(1)}, "balance", -1, repo.AtLeast(0))
				if _, cerr := accounts.Add(ctx, pool, pgcc.Key{int64(2)}, "balance", 1); cerr != nil {
					errs <- cerr
					return
				}
				mu.Lock()
				switch {
				case err == nil:
					sold++
				case errors.Is(err, pgcc.ErrGuardFailed):
					refused++
				default:
					mu.Unlock()
					errs <- err
					return
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
	stock := mustGet(t, accounts, pool, int64(1))
	counter := mustGet(t, accounts, pool, int64(2))
	if sold != 100 || refused != workers*tries-100 || stock.Balance != 0 || stock.Version != 101 {
		t.Fatalf("sold %d, refused %d, stock %+v; want 100 sold, stock 0 at version 101", sold, refused, stock)
	}
	if counter.Balance != 100+workers*tries || counter.Version != 1+workers*tries {
		t.Fatalf("counter %+v, want %d at version %d", counter, 100+workers*tries, 1+workers*tries)
	}
}
