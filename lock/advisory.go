package lock

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// StringKey returns the advisory key for name within namespace: the 64-bit FNV-1a hash of namespace, a zero
// byte, and name. The hash is fixed by this documentation and never changes between pgcc or PostgreSQL
// versions (unlike hashtext, PostgreSQL's internal string hash), so processes running different releases
// agree on the key. Two different (namespace, name) pairs collide with probability about 2^-64 per pair.
func StringKey(namespace, name string) pgcc.AdvisoryKey {
	h := fnv.New64a()
	h.Write([]byte(namespace))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return pgcc.AdvisoryKey(h.Sum64())
}

// advisorySQL returns the statement that takes an advisory lock: in transaction or session scope, shared or
// exclusive, waiting or trying.
func advisorySQL(session, shared, try bool) string {
	fn := "pg_"
	if try {
		fn += "try_"
	}
	fn += "advisory_"
	if !session {
		fn += "xact_"
	}
	fn += "lock"
	if shared {
		fn += "_shared"
	}
	return "SELECT " + fn + "($1)"
}

// unlockSQL returns the statement that releases a session advisory lock.
func unlockSQL(shared bool) string {
	if shared {
		return "SELECT pg_advisory_unlock_shared($1)"
	}
	return "SELECT pg_advisory_unlock($1)"
}

// XactLock takes the advisory lock key for the rest of tx: it is released when tx commits or rolls back, never
// earlier. This is the scope to prefer: it cannot leak past the transaction and it works behind PgBouncer's
// transaction pooling.
//
// The lock is exclusive unless WithStrength([ForShare]) asks for a shared one. WithWait([NoWait]) fails at
// once with [pgcc.ErrLockNotAvailable] when the lock is taken. ctx bounds the wait: a deadline becomes lock_timeout,
// cancellation makes the server abort the wait, and the connection stays usable (tx must then be rolled back).
func XactLock(ctx context.Context, tx pgx.Tx, key pgcc.AdvisoryKey, opts ...Option) error {
	cfg, err := newConfig(useAdvisory, opts)
	if err != nil {
		return err
	}
	if cfg.wait == NoWait {
		ok, err := tryXact(ctx, cfg, tx, key)
		if err == nil && !ok {
			return lockwait.Fail(ctx, cfg.bounds(), tx.Conn(), advisoryRequest(key, "", true), nil, nil, 0)
		}
		return err
	}
	return lockwait.Run(ctx, cfg.bounds(), tx.Conn(), advisoryRequest(key, advisorySQL(false, cfg.strength == ForShare, false), true))
}

// TryXactLock takes the advisory lock key for the rest of tx if it is free and reports whether it did; it
// never waits. It takes WithStrength([ForShare]) for a shared lock. ctx bounds the statement.
func TryXactLock(ctx context.Context, tx pgx.Tx, key pgcc.AdvisoryKey, opts ...Option) (bool, error) {
	cfg, err := newConfig(useAdvisory, opts)
	if err != nil {
		return false, err
	}
	return tryXact(ctx, cfg, tx, key)
}

func tryXact(ctx context.Context, cfg *config, tx pgx.Tx, key pgcc.AdvisoryKey) (bool, error) {
	var ok bool
	err := tx.QueryRow(ctx, advisorySQL(false, cfg.strength == ForShare, true), int64(key)).Scan(&ok)
	return ok, err
}

func advisoryRequest(key pgcc.AdvisoryKey, sql string, inTx bool) lockwait.Request {
	return lockwait.Request{
		SQL: sql, Args: []any{int64(key)}, InTx: inTx,
		Describe: func(e *pgcc.LockError) { e.Advisory = key },
		Blockers: func(ctx context.Context, db pgcc.DBTX, self int) ([]pgcc.Blocker, error) {
			return lockwait.AdvisoryBlockers(ctx, db, self, key)
		},
	}
}

// Held is a session advisory lock and the pool connection pinned to hold it. Release it exactly once; until
// then the connection is out of the pool.
type Held struct {
	key    pgcc.AdvisoryKey
	shared bool
	mu     sync.Mutex
	conn   *pgxpool.Conn
}

// Key returns the lock's key.
func (h *Held) Key() pgcc.AdvisoryKey { return h.key }

// PID returns the server process id of the session holding the lock, 0 once released.
func (h *Held) PID() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn == nil {
		return 0
	}
	return int(h.conn.Conn().PgConn().PID())
}

// SessionLock takes the advisory lock key on a connection acquired from pool and keeps both until
// [Held.Release]. The lock outlives transactions; it ends when released or when its session ends, so a
// crashed holder cannot keep it. Use it for work that spans transactions and must not run twice at once;
// behind PgBouncer's transaction pooling it does not work (use [XactLock] or [Leases]).
//
// It takes WithStrength([ForShare]), WithWait([NoWait]) (then it fails at once with [pgcc.ErrLockNotAvailable]),
// [WithTimeout] and [WithDiagnostics]. ctx bounds acquiring the connection and the wait for the lock; when the
// wait fails or ctx ends, the connection goes back to the pool holding nothing, or is closed if that cannot be
// made sure of.
func SessionLock(ctx context.Context, pool *pgxpool.Pool, key pgcc.AdvisoryKey, opts ...Option) (*Held, error) {
	cfg, err := newConfig(useAdvisory, opts)
	if err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, fmt.Errorf("%w: SessionLock needs a pool", pgcc.ErrInvalidArgument)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	h := &Held{key: key, shared: cfg.strength == ForShare, conn: conn}
	if cfg.wait == NoWait {
		ok, err := h.try(ctx)
		switch {
		case err != nil:
			h.discard()
			return nil, err
		case !ok:
			err := lockwait.Fail(ctx, cfg.bounds(), conn.Conn(), advisoryRequest(key, "", false), nil, nil, 0)
			conn.Release()
			return nil, err
		}
		return h, nil
	}
	err = lockwait.Run(ctx, cfg.bounds(), conn.Conn(), advisoryRequest(key, advisorySQL(true, h.shared, false), false))
	if err != nil {
		var lockErr *pgcc.LockError
		if errors.As(err, &lockErr) && lockErr.Err != nil && lockErr.Cause == nil {
			// The server refused the lock (timeout, NOWAIT, deadlock): the session holds nothing.
			conn.Release()
		} else {
			// The context ended: the lock may have been granted just before the cancel arrived.
			h.abandon(ctx)
		}
		return nil, err
	}
	return h, nil
}

// TrySessionLock is [SessionLock] that never waits: it reports whether it took the lock, and returns the
// connection to the pool when it did not. It takes WithStrength([ForShare]). ctx bounds acquiring the
// connection and the statement.
func TrySessionLock(ctx context.Context, pool *pgxpool.Pool, key pgcc.AdvisoryKey, opts ...Option) (*Held, bool, error) {
	cfg, err := newConfig(useAdvisory, opts)
	if err != nil {
		return nil, false, err
	}
	if pool == nil {
		return nil, false, fmt.Errorf("%w: TrySessionLock needs a pool", pgcc.ErrInvalidArgument)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	h := &Held{key: key, shared: cfg.strength == ForShare, conn: conn}
	ok, err := h.try(ctx)
	switch {
	case err != nil:
		h.discard()
		return nil, false, err
	case !ok:
		conn.Release()
		return nil, false, nil
	}
	return h, true, nil
}

func (h *Held) try(ctx context.Context) (bool, error) {
	var ok bool
	err := h.conn.QueryRow(ctx, advisorySQL(true, h.shared, true), int64(h.key)).Scan(&ok)
	return ok, err
}

// Release unlocks the advisory lock and returns the connection to the pool. The connection goes back only
// after pg_advisory_unlock reported the lock released; if the unlock fails, or reports the lock was not held
// (its session was terminated and the pool connection is a new one, say), the connection is closed instead,
// which ends the session and with it any lock it might still hold. Release after the first call returns an
// error matching [pgcc.ErrNotHeld].
//
// ctx bounds the unlock statement; if it ends first, the connection is closed, which releases the lock too.
func (h *Held) Release(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn == nil {
		return fmt.Errorf("%w: advisory key %d already released", pgcc.ErrNotHeld, int64(h.key))
	}
	var released bool
	err := h.conn.QueryRow(ctx, unlockSQL(h.shared), int64(h.key)).Scan(&released)
	if err == nil && released {
		h.conn.Release()
		h.conn = nil
		return nil
	}
	h.discardLocked()
	if err != nil {
		return fmt.Errorf("pgcc: release advisory key %d (connection closed, which releases it): %w", int64(h.key), err)
	}
	return fmt.Errorf("%w: advisory key %d was not held by its session (connection closed)", pgcc.ErrNotHeld, int64(h.key))
}

// abandon releases whatever the session may hold after a lock request whose outcome is unknown, and returns
// the connection to the pool if the unlock statement answered; otherwise it closes the connection.
func (h *Held) abandon(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockwait.CancelGrace)
	defer cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	var released bool
	if err := h.conn.QueryRow(ctx, unlockSQL(h.shared), int64(h.key)).Scan(&released); err != nil {
		h.discardLocked()
		return
	}
	h.conn.Release()
	h.conn = nil
}

// discard closes the connection, ending the session and every lock it holds.
func (h *Held) discard() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.discardLocked()
}

func (h *Held) discardLocked() {
	if h.conn == nil {
		return
	}
	c := h.conn.Hijack()
	h.conn = nil
	ctx, cancel := context.WithTimeout(context.Background(), lockwait.CancelGrace)
	defer cancel()
	_ = c.Close(ctx)
}
