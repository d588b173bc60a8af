package pgcc

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Observer receives what pgcc's packages see happen: every transaction attempt with its outcome, every
// optimistic conflict with its table and key, every lock wait with its duration and blockers, every lease
// grant, renewal and loss. It is how a service learns where its conflicts are and how often they happen;
// [NewSlogObserver] writes the events to a log, and the module github.com/pgcc/pgcc/otel turns them into
// OpenTelemetry metrics and spans.
//
// An Observer is attached with txn.WithObserver (every event of statements run in that transaction, with the
// label of txn.WithLabel), or, for calls outside txn.Run, with the observer option of repo.NewTable,
// package lock and lease.New. When none is attached, pgcc spends a nil check per event and nothing else.
//
// Observer is an interface rather than a struct of optional functions: a single value is attached, passed on
// and combined ([JoinObservers]), and an adapter that wants only some events embeds [NopObserver]. Its methods
// are called synchronously, on the goroutine of the operation that produced the event (a lease's renewals:
// on the goroutine of lease.Keeper), possibly on several goroutines at once: they must be safe for concurrent
// use and quick. ctx is the operation's context (for a span of the caller's trace, say); an event must not be
// retained past the call unless copied, since its slices belong to the operation.
type Observer interface {
	// ObserveAttempt is called once at the end of each attempt of txn.Run or txn.Retry.
	ObserveAttempt(ctx context.Context, e AttemptEvent)
	// ObserveConflict is called for each optimistic conflict package repo reports.
	ObserveConflict(ctx context.Context, e ConflictEvent)
	// ObserveLockWait is called at the end of each lock request of packages lock and lease (granted or not).
	ObserveLockWait(ctx context.Context, e LockWaitEvent)
	// ObserveLease is called for each lease grant, renewal, release, loss and fencing of package lease.
	ObserveLease(ctx context.Context, e LeaseEvent)
}

// NopObserver ignores every event. Embed it in an observer that handles only some of them.
type NopObserver struct{}

var _ Observer = NopObserver{}

// ObserveAttempt does nothing.
func (NopObserver) ObserveAttempt(context.Context, AttemptEvent) {}

// ObserveConflict does nothing.
func (NopObserver) ObserveConflict(context.Context, ConflictEvent) {}

// ObserveLockWait does nothing.
func (NopObserver) ObserveLockWait(context.Context, LockWaitEvent) {}

// ObserveLease does nothing.
func (NopObserver) ObserveLease(context.Context, LeaseEvent) {}

// JoinObservers returns an Observer that passes each event to every non-nil observer of obs, in order. It
// returns nil when none is left, so that attaching the result costs nothing either.
func JoinObservers(obs ...Observer) Observer {
	var list multiObserver
	for _, o := range obs {
		switch o := o.(type) {
		case nil:
		case multiObserver:
			list = append(list, o...)
		default:
			list = append(list, o)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return list
}

type multiObserver []Observer

func (m multiObserver) ObserveAttempt(ctx context.Context, e AttemptEvent) {
	for _, o := range m {
		o.ObserveAttempt(ctx, e)
	}
}

func (m multiObserver) ObserveConflict(ctx context.Context, e ConflictEvent) {
	for _, o := range m {
		o.ObserveConflict(ctx, e)
	}
}

func (m multiObserver) ObserveLockWait(ctx context.Context, e LockWaitEvent) {
	for _, o := range m {
		o.ObserveLockWait(ctx, e)
	}
}

func (m multiObserver) ObserveLease(ctx context.Context, e LeaseEvent) {
	for _, o := range m {
		o.ObserveLease(ctx, e)
	}
}

// Observation is the observer in force on a database handle and the label of the transaction it belongs to.
type Observation struct {
	// Observer receives the events; nil when nothing observes the handle.
	Observer Observer
	// Label names the transaction (txn.WithLabel), "" when it has none.
	Label string
}

// Observed is implemented by database handles that carry an [Observation]: the pgx.Tx that txn.Run gives its
// function (and those of nested Runs) carry the observer and label given to the outermost Run. A wrapper
// around such a handle (a sqlc Queries, say) may implement it too, to pass the observation on.
type Observed interface {
	PGCCObservation() Observation
}

// ObservationOf returns the observation db carries ([Observed]) when it carries an observer, and fallback
// otherwise. Packages repo, lock and lease call it with their own option as fallback, so that an observer
// attached to a transaction wins over one attached to a table or a lease store.
func ObservationOf(db any, fallback Observer) Observation {
	if o, ok := db.(Observed); ok {
		if obs := o.PGCCObservation(); obs.Observer != nil {
			return obs
		}
	}
	return Observation{Observer: fallback}
}

// AttemptOutcome says how an attempt of txn.Run or txn.Retry ended.
type AttemptOutcome uint8

// The outcomes of an attempt.
const (
	// AttemptCommitted: the transaction committed (for txn.Retry: the function returned nil).
	AttemptCommitted AttemptOutcome = iota + 1
	// AttemptRetried: the attempt failed and another one follows after AttemptEvent.Delay.
	AttemptRetried
	// AttemptFailed: the attempt failed and its error is returned (not retryable, attempts exhausted,
	// context ended, or the function's own error).
	AttemptFailed
	// AttemptCommitUnknown: COMMIT was sent and no answer came, and nothing settled whether it committed.
	AttemptCommitUnknown
)

// String returns committed, retried, failed or commit_unknown.
func (o AttemptOutcome) String() string {
	switch o {
	case AttemptCommitted:
		return "committed"
	case AttemptRetried:
		return "retried"
	case AttemptFailed:
		return "failed"
	case AttemptCommitUnknown:
		return "commit_unknown"
	}
	return "unknown"
}

// Operations named in [AttemptEvent.Operation].
const (
	OperationRun   = "txn.Run"
	OperationRetry = "txn.Retry"
)

// AttemptEvent describes one attempt of txn.Run or txn.Retry.
type AttemptEvent struct {
	// Label is the transaction's label (txn.WithLabel), "" when it has none.
	Label string
	// Operation is [OperationRun] or [OperationRetry].
	Operation string
	// Isolation is the isolation level asked for; "" means the server's default (READ COMMITTED unless
	// configured otherwise).
	Isolation pgx.TxIsoLevel
	// Attempt is the attempt's number, 1 for the first.
	Attempt int
	// Outcome says how it ended.
	Outcome AttemptOutcome
	// Duration is the attempt's time, from before BEGIN to after COMMIT or ROLLBACK; the sleep before a retry
	// is not included.
	Duration time.Duration
	// Err is the attempt's error, classified as the caller would see it (a *ConflictError, an error matching
	// ErrSerialization, ...); nil when it committed.
	Err error
	// SQLState is the SQLSTATE of Err's *pgconn.PgError, "" when there is none.
	SQLState string
	// Delay is the sleep before the next attempt, when Outcome is AttemptRetried.
	Delay time.Duration
	// LookUp is how long the idempotency key's look-up took (txn.WithIdempotencyKey), when the attempt's
	// COMMIT got no answer and Run looked the key up on a fresh connection; 0 when none ran. Outcome says what
	// it found: AttemptCommitted (the attempt had committed), AttemptRetried (it had not, and the transaction
	// runs again), AttemptFailed (another call with the key had committed: ErrAlreadyApplied; or it had not and
	// a single connection cannot retry), AttemptCommitUnknown (it could not tell before the context ended). A
	// look-up that takes seconds is the sign of a network or server failing on: it waits for a connection.
	LookUp time.Duration
}

// ConflictEvent describes an optimistic conflict: a compare-and-swap write that found the row at another
// version, or gone.
type ConflictEvent struct {
	// Label is the label of the enclosing transaction, "" outside one or without a label.
	Label string
	// Conflict is the error the write returned, with its table, operation, key, expected and actual version.
	Conflict *ConflictError
}

// LockOutcome says how a lock request ended.
type LockOutcome uint8

// The outcomes of a lock request.
const (
	// LockAcquired: the lock was granted.
	LockAcquired LockOutcome = iota + 1
	// LockNotAvailable: the lock was held and the request gave up (NOWAIT, a try-lock, lock_timeout).
	LockNotAvailable
	// LockDeadlock: the server broke a deadlock by failing this request.
	LockDeadlock
	// LockInterrupted: the context ended during the wait.
	LockInterrupted
	// LockFailed: any other error.
	LockFailed
)

// String returns acquired, not_available, deadlock, interrupted or failed.
func (o LockOutcome) String() string {
	switch o {
	case LockAcquired:
		return "acquired"
	case LockNotAvailable:
		return "not_available"
	case LockDeadlock:
		return "deadlock"
	case LockInterrupted:
		return "interrupted"
	case LockFailed:
		return "failed"
	}
	return "unknown"
}

// LockWaitEvent describes one lock request of package lock (row and advisory locks) or lease.Guard.
type LockWaitEvent struct {
	// Label is the label of the enclosing transaction, "" without one.
	Label string
	// Table is the locked table, a quoted identifier; "" for an advisory lock.
	Table string
	// KeyColumns names the key columns of Table.
	KeyColumns []string
	// Keys are the keys asked for, for a row lock by keys; nil for a lock chosen by a predicate.
	Keys []Key
	// Advisory is the advisory lock's key, when Table is "".
	Advisory AdvisoryKey
	// Wait is the time from sending the request to its answer.
	Wait time.Duration
	// Outcome says how it ended.
	Outcome LockOutcome
	// Err is the request's error (a *LockError when the lock was not granted), nil when it was.
	Err error
	// Blockers are the sessions that held the lock, when the request failed and lock.WithDiagnostics was
	// given; nil otherwise.
	Blockers []Blocker
}

// LeaseEventKind says what happened to a lease.
type LeaseEventKind uint8

// The kinds of lease event.
const (
	// LeaseAcquired: a grant was made (Token is new).
	LeaseAcquired LeaseEventKind = iota + 1
	// LeaseRenewed: a grant was extended (by Renew or a Keeper).
	LeaseRenewed
	// LeaseReleased: a grant was released by its holder.
	LeaseReleased
	// LeaseLost: a Keeper could not renew the grant in time, or found it taken over; the work's context is
	// cancelled.
	LeaseLost
	// LeaseFenced: a renewal, release or Guard found that the token no longer holds the lease.
	LeaseFenced
)

// String returns acquired, renewed, released, lost or fenced.
func (k LeaseEventKind) String() string {
	switch k {
	case LeaseAcquired:
		return "acquired"
	case LeaseRenewed:
		return "renewed"
	case LeaseReleased:
		return "released"
	case LeaseLost:
		return "lost"
	case LeaseFenced:
		return "fenced"
	}
	return "unknown"
}

// LeaseEvent describes something that happened to a lease.
type LeaseEvent struct {
	// Label is the label of the enclosing transaction (lease.Guard inside txn.Run), "" otherwise.
	Label string
	// Kind says what happened.
	Kind LeaseEventKind
	// Name is the lease's name.
	Name string
	// Holder is the holder as given to Acquire ("" when not known, as for Guard).
	Holder string
	// Token is the grant's fencing token.
	Token int64
	// Expires is the grant's expiry after the event, on the database clock (zero when not known).
	Expires time.Time
	// Err is the error that came with a LeaseLost or LeaseFenced event.
	Err error
}
