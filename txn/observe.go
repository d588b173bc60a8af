package txn

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
)

// attemptObs is the attempt in progress, for the observer of [WithObserver]. It exists only when an observer
// is attached: without one the loop spends a nil check per attempt and nothing else.
type attemptObs struct {
	n       int
	start   time.Time
	pending bool // the attempt has not been reported yet
}

// retried reports the attempt as failed and retried after delay.
func (a *attemptObs) retried(ctx context.Context, o *observing, isolation pgx.TxIsoLevel, err error, delay time.Duration) {
	a.pending = false
	o.obs.Observer.ObserveAttempt(ctx, pgcc.AttemptEvent{
		Label: o.obs.Label, Operation: o.operation, Isolation: isolation, Attempt: a.n,
		Outcome: pgcc.AttemptRetried, Duration: time.Since(a.start), Err: err, SQLState: pgcc.SQLState(err), Delay: delay,
		LookUp: o.takeLookUp(),
	})
}

// finish reports the last attempt, whose result is the loop's: ret is what Run or Retry returns.
func (a *attemptObs) finish(ctx context.Context, o *observing, isolation pgx.TxIsoLevel, ret error) {
	if !a.pending {
		return
	}
	a.pending = false
	outcome := pgcc.AttemptCommitted
	switch {
	case ret == nil:
	case errors.Is(ret, pgcc.ErrCommitUnknown):
		outcome = pgcc.AttemptCommitUnknown
	default:
		outcome = pgcc.AttemptFailed
	}
	o.obs.Observer.ObserveAttempt(ctx, pgcc.AttemptEvent{
		Label: o.obs.Label, Operation: o.operation, Isolation: isolation, Attempt: a.n,
		Outcome: outcome, Duration: time.Since(a.start), Err: ret, SQLState: pgcc.SQLState(ret),
		LookUp: o.takeLookUp(),
	})
}

// takeLookUp returns the duration of the current attempt's key look-up, 0 if none ran, and clears it for the
// next attempt.
func (o *observing) takeLookUp() time.Duration {
	d := o.lookUp
	o.lookUp = 0
	return d
}
