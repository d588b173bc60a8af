package txn_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// BenchmarkUpdate compares txn.Run with the same transaction written by hand with pgx: BEGIN, a one-row
// UPDATE, COMMIT, on one connection of a pool. Run both in one invocation and compare:
//
//	go test -run '^$' -bench Update -benchmem -count 5 ./txn/
//
// synchronous_commit is off for both, so that the disk's fsync latency, which is the same for both and varies
// from one commit to the next by more than the wrapper costs, does not drown the comparison.
func BenchmarkUpdate(b *testing.B) {
	pool := pgtest.NewDB(b).Pool(b, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["synchronous_commit"] = "off" })
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counters VALUES (1, 0)"); err != nil {
		b.Fatal(err)
	}
	const update = "UPDATE counters SET n = n + 1 WHERE id = 1"

	b.Run("pgx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tx, err := pool.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := tx.Exec(ctx, update); err != nil {
				_ = tx.Rollback(ctx)
				b.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("txn.Run", func(b *testing.B) {
		b.ReportAllocs()
		fn := func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, update)
			return err
		}
		for b.Loop() {
			if err := txn.Run(ctx, pool, fn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("txn.Run/serializable", func(b *testing.B) {
		b.ReportAllocs()
		fn := func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, update)
			return err
		}
		for b.Loop() {
			if err := txn.Run(ctx, pool, fn, txn.WithIsolation(pgx.Serializable)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
