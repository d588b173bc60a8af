package lease

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pgcc/pgcc"
)

// Keeper renews a lease in the background; [Lease.Keep] starts it and [Keeper.Stop] ends it.
type Keeper struct {
	lease  *Lease
	stop   context.CancelFunc
	cancel context.CancelCauseFunc // cancels the work's context
	done   chan struct{}

	mu      sync.Mutex
	expires time.Time
	trusted time.Time
	err     error
}

// LostError is the cause of a [Lease.Keep] context's cancellation, and what [Keeper.Stop] returns, when the
// lease can no longer be trusted. errors.Is(err, pgcc.ErrFenced) holds: work protected by the lease must stop,
// as after a [*FencedError], which Err is when a renewal found the lease fenced.
type LostError struct {
	// Name is the lease.
	Name string
	// Token is the grant's token.
	Token int64
	// Err is why: a [*FencedError], or the last renewal's error when renewals failed until the grant may have
	// ended.
	Err error
}

// Error implements error.
func (e *LostError) Error() string {
	return fmt.Sprintf("pgcc: lease %q (token %d) lost: %v", e.Name, e.Token, e.Err)
}

// Is matches [pgcc.ErrFenced].
func (e *LostError) Is(target error) bool { return target == pgcc.ErrFenced }

// Unwrap returns Err.
func (e *LostError) Unwrap() error { return e.Err }

// Keep renews l in the background, every TTL/3, and returns a context derived from ctx for the work the lease
// protects, cancelled the moment the lease can no longer be trusted, with a [*LostError] as its cause
// (context.Cause):
//   - a renewal finds the grant expired, released or taken over ([*FencedError]): at once;
//   - renewals fail (the database cannot be reached, say): they are retried every TTL/20 (at least 5ms), and
//     if none succeeds the context is cancelled TTL/10 before the grant may end, counted on this process's
//     clock from when the last successful grant or renewal was sent, a time the database's expiry cannot
//     precede.
//
// A renewal thus has a little over half the TTL, after it is due, to succeed before the work is cancelled:
// choose a TTL of seconds, several times the database's worst round trip under load.
//
// Renewal stops when [Keeper.Stop] is called or ctx ends; Stop must be called in any case (it waits for the
// goroutine). While the Keeper runs, do not call l.Renew; [Keeper.Expires] tells the current expiry, and Stop
// writes it back to l. Release the lease after Stop: released first, the next renewal finds it fenced.
//
// An invalid l (nil, a TTL below a millisecond, not made by Acquire) gives a context already cancelled with an
// error matching [pgcc.ErrInvalidArgument], which Stop returns too.
func (l *Lease) Keep(ctx context.Context) (context.Context, *Keeper) {
	work, cancel := context.WithCancelCause(ctx)
	k := &Keeper{cancel: cancel, done: make(chan struct{})}
	if err := l.check(); err != nil {
		k.err = err
		cancel(err)
		close(k.done)
		k.stop = func() {}
		return work, k
	}
	k.lease, k.expires, k.trusted = l, l.Expires, l.trusted
	stopCtx, stop := context.WithCancel(ctx)
	k.stop = stop
	go k.run(stopCtx, *l)
	return work, k
}

func (k *Keeper) run(ctx context.Context, l Lease) {
	defer close(k.done)
	every := l.TTL / 3
	retry := min(max(l.TTL/20, 5*time.Millisecond), every)
	margin := l.TTL / 10
	k.mu.Lock()
	trusted := k.trusted
	k.mu.Unlock()
	next := trusted.Add(-l.TTL).Add(every)
	var lastErr error
	for {
		lossAt := trusted.Add(-margin)
		wake := next
		if lastErr != nil && lossAt.Before(wake) {
			wake = lossAt
		}
		t := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if lastErr != nil && !time.Now().Before(lossAt) {
			k.lose(ctx, l, &LostError{Name: l.Name, Token: l.Token, Err: lastErr})
			return
		}
		sent := time.Now()
		rctx, rcancel := context.WithDeadline(ctx, lossAt)
		expires, err := l.renew(rctx)
		rcancel()
		switch {
		case err == nil:
			trusted, next, lastErr = sent.Add(l.TTL), sent.Add(every), nil
			k.mu.Lock()
			k.expires, k.trusted = expires, trusted
			k.mu.Unlock()
			l.leases.observe(ctx, pgcc.LeaseRenewed, l.Name, l.Holder, l.Token, expires, nil)
		case errors.Is(err, pgcc.ErrFenced):
			k.lose(ctx, l, &LostError{Name: l.Name, Token: l.Token, Err: err})
			return
		case ctx.Err() != nil:
			return
		default:
			lastErr, next = err, time.Now().Add(retry)
		}
	}
}

func (k *Keeper) lose(ctx context.Context, l Lease, err error) {
	k.mu.Lock()
	k.err = err
	k.mu.Unlock()
	k.cancel(err)
	l.leases.observe(ctx, pgcc.LeaseLost, l.Name, l.Holder, l.Token, time.Time{}, err)
}

// Expires returns the grant's expiry as of the last successful renewal, on the database clock.
func (k *Keeper) Expires() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.expires
}

// Err returns the [*LostError] once the lease is lost, nil before.
func (k *Keeper) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

// Stop ends the renewals, waits for the goroutine, cancels the work's context (if the lease was not lost, with
// context.Canceled as its cause), writes the last expiry back to the lease, and returns the [*LostError] if the
// lease was lost, nil otherwise. It does not release the lease. Calling it again returns the same result.
func (k *Keeper) Stop() error {
	k.stop()
	<-k.done
	k.cancel(context.Canceled)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lease != nil {
		k.lease.Expires, k.lease.trusted = k.expires, k.trusted
	}
	return k.err
}
