package repo_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
)

const benchRows = 1000

// benchSetup returns a pool on a fresh database with benchRows accounts and their description.
func benchSetup(b *testing.B) (*pgxpool.Pool, *repo.Table[Account]) {
	b.Helper()
	pool := pgtest.Pool(b)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, accountsDDL); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO accounts SELECT g, 'owner-' || g, 100, 1 FROM generate_series(1, $1) g", benchRows); err != nil {
		b.Fatal(err)
	}
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		b.Fatal(err)
	}
	return pool, accounts
}

// clientCPU reports the process's CPU time per operation as "client-ns/op" when the benchmark ends: the
// library's own cost, which the round trip's noise on a shared machine does not reach. Call it right before
// the loop.
func clientCPU(b *testing.B) {
	b.Helper()
	start := cpuTime()
	b.Cleanup(func() {
		if n := b.N; n > 0 && start > 0 {
			b.ReportMetric(float64(cpuTime()-start)/float64(n), "client-ns/op")
		}
	})
}

func loadAll(b *testing.B, pool *pgxpool.Pool) []Account {
	b.Helper()
	rows, err := pool.Query(context.Background(), "SELECT id, owner, balance, version FROM accounts ORDER BY id")
	if err != nil {
		b.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByName[Account])
	if err != nil {
		b.Fatal(err)
	}
	return all
}

// BenchmarkUpdate compares Table.Update with the same compare-and-swap UPDATE written by hand with pgx, on the
// same 1,000 rows in turn, one round trip each. Run both in one invocation and compare:
//
//	go test -run '^$' -bench 'Update|Get' -benchmem -count 5 ./repo/
func BenchmarkUpdate(b *testing.B) {
	pool, accounts := benchSetup(b)
	ctx := context.Background()
	const update = `UPDATE "accounts" SET "owner" = $1, "balance" = $2, "version" = "version" + 1 WHERE "id" = $3 AND "version" = $4`

	b.Run("pgx", func(b *testing.B) {
		all := loadAll(b, pool)
		b.ReportAllocs()
		clientCPU(b)
		i := 0
		for b.Loop() {
			a := &all[i%benchRows]
			i++
			a.Balance++
			tag, err := pool.Exec(ctx, update, a.Owner, a.Balance, a.ID, a.Version)
			if err != nil {
				b.Fatal(err)
			}
			if tag.RowsAffected() != 1 {
				b.Fatalf("row %d: conflict", a.ID)
			}
			a.Version++
		}
	})
	// The statement repo sends, which also keeps the version when no value changes (see Table.Update), written
	// by hand: the difference to "pgx" is the statement's, the difference to "repo" the library's.
	const updateKeepingVersion = `UPDATE "accounts" AS t SET "owner" = CASE WHEN false THEN t."owner" ELSE $1 END, "balance" = CASE WHEN false THEN t."balance" ELSE $2 END, "version" = CASE WHEN ROW(CASE WHEN false THEN t."owner" ELSE $1 END, CASE WHEN false THEN t."balance" ELSE $2 END)::record *<> ROW(CASE WHEN true THEN t."owner" ELSE $1 END, CASE WHEN true THEN t."balance" ELSE $2 END)::record THEN coalesce(t."version", 0) + 1 ELSE t."version" END WHERE t."id" = $3 AND coalesce(t."version", 0) = $4 RETURNING coalesce(t."version", 0)`
	b.Run("pgx-same-sql", func(b *testing.B) {
		all := loadAll(b, pool)
		b.ReportAllocs()
		clientCPU(b)
		i := 0
		for b.Loop() {
			a := &all[i%benchRows]
			i++
			a.Balance++
			if err := pool.QueryRow(ctx, updateKeepingVersion, a.Owner, a.Balance, a.ID, a.Version).Scan(&a.Version); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("repo", func(b *testing.B) {
		all := loadAll(b, pool)
		b.ReportAllocs()
		clientCPU(b)
		i := 0
		for b.Loop() {
			a := &all[i%benchRows]
			i++
			a.Balance++
			if err := accounts.Update(ctx, pool, a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGet compares Table.Get with the same SELECT scanned by hand with pgx, and with
// pgx.RowToStructByName, on the same 1,000 rows in turn.
func BenchmarkGet(b *testing.B) {
	pool, accounts := benchSetup(b)
	ctx := context.Background()
	const get = `SELECT "id", "owner", "balance", "version" FROM "accounts" WHERE "id" = $1`

	b.Run("pgx", func(b *testing.B) {
		b.ReportAllocs()
		clientCPU(b)
		i := int64(0)
		for b.Loop() {
			var a Account
			if err := pool.QueryRow(ctx, get, i%benchRows+1).Scan(&a.ID, &a.Owner, &a.Balance, &a.Version); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("pgx.RowToStructByName", func(b *testing.B) {
		b.ReportAllocs()
		clientCPU(b)
		i := int64(0)
		for b.Loop() {
			rows, err := pool.Query(ctx, get, i%benchRows+1)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Account]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("repo", func(b *testing.B) {
		b.ReportAllocs()
		clientCPU(b)
		i := int64(0)
		for b.Loop() {
			if _, err := accounts.Get(ctx, pool, pgcc.Key{i%benchRows + 1}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkUpdateAll compares one bulk compare-and-swap of 100 rows with 100 single Updates in one
// transaction.
func BenchmarkUpdateAll(b *testing.B) {
	pool, accounts := benchSetup(b)
	ctx := context.Background()
	const batch = 100
	ptrs := func(all []Account) []*Account {
		out := make([]*Account, batch)
		for i := range out {
			out[i] = &all[i]
		}
		return out
	}
	b.Run("Update×100 in a tx", func(b *testing.B) {
		rows := ptrs(loadAll(b, pool))
		b.ReportAllocs()
		clientCPU(b)
		for b.Loop() {
			tx, err := pool.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range rows {
				r.Balance++
				if err := accounts.Update(ctx, tx, r); err != nil {
					b.Fatal(err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("UpdateAll", func(b *testing.B) {
		rows := ptrs(loadAll(b, pool))
		b.ReportAllocs()
		clientCPU(b)
		for b.Loop() {
			for _, r := range rows {
				r.Balance++
			}
			if err := accounts.UpdateAll(ctx, pool, rows); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// fakeDB answers every statement at once without a server: an UPDATE writes one row, a SELECT returns one
// account. Against it a benchmark measures only the client's work, the library's overhead over the same call
// written by hand, free of the round trip and its noise.
type fakeDB struct{}

func (fakeDB) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.NewCommandTag("UPDATE 1"), nil
}

func (fakeDB) Query(context.Context, string, ...any) (pgx.Rows, error) {
	panic("fakeDB: Query is not used by these benchmarks")
}

func (fakeDB) QueryRow(context.Context, string, ...any) pgx.Row { return fakeRow{} }

type fakeRow struct{}

func (fakeRow) Scan(dest ...any) error {
	if len(dest) == 1 { // an UPDATE … RETURNING version
		*dest[0].(*int64) = 8
		return nil
	}
	*dest[0].(*int64) = 42
	*dest[1].(*string) = "ada"
	*dest[2].(*int64) = 1000
	*dest[3].(*int64) = 7
	return nil
}

// BenchmarkOverhead is BenchmarkUpdate and BenchmarkGet against fakeDB: the client-side cost of the call by
// hand and through repo, in nanoseconds, to set against the round trip the other benchmarks measure.
func BenchmarkOverhead(b *testing.B) {
	accounts, err := repo.NewTable[Account]("accounts")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var db pgcc.DBTX = fakeDB{}
	const update = `UPDATE "accounts" SET "owner" = $1, "balance" = $2, "version" = "version" + 1 WHERE "id" = $3 AND "version" = $4`
	const get = `SELECT "id", "owner", "balance", "version" FROM "accounts" WHERE "id" = $1`

	b.Run("Update/pgx", func(b *testing.B) {
		b.ReportAllocs()
		a := Account{ID: 4242, Owner: "ada", Balance: 1000, Version: 1}
		for b.Loop() {
			a.Balance++
			tag, err := db.Exec(ctx, update, a.Owner, a.Balance, a.ID, a.Version)
			if err != nil || tag.RowsAffected() != 1 {
				b.Fatal(err)
			}
			a.Version++
		}
	})
	b.Run("Update/pgx-same-sql", func(b *testing.B) {
		b.ReportAllocs()
		a := Account{ID: 4242, Owner: "ada", Balance: 1000, Version: 1}
		for b.Loop() {
			a.Balance++
			if err := db.QueryRow(ctx, update, a.Owner, a.Balance, a.ID, a.Version).Scan(&a.Version); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Update/repo", func(b *testing.B) {
		b.ReportAllocs()
		a := Account{ID: 4242, Owner: "ada", Balance: 1000, Version: 1}
		for b.Loop() {
			a.Balance++
			if err := accounts.Update(ctx, db, &a); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get/pgx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var a Account
			if err := db.QueryRow(ctx, get, int64(42)).Scan(&a.ID, &a.Owner, &a.Balance, &a.Version); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get/repo", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := accounts.Get(ctx, db, pgcc.Key{int64(42)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkModify compares Table.Modify (read, change, compare-and-swap write) with the same two statements
// written by hand with pgx, on the same 1,000 rows in turn, without contention.
func BenchmarkModify(b *testing.B) {
	pool, accounts := benchSetup(b)
	ctx := context.Background()
	const get = `SELECT "id", "owner", "balance", "version" FROM "accounts" WHERE "id" = $1`
	const update = `UPDATE "accounts" SET "owner" = $1, "balance" = $2, "version" = "version" + 1 WHERE "id" = $3 AND "version" = $4`

	b.Run("pgx", func(b *testing.B) {
		b.ReportAllocs()
		clientCPU(b)
		i := int64(0)
		for b.Loop() {
			var a Account
			if err := pool.QueryRow(ctx, get, i%benchRows+1).Scan(&a.ID, &a.Owner, &a.Balance, &a.Version); err != nil {
				b.Fatal(err)
			}
			a.Balance++
			tag, err := pool.Exec(ctx, update, a.Owner, a.Balance, a.ID, a.Version)
			if err != nil {
				b.Fatal(err)
			}
			if tag.RowsAffected() != 1 {
				b.Fatalf("row %d: conflict", a.ID)
			}
			i++
		}
	})
	b.Run("repo", func(b *testing.B) {
		b.ReportAllocs()
		clientCPU(b)
		i := int64(0)
		for b.Loop() {
			_, err := accounts.Modify(ctx, pool, pgcc.Key{i%benchRows + 1}, func(_ context.Context, a *Account) error {
				a.Balance++
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("repo/observer", func(b *testing.B) {
		// Modify with a table observer that does nothing: what attaching one costs (docs/observability.md).
		b.ReportAllocs()
		clientCPU(b)
		observed, err := repo.NewTable[Account]("accounts", repo.WithObserver(pgcc.NopObserver{}))
		if err != nil {
			b.Fatal(err)
		}
		i := int64(0)
		for b.Loop() {
			_, err := observed.Modify(ctx, pool, pgcc.Key{i%benchRows + 1}, func(_ context.Context, a *Account) error {
				a.Balance++
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkUpdateAllSizes measures UpdateAll of one batch of each size.
func BenchmarkUpdateAllSizes(b *testing.B) {
	pool, accounts := benchSetup(b)
	ctx := context.Background()
	for _, size := range []int{10, 100, 1000} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			all := loadAll(b, pool)
			rows := make([]*Account, size)
			for i := range rows {
				rows[i] = &all[i]
			}
			b.ReportAllocs()
			clientCPU(b)
			for b.Loop() {
				for _, r := range rows {
					r.Balance++
				}
				if err := accounts.UpdateAll(ctx, pool, rows); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
