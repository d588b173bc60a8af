package lock_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lock"
)

// maxBenchConns caps the pool: the shared test server allows 100 connections in all, so 32 clients share 20
// connections (the pool queues the rest), for pgx and lock alike.
const maxBenchConns = 20

// BenchmarkRowLock compares a row-locked read-modify-write through lock.Load with the same statements written
// by hand with pgx:
//
//	BEGIN; SELECT id, n FROM items WHERE id = $1 FOR NO KEY UPDATE; UPDATE items SET n = $2 WHERE id = $1; COMMIT
//
// on one hot row and on rows drawn at random from 10,000, at 1, 8 and 32 concurrent clients. The "+deadline"
// variants pass a context with a deadline: pgx then watches it for every statement, and lock.Load also sets
// lock_timeout for its statement (same round trip) and watches for cancellation. Run all in one invocation
// and compare ns/op:
//
//	go test -run '^$' -bench RowLock -benchmem ./lock/
func BenchmarkRowLock(b *testing.B) {
	db := pgtest.NewDB(b)
	pools := map[int]*pgxpool.Pool{}
	for _, clients := range []int{1, 8, 32} {
		conns := int32(min(clients, maxBenchConns))
		pools[clients] = db.Pool(b, func(c *pgxpool.Config) {
			c.MaxConns, c.MinConns = conns, conns
			// The WAL flush at COMMIT would dominate and add the disk's noise; the comparison is of the
			// client side and the statements.
			c.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
		})
	}
	ctx := context.Background()
	if _, err := pools[1].Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		INSERT INTO items SELECT g FROM generate_series(1, 10000) g; ANALYZE items`); err != nil {
		b.Fatal(err)
	}
	items := itemsTable()

	viaPgx := func(ctx context.Context, pool *pgxpool.Pool, id int32) error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		var it item
		if err := tx.QueryRow(ctx, "SELECT id, n FROM items WHERE id = $1 FOR NO KEY UPDATE", id).Scan(&it.ID, &it.N); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE items SET n = $2 WHERE id = $1", id, it.N+1); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	viaLock := func(ctx context.Context, pool *pgxpool.Pool, id int32) error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		rows, err := lock.Load[item](ctx, tx, items, []pgcc.Key{{id}})
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE items SET n = $2 WHERE id = $1", id, rows[0].N+1); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	viaPgxDeadline := func(ctx context.Context, pool *pgxpool.Pool, id int32) error {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return viaPgx(ctx, pool, id)
	}
	viaLockDeadline := func(ctx context.Context, pool *pgxpool.Pool, id int32) error {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		return viaLock(ctx, pool, id)
	}

	for _, rows := range []int{1, 10000} {
		for _, clients := range []int{1, 8, 32} {
			for _, v := range []struct {
				name string
				op   func(context.Context, *pgxpool.Pool, int32) error
			}{{"pgx", viaPgx}, {"lock", viaLock}, {"pgx+deadline", viaPgxDeadline}, {"lock+deadline", viaLockDeadline}} {
				b.Run(fmt.Sprintf("rows=%d/clients=%d/%s", rows, clients, v.name), func(b *testing.B) {
					b.ReportAllocs()
					parallel(b, clients, func(r *rand.Rand) error {
						return v.op(ctx, pools[clients], int32(r.IntN(rows)+1))
					})
				})
			}
		}
	}
}

// parallel runs b.N operations spread over exactly clients goroutines.
func parallel(b *testing.B, clients int, op func(*rand.Rand) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	b.ResetTimer()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 42))
			for next.Add(1) <= int64(b.N) {
				if err := op(r); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
}
