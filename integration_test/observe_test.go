package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/lease"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// recorder is an observer that keeps every event, for the assertions.
type recorder struct {
	mu        sync.Mutex
	attempts  []pgcc.AttemptEvent
	conflicts []pgcc.ConflictEvent
	locks     []pgcc.LockWaitEvent
	leases    []pgcc.LeaseEvent
}

func (r *recorder) ObserveAttempt(_ context.Context, e pgcc.AttemptEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, e)
}

func (r *recorder) ObserveConflict(_ context.Context, e pgcc.ConflictEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conflicts = append(r.conflicts, e)
}

func (r *recorder) ObserveLockWait(_ context.Context, e pgcc.LockWaitEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.locks = append(r.locks, e)
}

func (r *recorder) ObserveLease(_ context.Context, e pgcc.LeaseEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leases = append(r.leases, e)
}

func (r *recorder) outcomes() []pgcc.AttemptOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []pgcc.AttemptOutcome
	for _, a := range r.attempts {
		out = append(out, a.Outcome)
	}
	return out
}

// raceTwo runs two transactions that both read account 1 before either writes it (a barrier in their first
// attempt), each reporting to its own recorder, and returns the recorders and Run's errors.
func raceTwo(t *testing.T, opts []txn.Option, write func(ctx context.Context, tx pgx.Tx, accounts *repo.Table[Account], a *Account) error) ([2]*recorder, [2]error) {
	t.Helper()
	pool, accounts := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	read := pgtest.NewBarrier(2)
	var recs [2]*recorder
	var errs [2]error
	var wg sync.WaitGroup
	for i := range 2 {
		recs[i] = &recorder{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			attempt := 0
			o := append([]txn.Option{txn.WithObserver(recs[i]), txn.WithLabel("transfer")}, opts...)
			errs[i] = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				attempt++
				a, err := accounts.Get(ctx, tx, pgcc.Key{1})
				if err != nil {
					return err
				}
				if attempt == 1 {
					read.Wait(ctx)
				}
				a.Balance++
				return write(ctx, tx, accounts, &a)
			}, o...)
		}()
	}
	wg.Wait()
	var balance int64
	if err := pool.QueryRow(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&balance); err != nil {
		t.Fatal(err)
	}
	if balance != 102 {
		t.Errorf("balance %d, want 102: an update was lost", balance)
	}
	return recs, errs
}

// loserOf returns the index of the recorder whose transaction was retried, failing unless exactly one was
// retried once and the other committed at its first attempt.
func loserOf(t *testing.T, recs [2]*recorder) int {
	t.Helper()
	committed := []pgcc.AttemptOutcome{pgcc.AttemptCommitted}
	retried := []pgcc.AttemptOutcome{pgcc.AttemptRetried, pgcc.AttemptCommitted}
	switch a, b := recs[0].outcomes(), recs[1].outcomes(); {
	case slices.Equal(a, committed) && slices.Equal(b, retried):
		return 1
	case slices.Equal(b, committed) && slices.Equal(a, retried):
		return 0
	default:
		t.Fatalf("attempt outcomes %v and %v, want one transaction committed at once and the other retried once", a, b)
		return -1
	}
}

func TestObserverSeesTheSerializationFailureAndTheRetry(t *testing.T) {
	t.Parallel()
	recs, errs := raceTwo(t, []txn.Option{txn.WithIsolation(pgx.Serializable)}, func(ctx context.Context, tx pgx.Tx, _ *repo.Table[Account], a *Account) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = 1", a.Balance)
		return err
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	loser := loserOf(t, recs)
	first, second := recs[loser].attempts[0], recs[loser].attempts[1]
	if first.Label != "transfer" || first.Operation != pgcc.OperationRun || first.Isolation != pgx.Serializable || first.Attempt != 1 {
		t.Errorf("first attempt %+v", first)
	}
	if first.SQLState != pgerrcode.SerializationFailure || !errors.Is(first.Err, pgcc.ErrSerialization) || first.Duration <= 0 {
		t.Errorf("retried attempt: SQLSTATE %q, error %v, duration %v", first.SQLState, first.Err, first.Duration)
	}
	if second.Attempt != 2 || second.Err != nil || second.SQLState != "" || second.Label != "transfer" {
		t.Errorf("second attempt %+v", second)
	}
	for _, r := range recs {
		if len(r.conflicts) != 0 || len(r.locks) != 0 {
			t.Errorf("no repo or lock call, yet events %v %v", r.conflicts, r.locks)
		}
	}
}

func TestObserverSeesTheOptimisticConflictWithItsKey(t *testing.T) {
	t.Parallel()
	retry := txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) })
	recs, errs := raceTwo(t, []txn.Option{retry}, func(ctx context.Context, tx pgx.Tx, accounts *repo.Table[Account], a *Account) error {
		return accounts.Update(ctx, tx, a)
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	loser := loserOf(t, recs)
	r := recs[loser]
	if len(r.conflicts) != 1 {
		t.Fatalf("conflict events %+v, want one", r.conflicts)
	}
	c := r.conflicts[0]
	if c.Label != "transfer" || c.Conflict.Table != `"accounts"` || c.Conflict.Op != pgcc.OpUpdate ||
		!slices.Equal(c.Conflict.Key, pgcc.Key{int64(1)}) || c.Conflict.Expected != 1 || c.Conflict.Actual != 2 || c.Conflict.Deleted {
		t.Errorf("conflict event %+v: %+v", c, c.Conflict)
	}
	if a := r.attempts[0]; !errors.Is(a.Err, pgcc.ErrConflict) || a.SQLState != "" {
		t.Errorf("retried attempt: error %v, SQLSTATE %q", a.Err, a.SQLState)
	}
	if w := recs[1-loser]; len(w.conflicts) != 0 {
		t.Errorf("the winner saw conflicts %+v", w.conflicts)
	}
}

func TestObserverOfTableSeesModifyOnAPool(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t, 1)
	rec := &recorder{}
	accounts, err := repo.NewTable[Account]("accounts", repo.WithObserver(rec))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const writers = 6
	read := pgtest.NewBarrier(writers)
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			_, errs[i] = accounts.Modify(ctx, pool, pgcc.Key{1}, func(ctx context.Context, a *Account) error {
				if first {
					first = false
					read.Wait(ctx) // every writer has read version 1 before any writes
				}
				a.Balance++
				return nil
			}, txn.WithMaxAttempts(txn.UnlimitedAttempts))
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	committed, retried := 0, 0
	for _, a := range rec.attempts {
		if a.Operation != pgcc.OperationRetry {
			t.Errorf("Modify's attempt reported as %q", a.Operation)
		}
		switch a.Outcome {
		case pgcc.AttemptCommitted:
			committed++
		case pgcc.AttemptRetried:
			retried++
			if !errors.Is(a.Err, pgcc.ErrConflict) {
				t.Errorf("retried for %v", a.Err)
			}
		default:
			t.Errorf("attempt %+v", a)
		}
	}
	if committed != writers || retried != len(rec.conflicts) || retried < writers-1 {
		t.Errorf("%d committed, %d retried, %d conflicts: want %d committed and one conflict per retry, at least %d", committed, retried, len(rec.conflicts), writers, writers-1)
	}
	for _, c := range rec.conflicts {
		if c.Label != "" || c.Conflict.Table != `"accounts"` || !slices.Equal(c.Conflict.Key, pgcc.Key{int64(1)}) || c.Conflict.Actual <= c.Conflict.Expected {
			t.Errorf("conflict %+v", c.Conflict)
		}
	}
}

func TestObserverSeesLockWaitsAndTheirBlocker(t *testing.T) {
	t.Parallel()
	pool, accounts := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(context.WithoutCancel(ctx)) }()
	if err := lock.Row(ctx, holder, accounts, pgcc.Key{1}); err != nil {
		t.Fatal(err)
	}
	var holderPID int
	if err := holder.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&holderPID); err != nil {
		t.Fatal(err)
	}

	rec := &recorder{}
	// Refused after 50 ms, with the blocker named.
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.Row(ctx, tx, accounts, pgcc.Key{1}, lock.WithTimeout(50*time.Millisecond), lock.WithDiagnostics(pool))
	}, txn.WithObserver(rec), txn.WithLabel("checkout"))
	if !errors.Is(err, pgcc.ErrLockNotAvailable) {
		t.Fatalf("lock: %v", err)
	}
	// Granted once the holder commits.
	waiting, committed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(committed)
		<-waiting
		time.Sleep(30 * time.Millisecond)
		_ = holder.Commit(ctx)
	}()
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		close(waiting)
		return lock.Row(ctx, tx, accounts, pgcc.Key{1})
	}, txn.WithObserver(rec), txn.WithLabel("checkout"))
	<-committed
	if err != nil {
		t.Fatal(err)
	}
	// An advisory lock outside txn.Run, observed through the option.
	other := &recorder{}
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lock.XactLock(ctx, tx, 42, lock.WithObserver(other))
	})
	if err != nil {
		t.Fatal(err)
	}

	if len(rec.locks) != 2 {
		t.Fatalf("lock events %+v, want 2", rec.locks)
	}
	refused, granted := rec.locks[0], rec.locks[1]
	if refused.Outcome != pgcc.LockNotAvailable || refused.Label != "checkout" || refused.Table != `"accounts"` ||
		!slices.EqualFunc(refused.Keys, []pgcc.Key{{1}}, slices.Equal) || refused.Wait < 50*time.Millisecond ||
		!errors.Is(refused.Err, pgcc.ErrLockNotAvailable) {
		t.Errorf("refused lock event %+v", refused)
	}
	if len(refused.Blockers) != 1 || refused.Blockers[0].PID != holderPID {
		t.Errorf("blockers %+v, want the holder %d", refused.Blockers, holderPID)
	}
	if granted.Outcome != pgcc.LockAcquired || granted.Err != nil || granted.Table != `"accounts"` || granted.Wait <= 0 {
		t.Errorf("granted lock event %+v", granted)
	}
	if len(other.locks) != 1 || other.locks[0].Advisory != 42 || other.locks[0].Table != "" || other.locks[0].Outcome != pgcc.LockAcquired || other.locks[0].Label != "" {
		t.Errorf("advisory lock events %+v", other.locks)
	}
}

func TestObserverSeesLeaseEvents(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := &recorder{}
	leases := lease.New(pool, lease.WithObserver(rec))
	l, err := leases.Acquire(ctx, "nightly", "worker-1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx); !errors.Is(err, pgcc.ErrFenced) {
		t.Fatalf("renewal after release: %v", err)
	}
	// A Keeper that finds its grant taken over loses it.
	l, err = leases.Acquire(ctx, "nightly", "worker-1", 3*time.Second) // first renewal after 1 s
	if err != nil {
		t.Fatal(err)
	}
	work, keeper := l.Keep(ctx)
	if _, err := pool.Exec(ctx, "UPDATE pgcc.leases SET token = token + 1 WHERE name = 'nightly'"); err != nil {
		t.Fatal(err)
	}
	<-work.Done()
	if err := keeper.Stop(); !errors.Is(err, pgcc.ErrFenced) {
		t.Fatalf("keeper: %v", err)
	}
	// Guard inside an observed transaction reports the fencing with the transaction's label.
	txRec := &recorder{}
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		return lease.Guard(ctx, tx, "nightly", l.Token)
	}, txn.WithObserver(txRec), txn.WithLabel("nightly-totals"))
	if !errors.Is(err, pgcc.ErrFenced) {
		t.Fatalf("guard: %v", err)
	}

	var kinds []pgcc.LeaseEventKind
	for _, e := range rec.leases {
		kinds = append(kinds, e.Kind)
		if e.Name != "nightly" || e.Token == 0 {
			t.Errorf("lease event %+v", e)
		}
	}
	want := []pgcc.LeaseEventKind{pgcc.LeaseAcquired, pgcc.LeaseRenewed, pgcc.LeaseReleased, pgcc.LeaseFenced,
		pgcc.LeaseAcquired, pgcc.LeaseFenced, pgcc.LeaseLost}
	if !slices.Equal(kinds, want) {
		t.Errorf("lease events %v, want %v", kinds, want)
	}
	if rec.leases[0].Holder != "worker-1" || rec.leases[0].Expires.IsZero() {
		t.Errorf("acquired event %+v", rec.leases[0])
	}
	if last := rec.leases[len(rec.leases)-1]; !errors.Is(last.Err, pgcc.ErrFenced) {
		t.Errorf("lost event's error %v", last.Err)
	}
	if len(txRec.leases) != 1 || txRec.leases[0].Kind != pgcc.LeaseFenced || txRec.leases[0].Label != "nightly-totals" || txRec.leases[0].Token != l.Token {
		t.Errorf("guard's lease events %+v", txRec.leases)
	}
	if len(txRec.locks) != 1 || txRec.locks[0].Table != `"pgcc"."leases"` || txRec.locks[0].Outcome != pgcc.LockAcquired {
		t.Errorf("guard's lock events %+v", txRec.locks)
	}
}

func TestSlogObserverLogsTheRetryAndTheConflict(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewJSONHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	retry := txn.RetryIf(func(err error) bool { return errors.Is(err, pgcc.ErrConflict) })
	obs := txn.WithObserver(pgcc.NewSlogObserver(logger))
	_, errs := raceTwo(t, []txn.Option{retry, obs}, func(ctx context.Context, tx pgx.Tx, accounts *repo.Table[Account], a *Account) error {
		return accounts.Update(ctx, tx, a)
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	count := map[string]int{}
	for line := range bytes.Lines(buf.Bytes()) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		key := rec["level"].(string) + " " + rec["msg"].(string)
		if o, ok := rec["pgcc.outcome"]; ok {
			key += " " + o.(string)
		}
		count[key]++
		if rec["msg"] == "pgcc: optimistic conflict" {
			if rec["db.collection.name"] != `"accounts"` || rec["pgcc.key"] != "id=1" || rec["pgcc.label"] != "transfer" ||
				rec["pgcc.version.expected"] != 1.0 || rec["pgcc.version.actual"] != 2.0 {
				t.Errorf("conflict record %s", line)
			}
		}
	}
	want := map[string]int{
		"DEBUG pgcc: transaction attempt committed": 2,
		"INFO pgcc: transaction attempt retried":    1,
		"INFO pgcc: optimistic conflict":            1,
	}
	if len(count) != len(want) {
		t.Errorf("records %v, want %v", count, want)
	}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("records %v, want %v", count, want)
		}
	}
}

// lockedWriter serialises the writes of concurrent log calls.
type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
