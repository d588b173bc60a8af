package repo_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// TestInsertOrGetRace: 32 goroutines create the same row at once, after a barrier. Exactly one inserts; all
// end with the same stored row, and each one's created flag says which it was. Then the same inside
// REPEATABLE READ transactions, where a row inserted after a snapshot is a serialization failure txn.Run
// retries.
func TestInsertOrGetRace(t *testing.T) {
	t.Parallel()
	for _, iso := range []pgx.TxIsoLevel{"", pgx.RepeatableRead} {
		t.Run(fmt.Sprintf("isolation %q", iso), func(t *testing.T) {
			t.Parallel()
			const callers = 32
			_, pool, accounts := setup(t, 0, func(c *pgxpool.Config) { c.MaxConns = callers })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := pgtest.NewBarrier(callers)
			rows := make([]Account, callers)
			created := make([]bool, callers)
			errs := make([]error, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					create := func(ctx context.Context, db pgcc.DBTX) error {
						rows[i] = Account{ID: 7, Owner: fmt.Sprintf("caller %d", i), Balance: int64(i)}
						var err error
						created[i], err = accounts.InsertOrGet(ctx, db, &rows[i])
						return err
					}
					if iso == "" {
						start.Wait(ctx)
						errs[i] = create(ctx, pool)
						return
					}
					first := true
					errs[i] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, "SELECT 1"); err != nil { // take the snapshot
							return err
						}
						if first {
							first = false
							start.Wait(ctx)
						}
						return create(ctx, tx)
					}, txn.WithIsolation(iso), txn.WithMaxAttempts(txn.UnlimitedAttempts))
				})
			}
			wg.Wait()
			winners := 0
			for i := range callers {
				if errs[i] != nil {
					t.Fatalf("caller %d: %v", i, errs[i])
				}
				if created[i] {
					winners++
				}
			}
			stored := mustGet(t, accounts, pool, int64(7))
			if winners != 1 || stored.Version != 1 {
				t.Fatalf("%d callers created the row, stored %+v; want exactly 1 at version 1", winners, stored)
			}
			for i := range callers {
				if rows[i] != stored {
					t.Fatalf("caller %d holds %+v, stored %+v", i, rows[i], stored)
				}
				if created[i] != (stored.Owner == fmt.Sprintf("caller %d", i)) {
					t.Fatalf("caller %d: created %v, but the stored row is %q's", i, created[i], stored.Owner)
				}
			}
			if n := queryInt(t, pool, "SELECT count(*) FROM accounts"); n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
		})
	}
}

// TestInsertOrGet covers the single-caller cases: created, found (row overwritten with the stored one), and
// the refusals.
func TestInsertOrGet(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	a := Account{ID: 2, Owner: "new", Balance: 5, Version: 99}
	created, err := accounts.InsertOrGet(ctx, pool, &a)
	if err != nil || !created || a.Version != 1 {
		t.Fatalf("InsertOrGet of a new row: %v, created %v, %+v", err, created, a)
	}
	b := Account{ID: 1, Owner: "mine", Balance: 0}
	created, err = accounts.InsertOrGet(ctx, pool, &b)
	if err != nil || created || b != (Account{ID: 1, Owner: "owner-1", Balance: 100, Version: 1}) {
		t.Fatalf("InsertOrGet of an existing row: %v, created %v, %+v", err, created, b)
	}
	if _, err := accounts.InsertOrGet(ctx, pool, nil); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("nil row: %v", err)
	}
	tickets, err := repo.NewTable[Ticket]("tickets", repo.WithInsertDefaults("id", "created_at"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tickets.InsertOrGet(ctx, pool, &Ticket{}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("InsertOrGet with a key left to its default: %v", err)
	}
}

// TestUpsert: a new row (version zero) is created, or written over a row at version 0; a row with a version is
// updated only at that version; a row deleted since it was read is not created again.
func TestUpsert(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 2)
	ctx := context.Background()

	fresh := Account{ID: 10, Owner: "fresh", Balance: 1}
	created, err := accounts.Upsert(ctx, pool, &fresh)
	if err != nil || !created || fresh.Version != 1 {
		t.Fatalf("Upsert of a new row: %v, created %v, %+v", err, created, fresh)
	}
	again := Account{ID: 10, Owner: "again"}
	created, err = accounts.Upsert(ctx, pool, &again)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(10)}, Expected: 0, Actual: 1})
	if created || again.Version != 0 {
		t.Fatalf("a conflicting Upsert created %v, left %+v", created, again)
	}

	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 0 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	zero := Account{ID: 1, Owner: "over a row at 0", Balance: 2}
	created, err = accounts.Upsert(ctx, pool, &zero)
	if err != nil || created || zero.Version != 1 {
		t.Fatalf("Upsert over a row at version 0: %v, created %v, %+v", err, created, zero)
	}
	same := zero
	same.Version = 0
	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 0 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if created, err := accounts.Upsert(ctx, pool, &same); err != nil || created || same.Version != 0 {
		t.Fatalf("no-op Upsert over a row at version 0: %v, created %v, version %d (want 0 kept)", err, created, same.Version)
	}

	read := mustGet(t, accounts, pool, int64(2))
	read.Balance = 3
	if created, err := accounts.Upsert(ctx, pool, &read); err != nil || created || read.Version != 2 {
		t.Fatalf("Upsert of a read row: %v, created %v, version %d", err, created, read.Version)
	}
	stale := read
	stale.Version = 1
	_, err = accounts.Upsert(ctx, pool, &stale)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(2)}, Expected: 1, Actual: 2})
	if err := accounts.Delete(ctx, pool, &read); err != nil {
		t.Fatal(err)
	}
	read.Balance = 4
	_, err = accounts.Upsert(ctx, pool, &read)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(2)}, Expected: 2, Deleted: true})
	if n := queryInt(t, pool, "SELECT count(*) FROM accounts WHERE id = 2"); n != 0 {
		t.Fatal("Upsert created a row deleted since it was read")
	}

	// Concurrent creators of one key with Upsert: one creates, the others conflict (the row now has version 1).
	const callers = 16
	start := pgtest.NewBarrier(callers)
	results := make([]error, callers)
	createdBy := make([]bool, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			r := Account{ID: 20, Owner: fmt.Sprint(i)}
			start.Wait(ctx)
			createdBy[i], results[i] = accounts.Upsert(ctx, pool, &r)
		})
	}
	wg.Wait()
	winners := 0
	for i := range callers {
		switch {
		case createdBy[i] && results[i] == nil:
			winners++
		case !errors.Is(results[i], pgcc.ErrConflict):
			t.Fatalf("caller %d: %v", i, results[i])
		}
	}
	if winners != 1 {
		t.Fatalf("%d concurrent Upserts created the row, want 1", winners)
	}
}
