package bench_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/bench"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T, conns int32) *pgxpool.Pool {
	t.Helper()
	return pgtest.NewDB(t).Pool(t, func(c *pgxpool.Config) { c.MaxConns = conns })
}

// TestInvariants runs every workload with every strategy on 8 workers with a think time that makes races
// likely: each pgcc strategy keeps its invariant exactly and fails no operation; the naive baseline on the
// hot counter demonstrably loses updates, which proves the check can fail.
func TestInvariants(t *testing.T) {
	t.Parallel()
	pool := setup(t, 10)
	cfg := bench.DefaultConfig()
	cfg.Workers = []int{8}
	cfg.Rows = 20
	cfg.Ops = 160
	cfg.Duration = 0
	cfg.Think = time.Millisecond
	cfg.MaxAttempts = 1000
	rep, err := bench.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cells) != 6*6 {
		t.Fatalf("cells = %d", len(rep.Cells))
	}
	for _, c := range rep.Cells {
		if c.Strategy == bench.Naive {
			if c.Workload == bench.Hot && c.Violations == 0 {
				t.Errorf("naive hot counter lost no update in %d increments: the race is not exercised", c.Ops)
			}
			continue
		}
		if c.Violations != 0 || len(c.Errors) != 0 {
			t.Errorf("%s/%s: %d %s, errors %v (%s)", c.Workload, c.Strategy, c.Violations, c.Invariant, c.Errors, c.ErrorSample)
		}
		want := int64(cfg.Ops)
		if c.Workload == bench.Queue {
			want = int64(cfg.Rows)
		}
		if c.Ops != want {
			t.Errorf("%s/%s: %d ops committed, want %d", c.Workload, c.Strategy, c.Ops, want)
		}
		if c.Attempts < c.Ops || c.P99 < c.P50 {
			t.Errorf("%s/%s: attempts %d < ops %d or p99 %v < p50 %v", c.Workload, c.Strategy, c.Attempts, c.Ops, c.P99, c.P50)
		}
	}
	if pool.Stat().AcquiredConns() != 0 {
		t.Errorf("connections still acquired after Run")
	}
}

// TestPgbenchTwins runs the pgbench scripts next to their pgcc cells and checks that pgbench accepted each
// (no failed transaction) and that the ratio is filled in.
func TestPgbenchTwins(t *testing.T) {
	t.Parallel()
	path, err := exec.LookPath("pgbench")
	if err != nil {
		if pgtest.InCI() {
			t.Fatal("pgbench not on PATH in CI")
		}
		t.Skip("pgbench not on PATH")
	}
	pool := setup(t, 6)
	cfg := bench.DefaultConfig()
	cfg.Workers = []int{4}
	cfg.Rows = 50
	cfg.Ops = 80
	cfg.Duration = 0
	cfg.Pgbench = path
	cfg.Strategies = []bench.Strategy{bench.Naive, bench.Pessimistic, bench.Serializable, bench.Advisory, bench.Optimistic}
	cfg.Think = 100 * time.Microsecond
	var progress bytes.Buffer
	cfg.Progress = &progress
	rep, err := bench.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	twins := 0
	for _, c := range rep.Cells {
		if c.Pgbench == nil {
			if c.Workload != bench.Queue && c.Strategy != bench.Optimistic {
				t.Errorf("%s/%s has no pgbench twin", c.Workload, c.Strategy)
			}
			continue
		}
		twins++
		// pgbench retries serialization failures at once, without backoff, so under load a serializable
		// transaction may use up its tries; any other failure means the script is wrong.
		if c.Pgbench.TPS <= 0 || (c.Pgbench.Failed != 0 && c.Strategy != bench.Serializable) || c.Pgbench.Ratio <= 0 {
			t.Errorf("%s/%s pgbench: tps %v, failed %d, retried %d, ratio %v", c.Workload, c.Strategy,
				c.Pgbench.TPS, c.Pgbench.Failed, c.Pgbench.Retried, c.Pgbench.Ratio)
		}
	}
	if twins != 5*4 {
		t.Errorf("twins = %d, want 20", twins)
	}
	if !strings.Contains(progress.String(), "pgbench") || !strings.Contains(progress.String(), "[30/30]") {
		t.Errorf("progress output lacks pgbench or the last cell: %q", progress.String())
	}
}

// TestRunRejectsSmallPool checks that a pool smaller than the worker count is refused before any work.
func TestRunRejectsSmallPool(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	cfg := bench.DefaultConfig()
	cfg.Workers = []int{4}
	_, err := bench.Run(context.Background(), pool, cfg)
	if !errors.Is(err, bench.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
}

// TestCancel stops a long run from its context: Run returns promptly, drops its schema and leaks nothing.
func TestCancel(t *testing.T) {
	t.Parallel()
	pool := setup(t, 6)
	cfg := bench.DefaultConfig()
	cfg.Workers = []int{4}
	cfg.Duration = time.Minute
	cfg.Think = time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := bench.Run(ctx, pool, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Run took %v after cancellation", d)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgcc_bench_%'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("scratch schemas left: %d, %v", n, err)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		edit func(*bench.Config)
	}{
		{"no workers", func(c *bench.Config) { c.Workers = nil }},
		{"huge workers", func(c *bench.Config) { c.Workers = []int{5000} }},
		{"one row", func(c *bench.Config) { c.Rows = 1 }},
		{"skew 1", func(c *bench.Config) { c.Skew = 1 }},
		{"negative ops", func(c *bench.Config) { c.Ops = -1 }},
		{"no duration", func(c *bench.Config) { c.Duration = 0 }},
		{"no attempts", func(c *bench.Config) { c.MaxAttempts = 0 }},
		{"stock", func(c *bench.Config) { c.Stock = 0 }},
		{"clients", func(c *bench.Config) { c.Clients = -1 }},
	} {
		cfg := bench.DefaultConfig()
		tt.edit(&cfg)
		if err := cfg.Validate(); !errors.Is(err, bench.ErrInvalidConfig) {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
	cfg := bench.DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Errorf("default: %v", err)
	}
}

func TestPgbenchCommandKeepsThePasswordOffTheCommandLine(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://app:s3cret@127.0.0.1:5432/orders?sslmode=disable",
		"host=127.0.0.1 user=app password='s3 cret' dbname=orders",
	} {
		cmd, err := bench.PgbenchCommand(context.Background(), "pgbench", dsn, []string{"-n", "-T", "1"})
		if err != nil {
			t.Fatal(err)
		}
		if args := strings.Join(cmd.Args, " "); strings.Contains(args, "s3") {
			t.Errorf("%s: argv %q shows the password", dsn, args)
		}
		if !slices.Contains(cmd.Env, "PGPASSWORD=s3cret") && !slices.Contains(cmd.Env, "PGPASSWORD=s3 cret") {
			t.Errorf("%s: PGPASSWORD not in the child's environment", dsn)
		}
	}
}

// TestHotStrategies runs the hot-row strategies on every workload they apply to, with a stock small enough
// that inventory sells out: each keeps its invariant exactly, fails no operation, and inventory refuses the
// sales past the stock.
func TestHotStrategies(t *testing.T) {
	t.Parallel()
	pool := setup(t, 10)
	cfg := bench.DefaultConfig()
	cfg.Strategies = []bench.Strategy{bench.Combined, bench.Atomic, bench.Slotted}
	cfg.Workers = []int{8}
	cfg.Rows = 5
	cfg.Ops = 200
	cfg.Duration = 0
	cfg.Stock = 10
	cfg.Pgbench = ""
	rep, err := bench.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// combined: hot, uniform, zipf, inventory; atomic: those and bank; slotted: hot, uniform, zipf.
	if len(rep.Cells) != 4+5+3 {
		t.Fatalf("cells = %d, want 12", len(rep.Cells))
	}
	for _, c := range rep.Cells {
		if c.Violations != 0 || len(c.Errors) != 0 || c.Ops != int64(cfg.Ops) {
			t.Errorf("%s/%s: %d ops, %d %s, errors %v (%s)", c.Workload, c.Strategy, c.Ops, c.Violations, c.Invariant, c.Errors, c.ErrorSample)
		}
		if c.Workload == bench.Inventory && c.Rejected < int64(cfg.Ops)-int64(cfg.Rows)*cfg.Stock {
			t.Errorf("%s/%s: %d sales refused of %d on a stock of %d×%d", c.Workload, c.Strategy, c.Rejected, c.Ops, cfg.Rows, cfg.Stock)
		}
	}
}

// TestClients runs the combined strategy with its workers split over two independent clients (pool and
// combiner each) next to its ordinary cell: the twin cell is added for combined only, is labelled with its
// clients, and keeps the invariant exactly on the counter and on a stock that sells out.
func TestClients(t *testing.T) {
	t.Parallel()
	pool := setup(t, 6)
	cfg := bench.DefaultConfig()
	cfg.Workloads = []bench.Workload{bench.Hot, bench.Inventory}
	cfg.Strategies = []bench.Strategy{bench.Combined, bench.Atomic}
	cfg.Workers = []int{4}
	cfg.Clients = 2
	cfg.Rows = 3
	cfg.Ops = 120
	cfg.Duration = 0
	cfg.Stock = 10
	cfg.Pgbench = ""
	rep, err := bench.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range rep.Cells {
		got = append(got, fmt.Sprintf("%s/%s/%d", c.Workload, c.Strategy, c.Clients))
		if c.Violations != 0 || len(c.Errors) != 0 || c.Ops != int64(cfg.Ops) {
			t.Errorf("%s/%s/%d clients: %d ops, %d %s, errors %v (%s)", c.Workload, c.Strategy, c.Clients, c.Ops, c.Violations, c.Invariant, c.Errors, c.ErrorSample)
		}
		if c.Workload == bench.Inventory && c.Rejected < int64(cfg.Ops)-int64(cfg.Rows)*cfg.Stock {
			t.Errorf("%s/%s/%d clients: %d sales refused of %d on a stock of %d×%d", c.Workload, c.Strategy, c.Clients, c.Rejected, c.Ops, cfg.Rows, cfg.Stock)
		}
	}
	want := []string{"hot/combined/0", "hot/combined/2", "hot/atomic/0", "inventory/combined/0", "inventory/combined/2", "inventory/atomic/0"}
	if !slices.Equal(got, want) {
		t.Errorf("cells = %v, want %v", got, want)
	}
	var buf strings.Builder
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "combined/2c") {
		t.Errorf("table does not name the two-client cells:\n%s", buf.String())
	}
}
