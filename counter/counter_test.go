package counter_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/counter"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestCounterExactUnderConcurrencyWithCompaction(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewDB(t).Pool(t, maxConns(6))
	ctx := context.Background()
	c, err := counter.New("counters", counter.WithSlots(8))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateTable(ctx, pool); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers+2)
	stop := make(chan struct{})
	compactions := 0
	go func() {
		defer close(errs)
		defer func() { errs <- nil }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.Compact(ctx, pool, "views"); err != nil {
				errs <- err
				return
			}
			compactions++
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				delta := int64(1)
				if (w+i)%5 == 0 {
					delta = -2
				}
				if err := c.Add(ctx, pool, "views", delta); err != nil {
					errs <- err
					return
				}
				if err := c.Add(ctx, pool, "other", 1); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := int64(0)
	for w := range workers {
		for i := range each {
			if (w+i)%5 == 0 {
				want -= 2
			} else {
				want++
			}
		}
	}
	for name, n := range map[string]int64{"views": want, "other": workers * each} {
		got, err := c.Get(ctx, pool, name)
		if err != nil || got != n {
			t.Fatalf("Get(%s) = %d, %v; want %d (after %d compactions)", name, got, err, n, compactions)
		}
	}
	if err := c.Compact(ctx, pool, "views"); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM counters WHERE name = 'views'").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Get(ctx, pool, "views"); rows != 1 || got != want {
		t.Fatalf("after compaction: %d rows holding %d, want 1 row holding %d", rows, got, want)
	}
	if got, err := c.Get(ctx, pool, "never"); got != 0 || err != nil {
		t.Fatalf("Get of a counter never added to: %d, %v", got, err)
	}
}

func TestCounterRefusesBadArguments(t *testing.T) {
	t.Parallel()
	for name, opts := range map[string][]counter.Option{
		"zero slots":   {counter.WithSlots(0)},
		"empty schema": {counter.InSchema("")},
		"nil option":   {nil},
	} {
		if _, err := counter.New("counters", opts...); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := counter.New(""); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("empty table name: %v", err)
	}
	c, err := counter.New("counters")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Add(context.Background(), nil, "x", 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("nil handle: %v", err)
	}
	pool := pgtest.NewDB(t).Pool(t, maxConns(1))
	if _, err := c.Get(context.Background(), pool, ""); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("empty counter name: %v", err)
	}
}

func maxConns(n int32) func(*pgxpool.Config) { return func(c *pgxpool.Config) { c.MaxConns = n } }

// TestAddWithoutAConnectionIsLost: an Add on a pool that cannot open a connection (every slot of its role
// taken: FATAL 53300) sent nothing. It is a *ConnectionLostError carrying the 53300, safe to repeat, never a
// *CommitUnknownError, and the counter is unchanged.
func TestAddWithoutAConnectionIsLost(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pool := db.Pool(t)
	ctx := context.Background()
	c, err := counter.New("counters")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateTable(ctx, pool); err != nil {
		t.Fatal(err)
	}
	refused := (&pgtest.DB{Name: db.Name, DSN: db.LimitedRole(t, 0)}).Pool(t)
	err = c.Add(ctx, refused, "views", 1)
	var lost *pgcc.ConnectionLostError
	if !errors.As(err, &lost) || errors.Is(err, pgcc.ErrCommitUnknown) || pgcc.SQLState(err) != pgerrcode.TooManyConnections {
		t.Fatalf("Add: %v, want a *ConnectionLostError carrying the 53300", err)
	}
	if n, err := c.Get(ctx, pool, "views"); err != nil || n != 0 {
		t.Fatalf("counter %d (%v), want 0", n, err)
	}
}
