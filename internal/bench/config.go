// Package bench runs concurrent read-modify-write workloads against PostgreSQL with each concurrency-control
// strategy pgcc offers (and a naive baseline without any), measures goodput, retries and latency, checks
// each workload's invariant exactly, compares with pgbench running the equivalent scripts, and writes the
// report as a table, JSON and plots. It is the engine of `pgcc bench` and `pgcc demo`.
//
// Every strategy goes through the public API of txn, repo and lock, so the numbers measure the library as
// users call it.
package bench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Workload names a shape of contention.
type Workload string

// The workloads. All but Queue work on one table of rows (id, value, version).
const (
	// Hot increments a single counter row: maximum contention.
	Hot Workload = "hot"
	// Uniform increments one of Rows counters chosen uniformly.
	Uniform Workload = "uniform"
	// Zipf increments one of Rows counters chosen with a Zipf distribution of exponent Skew: a few hot rows
	// and a long tail, as real traffic usually is.
	Zipf Workload = "zipf"
	// Bank moves 1 to 10 units between two distinct random accounts; the total balance is conserved.
	Bank Workload = "bank"
	// Inventory reserves one unit of a Zipf-chosen item when its stock allows; stock never goes below zero
	// and every reservation is subtracted exactly once.
	Inventory Workload = "inventory"
	// Queue has workers take jobs from a table of Rows jobs until it is empty; each job must be processed
	// exactly once.
	Queue Workload = "queue"
)

// Workloads lists every workload in report order.
var allWorkloads = []Workload{Hot, Uniform, Zipf, Bank, Inventory, Queue}

// Strategy names a concurrency-control strategy.
type Strategy string

// The strategies.
const (
	// Naive reads, thinks and writes back in a READ COMMITTED transaction with no control at all: the
	// baseline that loses updates.
	Naive Strategy = "naive"
	// Optimistic reads without locks, writes with a version compare-and-swap (repo) and on conflict reloads
	// and re-applies (repo.Modify, or txn.Retry around repo.UpdateAll for several rows).
	Optimistic Strategy = "optimistic"
	// Pessimistic locks the rows first (lock.Load, SELECT … FOR NO KEY UPDATE in key order; SKIP LOCKED for the
	// queue), waiting for holders, inside txn.Run.
	Pessimistic Strategy = "pessimistic"
	// NoWait locks with NOWAIT and retries the whole transaction with backoff when a row is taken.
	NoWait Strategy = "nowait"
	// Serializable reads and writes plainly in a SERIALIZABLE transaction that txn.Run retries.
	Serializable Strategy = "serializable"
	// Advisory takes transaction-scoped advisory locks on the keys (in key order) before reading.
	Advisory Strategy = "advisory"
)

// The hot-row strategies: they change a counter or a stock without one transaction per read-modify-write,
// and apply only to some workloads (see [Applies]).
const (
	// Combined queues concurrent changes of one row in the process and applies a batch of them in one
	// transaction that locks and reads the row once, writes it once and commits once (repo.Combiner). Not
	// for bank (two rows) nor queue.
	Combined Strategy = "combined"
	// Atomic sends one UPDATE … SET value = value + $1 with a guard for the stock (repo.Table.Add), no read;
	// bank's two in one txn.Run, in key order. Not for queue.
	Atomic Strategy = "atomic"
	// Slotted spreads each counter over slots (package counter); only for the counter workloads (hot,
	// uniform, zipf): a slotted counter cannot enforce a bound.
	Slotted Strategy = "slotted"
)

// allStrategies is what the default configuration and "all" run; hotStrategies are named explicitly.
var (
	allStrategies = []Strategy{Naive, Optimistic, Pessimistic, NoWait, Serializable, Advisory}
	hotStrategies = []Strategy{Combined, Atomic, Slotted}
)

// Applies reports whether strategy st can run workload w; [Run] skips the cells where it cannot.
func Applies(w Workload, st Strategy) bool {
	switch st {
	case Combined:
		return w != Bank && w != Queue
	case Atomic:
		return w != Queue
	case Slotted:
		return w == Hot || w == Uniform || w == Zipf
	}
	return true
}

// Config describes one benchmark invocation: every workload × strategy × worker count is a cell.
type Config struct {
	Workloads  []Workload
	Strategies []Strategy
	// Workers lists the concurrency levels, one cell each.
	Workers []int
	// Rows is the number of rows of Uniform, Zipf, Bank and Inventory, and the number of jobs of Queue.
	Rows int
	// Skew is the Zipf exponent (> 1) of Zipf and Inventory.
	Skew float64
	// Duration bounds each cell; Ops, when positive, instead fixes the number of operations of each cell.
	Duration time.Duration
	Ops      int
	// Think is held inside each operation between its read and its write: the time a service spends deciding
	// (calling another service, computing). It decides whether optimistic or pessimistic wins.
	Think time.Duration
	// MaxAttempts and Backoff bound the retries of the retrying strategies (passed to txn).
	MaxAttempts int
	BackoffBase time.Duration
	BackoffCap  time.Duration
	// Stock is the initial stock of each Inventory item and the initial balance of each Bank account.
	Stock int64
	// Pgbench, when non-empty, is the pgbench binary run on the equivalent scripts for comparison.
	Pgbench string
	// Seed makes the key choices reproducible.
	Seed uint64
	// HotKeys is how many of the most contended rows each cell reports (Cell.HotKeys).
	HotKeys int
	// Clients, when above 1, adds after each combined cell a twin cell whose workers are split over Clients
	// independent clients, each with its own pool and its own repo.Combiner, as Clients processes would
	// have: their batches meet only at the row's lock and version (Cell.Clients). 0 or 1: no twin cells.
	Clients int
	// Progress, when not nil, receives a live progress line (carriage-return refreshed) while cells run.
	Progress io.Writer
}

// DefaultConfig is what `pgcc bench` runs without flags.
func DefaultConfig() Config {
	return Config{
		Workloads:   slices.Clone(allWorkloads),
		Strategies:  slices.Clone(allStrategies),
		Workers:     []int{1, 8, 32},
		Rows:        1000,
		HotKeys:     5,
		Skew:        1.1,
		Duration:    3 * time.Second,
		Think:       0,
		MaxAttempts: 100,
		BackoffBase: time.Millisecond,
		BackoffCap:  100 * time.Millisecond,
		Stock:       1_000_000,
		Seed:        1,
	}
}

// ErrInvalidConfig is matched by every configuration error.
var ErrInvalidConfig = errors.New("pgcc bench: invalid configuration")

// Validate checks cfg and says what is wrong with the first bad field.
// Bounds of a Config, so that no value makes a run that cannot end or whose arithmetic overflows.
const (
	maxSkew     = 20
	maxOps      = 100_000_000
	maxDuration = time.Hour
	maxThink    = 10 * time.Second
	maxAttempts = 1_000_000
	maxBackoff  = time.Minute
	maxStock    = 1 << 40
	maxClients  = 64
)

func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if len(c.Workloads) == 0 || len(c.Strategies) == 0 || len(c.Workers) == 0 {
		return bad("need at least one workload, strategy and worker count")
	}
	for _, w := range c.Workers {
		if w < 1 || w > 1024 {
			return bad("workers %d out of range 1..1024", w)
		}
	}
	switch {
	case c.Rows < 2:
		return bad("rows %d: need at least 2 (bank moves between two distinct rows)", c.Rows)
	case c.Rows > 10_000_000:
		return bad("rows %d: at most 10,000,000", c.Rows)
	case !(c.Skew > 1 && c.Skew <= maxSkew):
		// Written so that NaN fails too; +Inf would make the Zipf generator loop forever.
		return bad("skew %v: the Zipf exponent must be in (1, %v]", c.Skew, maxSkew)
	case c.HotKeys < 0 || c.HotKeys > 1000:
		return bad("hot keys %d: want 0..1000", c.HotKeys)
	case c.Ops < 0 || c.Ops > maxOps:
		return bad("ops %d: want 0..%d", c.Ops, maxOps)
	case c.Duration < 0 || c.Duration > maxDuration:
		return bad("duration %v: want at most %v per cell", c.Duration, maxDuration)
	case c.Ops == 0 && c.Duration <= 0:
		return bad("need a positive duration or a number of operations")
	case c.Think < 0 || c.Think > maxThink:
		return bad("think time %v: want 0..%v", c.Think, maxThink)
	case c.MaxAttempts < 1 || c.MaxAttempts > maxAttempts:
		return bad("max attempts %d: want 1..%d", c.MaxAttempts, maxAttempts)
	case c.BackoffBase <= 0 || c.BackoffCap < c.BackoffBase || c.BackoffCap > maxBackoff:
		return bad("backoff base %v, cap %v: need 0 < base <= cap <= %v", c.BackoffBase, c.BackoffCap, maxBackoff)
	case c.Clients < 0 || c.Clients > maxClients:
		return bad("clients %d: want 0..%d", c.Clients, maxClients)
	case c.Stock < 1 || c.Stock > maxStock:
		return bad("stock %d: want 1..%d", c.Stock, maxStock)
	}
	return nil
}

// ParseWorkloads reads a comma-separated list of workload names; "all" means every workload.
func ParseWorkloads(s string) ([]Workload, error) {
	return parseList(s, allWorkloads, "workload")
}

// ParseStrategies reads a comma-separated list of strategy names; "all" means the six classic strategies,
// "hot" the three hot-row ones (combined, atomic, slotted).
func ParseStrategies(s string) ([]Strategy, error) {
	if strings.TrimSpace(s) == "hot" {
		return slices.Clone(hotStrategies), nil
	}
	return parseList(s, allStrategies, "strategy", hotStrategies...)
}

func parseList[T ~string](s string, all []T, what string, more ...T) ([]T, error) {
	if strings.TrimSpace(s) == "all" {
		return slices.Clone(all), nil
	}
	known := append(slices.Clone(all), more...)
	var out []T
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(known, T(f)) {
			names := make([]string, len(known))
			for i, k := range known {
				names[i] = string(k)
			}
			return nil, fmt.Errorf("%w: unknown %s %q (known: %s, or all)", ErrInvalidConfig, what, f, strings.Join(names, ", "))
		}
		if !slices.Contains(out, T(f)) {
			out = append(out, T(f))
		}
	}
	return out, nil
}

// ParseWorkers reads a comma-separated list of worker counts such as "1,8,32,64".
func ParseWorkers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: workers %q: want positive integers separated by commas", ErrInvalidConfig, s)
		}
		out = append(out, n)
	}
	return out, nil
}
