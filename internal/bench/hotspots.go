package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/pgcc/pgcc"
)

// HotKey is one row's share of a cell's contention, as the [pgcc.Observer] of the run saw it.
type HotKey struct {
	// Table is the row's table as pgcc names it in errors (quoted, schema-qualified); Key its key, id=42.
	Table string `json:"table"`
	Key   string `json:"key"`
	// Writes counts the committed operations that wrote the row.
	Writes int64 `json:"writes"`
	// Conflicts counts the optimistic conflicts on the row; LockRefusals the lock requests on it that were
	// not granted (NOWAIT refused, timed out, deadlock); LockWaitMs the time lock requests on it waited, in
	// milliseconds (a request for several rows counts for each).
	Conflicts    int64   `json:"conflicts,omitempty"`
	LockRefusals int64   `json:"lock_refusals,omitempty"`
	LockWaitMs   float64 `json:"lock_wait_ms,omitempty"`
	// AttemptsPerWrite is (Writes + Conflicts + LockRefusals) / Writes: how many tries each committed write
	// of this row cost. 1 is no contention at all.
	AttemptsPerWrite float64 `json:"attempts_per_write"`
}

// observer gathers a cell's conflicts, lock waits and attempts through the pgcc.Observer hooks the
// strategies attach (txn.WithObserver, repo.WithObserver), the same hooks a service would use.
type observer struct {
	pgcc.NopObserver
	mu   sync.Mutex
	keys map[rowID]*HotKey
	// attempts[n] counts the operations that made n attempts (index 0 unused).
	attempts []int64
}

type rowID struct{ table, key string }

var _ pgcc.Observer = (*observer)(nil)

func newObserver() *observer { return &observer{keys: map[rowID]*HotKey{}} }

// reset forgets everything, for the next cell.
func (o *observer) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	clear(o.keys)
	o.attempts = o.attempts[:0]
}

func (o *observer) row(table, key string) *HotKey {
	id := rowID{table, key}
	h := o.keys[id]
	if h == nil {
		h = &HotKey{Table: table, Key: key}
		o.keys[id] = h
	}
	return h
}

func (o *observer) ObserveAttempt(_ context.Context, e pgcc.AttemptEvent) {
	if e.Outcome == pgcc.AttemptRetried {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(o.attempts) <= e.Attempt {
		o.attempts = append(o.attempts, 0)
	}
	o.attempts[e.Attempt]++
}

func (o *observer) ObserveConflict(_ context.Context, e pgcc.ConflictEvent) {
	c := e.Conflict
	key := pgcc.FormatKey(c.KeyColumns, c.Key)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.row(c.Table, key).Conflicts++
}

func (o *observer) ObserveLockWait(_ context.Context, e pgcc.LockWaitEvent) {
	if e.Table == "" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range e.Keys {
		h := o.row(e.Table, pgcc.FormatKey(e.KeyColumns, k))
		h.LockWaitMs += float64(e.Wait.Microseconds()) / 1000
		if e.Outcome != pgcc.LockAcquired {
			h.LockRefusals++
		}
	}
}

// hotKeys merges the writes per key of table (keyed by id) with what was observed and returns the n rows
// with the most failed tries, then the longest lock waits, then the most writes; rows that saw no contention
// are left out.
func (o *observer) hotKeys(table string, writes map[int64]int64, n int) []HotKey {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []HotKey
	for _, h := range o.keys {
		row := *h
		if row.Table == table {
			var id int64
			if _, err := fmt.Sscanf(row.Key, "id=%d", &id); err == nil {
				row.Writes = writes[id]
			}
		}
		if row.Writes > 0 {
			row.AttemptsPerWrite = float64(row.Writes+row.Conflicts+row.LockRefusals) / float64(row.Writes)
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b HotKey) int {
		return cmp.Or(
			cmp.Compare(b.Conflicts+b.LockRefusals, a.Conflicts+a.LockRefusals),
			cmp.Compare(b.LockWaitMs, a.LockWaitMs),
			cmp.Compare(b.Writes, a.Writes),
			strings.Compare(a.Key, b.Key))
	})
	return out[:min(n, len(out))]
}

// histogram returns the attempts counts, index n for n attempts (index 0 unused), nil when none.
func (o *observer) histogram() []int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.attempts) == 0 {
		return nil
	}
	return slices.Clone(o.attempts)
}

// WriteHotspots writes, for each cell that saw contention, its hottest keys and the histogram of attempts per
// operation.
func (r *Report) WriteHotspots(w io.Writer) error {
	for _, c := range r.Cells {
		if len(c.HotKeys) == 0 && len(c.AttemptsHistogram) == 0 {
			continue
		}
		if _, err := fmt.Fprintf(w, "\n%s / %s / %d workers\n", c.Workload, c.Strategy, c.Workers); err != nil {
			return err
		}
		if len(c.HotKeys) > 0 {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "  hottest keys\twrites\tconflicts\tlock refusals\tlock wait ms\tattempts/write\t")
			for _, h := range c.HotKeys {
				fmt.Fprintf(tw, "  %s %s\t%d\t%d\t%d\t%.1f\t%.2f\t\n", shortTable(h.Table), h.Key, h.Writes, h.Conflicts, h.LockRefusals, h.LockWaitMs, h.AttemptsPerWrite)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		if len(c.AttemptsHistogram) > 0 {
			if _, err := io.WriteString(w, "  attempts per operation: "+attemptsLine(c.AttemptsHistogram)+"\n"); err != nil {
				return err
			}
		}
	}
	return nil
}

// attemptsLine renders a histogram as "1: 812 (89.1%)  2: 97 (10.6%) …", grouping 9 and more attempts.
func attemptsLine(hist []int64) string {
	var total int64
	for _, n := range hist {
		total += n
	}
	if total == 0 {
		return "none"
	}
	var parts []string
	var tail int64
	for n, count := range hist {
		switch {
		case n == 0 || count == 0 && n < 9:
		case n >= 9:
			tail += count
		default:
			parts = append(parts, fmt.Sprintf("%d: %d (%.1f%%)", n, count, 100*float64(count)/float64(total)))
		}
	}
	if tail > 0 {
		parts = append(parts, fmt.Sprintf("9+: %d (%.1f%%)", tail, 100*float64(tail)/float64(total)))
	}
	return strings.Join(parts, "  ")
}

// shortTable drops the schema of a quoted, qualified table name for display: "bench"."items" → items.
func shortTable(quoted string) string {
	if i := strings.LastIndex(quoted, `"."`); i >= 0 {
		quoted = quoted[i+2:]
	}
	return strings.Trim(quoted, `"`)
}
