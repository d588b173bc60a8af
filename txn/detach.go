package txn

import (
	"context"
	"time"
)

// cleanupGrace is how long the clean-up after a failed attempt (ROLLBACK, closing a connection) may go on
// once the caller's context has ended. A server that answers answers within it; one that does not (a hung
// network) costs the connection instead of the caller's time: pgx closes a connection whose statement its
// context interrupted, and a pool replaces it.
const cleanupGrace = 50 * time.Millisecond

// detached returns the context for clean-up after a failed attempt: detached from ctx, so that a cancelled
// caller still leaves a clean connection behind when the server answers, and bounded by rollbackTimeout, but
// ending at most cleanupGrace after ctx does (its deadline, or its cancellation), so that Run returns within
// that grace of the caller's deadline even when the connection hangs.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := rollbackTimeout
	if ctx.Err() != nil {
		timeout = cleanupGrace
	} else if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d)+cleanupGrace)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(cleanupGrace, cancel) })
	return dctx, func() {
		stop()
		cancel()
	}
}
