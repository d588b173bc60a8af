package txn_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/txn"
)

// BenchmarkUpdate compares txn.Run with the same transaction written by hand with pgx: BEGIN, a one-row
// UPDATE, COMMIT, on one connection of a pool; and txn.Run with an idempotency key, whose INSERT travels
// with BEGIN (its cost is the server's work on the key's row and indexes, and building the key). Run all in
// one invocation and compare:
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
	b.Run("txn.Run/observer", func(b *testing.B) {
		// What an attached observer costs (one that does nothing): the attempt's clock and event, the
		// options' closures. Without one, txn.Run above pays a nil check per attempt; docs/observability.md.
		b.ReportAllocs()
		fn := func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, update)
			return err
		}
		var obs pgcc.Observer = pgcc.NopObserver{}
		for b.Loop() {
			if err := txn.Run(ctx, pool, fn, txn.WithObserver(obs), txn.WithLabel("bench")); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("txn.Run/idempotency-key", func(b *testing.B) {
		b.ReportAllocs()
		fn := func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, update)
			return err
		}
		prefix := "bench " + strconv.FormatInt(time.Now().UnixNano(), 36) + " "
		i := 0
		for b.Loop() {
			i++
			if err := txn.Run(ctx, pool, fn, txn.WithIdempotencyKey(prefix+strconv.Itoa(i))); err != nil {
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

// BenchmarkCommitCheck measures what resolving an unknown commit with pg_xact_status(xid), instead of an
// idempotency key, would cost every transaction: the transaction must be given an xid and the client must
// learn it, one more statement and round trip (pg_current_xact_id()) before the work. For a read-only
// transaction the xid also turns a commit that writes nothing into one that writes and flushes a commit
// record, so that pair runs with synchronous_commit on, the server's default; the update pair runs with it off,
// as BenchmarkUpdate does. docs/transactions.md has the figures and the decision.
//
//	go test -run '^$' -bench CommitCheck -benchmem -count 5 ./txn/
func BenchmarkCommitCheck(b *testing.B) {
	db := pgtest.NewDB(b)
	asyncCommit := db.Pool(b, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["synchronous_commit"] = "off" })
	syncCommit := db.Pool(b)
	ctx := context.Background()
	if _, err := syncCommit.Exec(ctx, "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counters VALUES (1, 0)"); err != nil {
		b.Fatal(err)
	}
	xid := func(ctx context.Context, tx pgx.Tx) error {
		var id string
		return tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&id)
	}
	work := map[string]func(context.Context, pgx.Tx) error{
		"update": func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "UPDATE counters SET n = n + 1 WHERE id = 1")
			return err
		},
		"read": func(ctx context.Context, tx pgx.Tx) error {
			var n int64
			return tx.QueryRow(ctx, "SELECT n FROM counters WHERE id = 1").Scan(&n)
		},
	}
	for _, c := range []struct {
		name string
		pool *pgxpool.Pool
		work string
		xid  bool
	}{
		{"update/plain", asyncCommit, "update", false},
		{"update/with-xid", asyncCommit, "update", true},
		{"read-only/plain", syncCommit, "read", false},
		{"read-only/with-xid", syncCommit, "read", true},
	} {
		fn := work[c.work]
		if c.xid {
			fn = func(ctx context.Context, tx pgx.Tx) error {
				if err := xid(ctx, tx); err != nil {
					return err
				}
				return work[c.work](ctx, tx)
			}
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := txn.Run(ctx, c.pool, fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
