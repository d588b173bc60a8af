package repo_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Post is versioned by its updated_at column, as Rails and Django tables are.
type Post struct {
	ID        int64     `db:"id"`
	Body      string    `db:"body"`
	Likes     int64     `db:"likes"`
	UpdatedAt time.Time `db:"updated_at"`
}

// setupPosts creates posts with updated_at of type typ (timestamptz or timestamp) and n rows.
func setupPosts(t *testing.T, typ string, n int, configure ...func(*pgxpool.Config)) (*pgxpool.Pool, *repo.Table[Post]) {
	t.Helper()
	pool := pgtest.Pool(t, configure...)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE posts (id bigint PRIMARY KEY, body text NOT NULL, likes bigint NOT NULL,
		updated_at `+typ+` NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	posts, err := repo.NewTable[Post]("posts", repo.WithTimestampVersion("updated_at"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if err := posts.Insert(ctx, pool, &Post{ID: int64(i), Body: "post"}); err != nil {
			t.Fatal(err)
		}
	}
	return pool, posts
}

func TestTimestampVersion(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"timestamptz", "timestamp"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			// A session time zone far from UTC: a timestamp without time zone must still compare exactly.
			pool, posts := setupPosts(t, typ, 2, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["timezone"] = "Asia/Kathmandu" })
			ctx := context.Background()

			p := Post{ID: 10, Body: "hello", UpdatedAt: time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC)}
			before := time.Now()
			if err := posts.Insert(ctx, pool, &p); err != nil {
				t.Fatal(err)
			}
			if p.UpdatedAt.Year() == 1999 || p.UpdatedAt.Nanosecond()%1000 != 0 {
				t.Fatalf("Insert kept the client's time or nanoseconds: %v", p.UpdatedAt)
			}
			if typ == "timestamptz" && p.UpdatedAt.Before(before.Add(-time.Minute)) {
				t.Fatalf("Insert's timestamp %v is not the database's clock (client: %v)", p.UpdatedAt, before)
			}
			first := p.UpdatedAt
			stale := p
			p.Body = "hello, world"
			if err := posts.Update(ctx, pool, &p); err != nil {
				t.Fatal(err)
			}
			if !p.UpdatedAt.After(first) {
				t.Fatalf("Update: version %v, not after %v", p.UpdatedAt, first)
			}
			if err := posts.Update(ctx, pool, &p); err != nil || !p.UpdatedAt.Equal(mustGet(t, posts, pool, int64(10)).UpdatedAt) {
				t.Fatalf("no-op Update: %v", err)
			}

			// A stale write: the conflict carries both timestamps, and both as microseconds.
			stale.Body = "lost?"
			err := posts.Update(ctx, pool, &stale)
			ce := asConflict(t, err)
			if !ce.ExpectedTime.Equal(first) || !ce.ActualTime.Equal(p.UpdatedAt) || ce.Expected != first.UnixMicro() || ce.Actual != p.UpdatedAt.UnixMicro() {
				t.Fatalf("conflict %+v, want expected %v and actual %v", ce, first, p.UpdatedAt)
			}
			if !strings.Contains(err.Error(), "expected version "+first.Format(time.RFC3339Nano)) {
				t.Fatalf("message %q does not show the timestamps", err)
			}

			// Go's nanoseconds are not a different version: the time is compared at PostgreSQL's microseconds.
			p.UpdatedAt = p.UpdatedAt.Add(999 * time.Nanosecond)
			p.Likes = 1
			if err := posts.Update(ctx, pool, &p); err != nil {
				t.Fatalf("Update with nanoseconds beyond the stored microsecond: %v", err)
			}

			// The clock stepping back (here: a stored timestamp an hour ahead of it) still gives a newer version,
			// one microsecond later.
			if _, err := pool.Exec(ctx, "UPDATE posts SET updated_at = updated_at + interval '1 hour' WHERE id = 10"); err != nil {
				t.Fatal(err)
			}
			ahead := mustGet(t, posts, pool, int64(10))
			for range 3 {
				prev := ahead.UpdatedAt
				if err := posts.ForceIncrement(ctx, pool, &ahead); err != nil {
					t.Fatal(err)
				}
				if got := ahead.UpdatedAt.Sub(prev); got != time.Microsecond {
					t.Fatalf("version after a clock step back: %v later, want 1µs", got)
				}
			}

			// ETag round trip, Check and UpdateAll.
			tag := repo.ETag(posts.VersionOf(&ahead))
			v, err := repo.ParseETag("W/" + tag)
			if err != nil {
				t.Fatal(err)
			}
			fromClient := Post{ID: 10, Body: "from the client", Likes: 2}
			if err := posts.SetVersion(&fromClient, v); err != nil {
				t.Fatal(err)
			}
			if err := posts.Update(ctx, pool, &fromClient); err != nil {
				t.Fatalf("Update at the version of an ETag: %v", err)
			}
			tag2, err := pool.Exec(ctx, "UPDATE posts SET likes = 5 WHERE id = 10 AND updated_at = $1", ahead.UpdatedAt)
			if err != nil {
				t.Fatal(err)
			}
			err = posts.Check(ctx, pool, tag2, pgcc.Key{int64(10)}, posts.VersionOf(&ahead))
			if ce := asConflict(t, err); !ce.ActualTime.Equal(fromClient.UpdatedAt) || !ce.ExpectedTime.Equal(ahead.UpdatedAt) {
				t.Fatalf("Check: %+v", ce)
			}
			a, b := mustGet(t, posts, pool, int64(1)), mustGet(t, posts, pool, int64(2))
			a.Likes, b.Likes = 10, 20
			oldA := a.UpdatedAt
			if err := posts.UpdateAll(ctx, pool, []*Post{&a, &b}); err != nil {
				t.Fatal(err)
			}
			if !a.UpdatedAt.After(oldA) || !a.UpdatedAt.Equal(mustGet(t, posts, pool, int64(1)).UpdatedAt) {
				t.Fatalf("UpdateAll: version %v after %v", a.UpdatedAt, oldA)
			}
			staleA := a
			staleA.UpdatedAt = oldA
			var bulk *repo.BulkConflictError
			if err := posts.UpdateAll(ctx, pool, []*Post{&staleA}); !errors.As(err, &bulk) || !bulk.Conflicts[0].ActualTime.Equal(a.UpdatedAt) {
				t.Fatalf("stale UpdateAll: %v", err)
			}
			if err := posts.Delete(ctx, pool, &a); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTimestampVersionConcurrent: 32 writers add to one counter through Modify on a timestamp-versioned row.
// No increment is lost, and no conflict is false: every conflict found a strictly newer timestamp than the
// one compared with, and every version written is distinct.
func TestTimestampVersionConcurrent(t *testing.T) {
	t.Parallel()
	const writers, each = 32, 10
	pool, posts := setupPosts(t, "timestamptz", 1, func(c *pgxpool.Config) { c.MaxConns = writers })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := pgtest.NewBarrier(writers)
	var conflicts, falseConflicts atomic.Int64
	var mu sync.Mutex
	versions := map[time.Time]bool{}
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			start.Wait(ctx)
			for range each {
				got, err := posts.Modify(ctx, pool, pgcc.Key{int64(1)}, func(_ context.Context, p *Post) error {
					p.Likes++
					return nil
				}, txn.WithMaxAttempts(txn.UnlimitedAttempts), txn.OnRetry(func(_ int, err error, _ time.Duration) {
					var ce *pgcc.ConflictError
					if errors.As(err, &ce) {
						conflicts.Add(1)
						if ce.Deleted || !ce.ActualTime.After(ce.ExpectedTime) || ce.Actual <= ce.Expected {
							falseConflicts.Add(1)
						}
					}
				}))
				if err != nil {
					errs[w] = err
					return
				}
				mu.Lock()
				if versions[got.UpdatedAt] {
					errs[w] = errors.New("a version was written twice: " + got.UpdatedAt.String())
				}
				versions[got.UpdatedAt] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", w, err)
		}
	}
	final := mustGet(t, posts, pool, int64(1))
	if final.Likes != writers*each {
		t.Fatalf("likes %d, want %d: %d updates lost", final.Likes, writers*each, writers*each-final.Likes)
	}
	if n := falseConflicts.Load(); n != 0 {
		t.Fatalf("%d of %d conflicts were false", n, conflicts.Load())
	}
	if !versions[final.UpdatedAt] || len(versions) != writers*each {
		t.Fatalf("%d distinct versions written, want %d", len(versions), writers*each)
	}
	t.Logf("%d writes, %d conflicts, 0 lost, 0 false", writers*each, conflicts.Load())
}
