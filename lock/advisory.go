package lock

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/lockwait"
)

// FNV-1a, 64 bits.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// StringKey returns the advisory key for name within namespace:
//
//	key = int64(FNV-1a-64(be64(len(namespace)) ‖ namespace ‖ name) | 1<<63)
//
// that is, the 64-bit FNV-1a hash of the namespace's length in bytes as 8 big-endian bytes, the namespace's
// bytes and the name's bytes, with the top bit set. The length prefix makes every (namespace, name) pair a
// different input (no separator byte that a name could contain), and the top bit makes every StringKey
// negative, so it never equals a key of golang-migrate (0 to 2^32-1), pgcc's own migration key (positive) or
// the small positive constants applications pick by hand; docs/pessimistic.md maps the key space. The
// definition is fixed by this documentation and its test vectors (unlike hashtext, PostgreSQL's internal
// string hash), so processes running different releases agree on the key. Two different pairs collide with
// probability about 2^-63.
func StringKey(namespace, name string) pgcc.AdvisoryKey {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(namespace)))
	h := uint64(fnvOffset)
	for _, c := range n {
		h = (h ^ uint64(c)) * fnvPrime
	}
	for i := 0; i < len(namespace); i++ {
		h = (h ^ uint64(namespace[i])) * fnvPrime
	}
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * fnvPrime
	}
	return pgcc.AdvisoryKey(int64(h | 1<<63))
}

// xactSQL returns the statement that takes a transaction-scoped advisory lock, shared or exclusive, waiting
// or trying; a try also returns the backend's pid, for diagnostics.
func xactSQL(shared, try bool) string {
	fn := "pg_advisory_xact_lock"
	if try {
		fn = "pg_try_advisory_xact_lock"
	}
	if shared {
		fn += "_shared"
	}
	if try {
		return "SELECT " + fn + "($1), pg_backend_pid()"
	}
	return "SELECT " + fn + "($1)"
}

// XactLock takes the advisory lock key for the rest of tx: it is released when tx commits or rolls back, never
// earlier. This is the scope to prefer: it cannot leak past the transaction and it works behind PgBouncer's
// transaction pooling.
//
// The lock is exclusive unless WithStrength([ForShare]) asks for a shared one. WithWait([NoWait]) fails at
// once with [pgcc.ErrLockNotAvailable] when the lock is taken. ctx bounds the wait as in [Rows]: a deadline
// becomes lock_timeout, cancellation makes the server abort the wait, and the connection stays usable (tx must
// then be rolled back).
func XactLock(ctx context.Context, tx pgx.Tx, key pgcc.AdvisoryKey, opts ...Option) error {
	cfg, err := newConfig(useXact, opts)
	if err != nil {
		return err
	}
	if err := checkTx(tx); err != nil {
		return err
	}
	if cfg.wait == NoWait {
		ok, pid, err := tryXact(ctx, cfg, tx, key)
		if err == nil && !ok {
			return lockwait.Fail(ctx, cfg.bounds(tx), advisoryRequest(key, "", true), nil, nil, 0, pid)
		}
		return err
	}
	return lockwait.Run(ctx, cfg.bounds(tx), tx, advisoryRequest(key, xactSQL(cfg.strength == ForShare, false), true))
}

// TryXactLock takes the advisory lock key for the rest of tx if it is free and reports whether it did; it
// never waits. It takes WithStrength([ForShare]) for a shared lock. ctx bounds the statement.
func TryXactLock(ctx context.Context, tx pgx.Tx, key pgcc.AdvisoryKey, opts ...Option) (bool, error) {
	cfg, err := newConfig(useXact, opts)
	if err != nil {
		return false, err
	}
	if err := checkTx(tx); err != nil {
		return false, err
	}
	obs := pgcc.ObservationOf(tx, cfg.observer)
	if obs.Observer == nil {
		ok, _, err := tryXact(ctx, cfg, tx, key)
		return ok, err
	}
	start := time.Now()
	ok, _, err := tryXact(ctx, cfg, tx, key)
	e := pgcc.LockWaitEvent{Label: obs.Label, Advisory: key, Wait: time.Since(start), Outcome: pgcc.LockAcquired, Err: err}
	switch {
	case err != nil:
		e.Outcome = pgcc.LockFailed
	case !ok:
		e.Outcome = pgcc.LockNotAvailable
	}
	obs.Observer.ObserveLockWait(ctx, e)
	return ok, err
}

func tryXact(ctx context.Context, cfg *config, tx pgx.Tx, key pgcc.AdvisoryKey) (bool, int, error) {
	var ok bool
	var pid int32
	err := tx.QueryRow(ctx, xactSQL(cfg.strength == ForShare, true), int64(key)).Scan(&ok, &pid)
	return ok, int(pid), pgcc.Classify(err)
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
// then the connection is out of the pool, and a goroutine watches it ([Held.Lost]).
type Held struct {
	key    pgcc.AdvisoryKey
	shared bool
	pid    int
	pooler bool // a pooler is between the connection and PostgreSQL

	mu   sync.Mutex // guards conn; held by Release
	conn *pgxpool.Conn

	lost    chan struct{} // closed when the lock is found lost
	lostErr error         // why; written before lost is closed
	stopMon context.CancelFunc
	monDone chan struct{}
}

// Key returns the lock's key.
func (h *Held) Key() pgcc.AdvisoryKey { return h.key }

// PID returns the server process id of the session holding the lock, as the server reported it
// (pg_backend_pid(), not the cancel key, which a pooler replaces with its own).
func (h *Held) PID() int { return h.pid }

// Lost returns a channel closed when the lock is found lost while held: its connection failed (the backend was
// terminated, the server restarted, the network broke) or the connection no longer reaches the backend that
// holds the lock. A goroutine watches the connection: a failure the server reports (a terminated backend) is
// seen at once, a silent one at the next check, every [DefaultLossCheck] or [WithLossCheck]. The channel is
// not closed by [Held.Release]. Work protected by the lock should select on it and stop.
func (h *Held) Lost() <-chan struct{} { return h.lost }

// Err returns why the lock was lost (an error matching [pgcc.ErrNotHeld]), or nil while it is not.
func (h *Held) Err() error {
	select {
	case <-h.lost:
		return h.lostErr
	default:
		return nil
	}
}

// SessionLock takes the advisory lock key on a connection acquired from pool and keeps both until
// [Held.Release]. The lock outlives transactions; it ends when released or when its session ends, so a
// crashed holder cannot keep it. Use it for work that spans transactions and must not run twice at once, and
// watch [Held.Lost]. The lock is exclusive unless WithStrength([ForShare]) asks for a shared one.
//
// A session lock needs a server session of its own. Through a pooler in transaction mode (PgBouncer's
// pool_mode = transaction) the server session changes between transactions, so the lock would be held by a
// session other clients then use: SessionLock refuses with an error matching [pgcc.ErrTransactionPooling]
// that names the fix (a session-mode pool, a direct connection, or [XactLock]). docs/pessimistic.md says how
// this is detected and where detection ends; in every case the lock statement refuses a key its server
// session already holds, so two clients are never granted one key through one shared session.
//
// It takes WithStrength([ForShare]), WithWait([NoWait]) (then it fails at once with
// [pgcc.ErrLockNotAvailable]), [WithTimeout], [WithDiagnostics] and [WithLossCheck]. ctx bounds acquiring the
// connection, the checks and the wait for the lock; when the wait fails or ctx ends, the connection goes back
// to the pool holding nothing, or is closed if that cannot be made sure of.
func SessionLock(ctx context.Context, pool *pgxpool.Pool, key pgcc.AdvisoryKey, opts ...Option) (*Held, error) {
	cfg, err := newConfig(useSession, opts)
	if err != nil {
		return nil, err
	}
	h, ok, err := acquireSession(ctx, pool, key, cfg, cfg.wait == NoWait)
	if err == nil && !ok {
		err = lockwait.Fail(ctx, cfg.bounds(nil), advisoryRequest(key, "", false), nil, nil, 0, h.pid)
		h.conn.Release()
		return nil, err
	}
	return h, err
}

// TrySessionLock is [SessionLock] that never waits: it reports whether it took the lock, and returns the
// connection to the pool when it did not. It takes WithStrength([ForShare]) and [WithLossCheck]. ctx bounds
// acquiring the connection, the checks and the statement.
func TrySessionLock(ctx context.Context, pool *pgxpool.Pool, key pgcc.AdvisoryKey, opts ...Option) (*Held, bool, error) {
	cfg, err := newConfig(useSession, opts)
	if err != nil {
		return nil, false, err
	}
	h, ok, err := acquireSession(ctx, pool, key, cfg, true)
	if err == nil && !ok {
		h.conn.Release()
		return nil, false, nil
	}
	return h, ok, err
}

// sessionLockSQL takes the lock only on the backend $2 and only if the session does not hold key $1 already
// (a shared server session), and reports the backend, whether it held the key, and whether the lock was
// taken. $3 and $4 are the key's halves as pg_locks shows them.
func sessionLockSQL(shared, try bool) string {
	fn := "pg_advisory_lock"
	if try {
		fn = "pg_try_advisory_lock"
	}
	if shared {
		fn += "_shared"
	}
	take := "(SELECT true FROM " + fn + "($1))"
	if try {
		take = fn + "($1)"
	}
	return `SELECT s.pid, s.held, CASE WHEN s.pid = $2 AND NOT s.held THEN ` + take + ` ELSE false END
FROM (SELECT pg_backend_pid()::int8 AS pid, EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid()
	AND l.objsubid = 1 AND l.classid = $3::int8::oid AND l.objid = $4::int8::oid
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) AS held) s`
}

// acquireSession pins a connection and takes the lock on it, refusing a transaction-pooled connection.
func acquireSession(ctx context.Context, pool *pgxpool.Pool, key pgcc.AdvisoryKey, cfg *config, try bool) (*Held, bool, error) {
	if pool == nil {
		return nil, false, fmt.Errorf("%w: a session lock needs a pool (nil *pgxpool.Pool)", pgcc.ErrInvalidArgument)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	h := &Held{key: key, shared: cfg.strength == ForShare, conn: conn}
	// The cancel key's pid is the backend's own on a direct connection; a pooler hands out keys of its own.
	expect := int64(conn.Conn().PgConn().PID())
	st, err := h.take(ctx, cfg, expect, try)
	if err == nil && st.pid != expect {
		// Not the backend the key names: a pooler (or a proxy) is in between. Nothing was taken; find the
		// session's backend, make sure it is the connection's alone, and take the lock on it.
		h.pooler = true
		if expect, err = probeSession(ctx, pool, conn, key); err == nil {
			st, err = h.take(ctx, cfg, expect, try)
			switch {
			case err != nil:
			case st.pid != expect:
				err = pooled(key, fmt.Sprintf("the backend changed between two transactions on one connection (pid %d, then %d)", expect, st.pid))
			case st.took:
				err = checkPinned(ctx, conn, key, expect)
			}
		}
	}
	if err == nil && st.held {
		if !h.pooler {
			err = fmt.Errorf("%w: advisory key %d: the connection's session already holds it (a lock taken on a pool connection outside pgcc and never released?)",
				pgcc.ErrLockNotAvailable, int64(key))
		} else {
			err = pooled(key, "the server session already holds the key, taken by another client that shares it")
		}
	}
	if err != nil {
		var lockErr *pgcc.LockError
		switch {
		case errors.As(err, &lockErr) && lockErr.Err != nil && lockErr.Cause == nil:
			// The server refused the lock (timeout, deadlock): the session holds nothing.
			conn.Release()
		case h.pooler && (st.took || lockErr != nil):
			// The lock may be held by a server session other clients share: end that session.
			endHolder(ctx, conn, key, expect)
			h.discard()
		case st.took || lockErr != nil:
			// The context ended: the lock may have been granted just before the cancel arrived.
			h.abandon(ctx)
		default:
			h.discard()
		}
		return nil, false, err
	}
	h.pid = int(st.pid)
	if !st.took {
		return h, false, nil
	}
	h.watch(cfg)
	return h, true, nil
}

// checkPinned asks, after a lock was taken through a pooler on the backend pid, which backend the connection
// reaches now: another one means the lock sits on a session the connection does not keep.
func checkPinned(ctx context.Context, conn *pgxpool.Conn, key pgcc.AdvisoryKey, pid int64) error {
	var now int64
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()::int8").Scan(&now); err != nil {
		return err
	}
	if now != pid {
		return pooled(key, fmt.Sprintf("right after the lock was taken on backend %d, the connection reached backend %d", pid, now))
	}
	return nil
}

// endHolder terminates the backend pid if it holds the advisory lock key: a lock left on a server session
// that a transaction pooler shares between clients would otherwise stay held, and exclude everyone, until the
// pooler closes that server connection. Terminating it fails any transaction another client runs on it at that
// moment (SQLSTATE 57P01, which txn.Run retries). Errors are ignored: this is cleanup on a failing path.
func endHolder(ctx context.Context, conn *pgxpool.Conn, key pgcc.AdvisoryKey, pid int64) {
	if conn.Conn().IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockwait.CancelGrace)
	defer cancel()
	u := uint64(key)
	_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.pid = $1 AND l.locktype = 'advisory'
		AND l.granted AND l.objsubid = 1 AND l.classid = $2::int8::oid AND l.objid = $3::int8::oid
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`, pid, int64(u>>32), int64(u&0xffffffff))
}

// taken is what the session lock statement reported.
type taken struct {
	pid  int64
	held bool
	took bool
}

// take runs the session lock statement, taking the lock only on the backend expect.
func (h *Held) take(ctx context.Context, cfg *config, expect int64, try bool) (taken, error) {
	var st taken
	u := uint64(h.key)
	args := []any{int64(h.key), expect, int64(u >> 32), int64(u & 0xffffffff)}
	sql := sessionLockSQL(h.shared, try)
	scan := func(row pgx.Row) error { return row.Scan(&st.pid, &st.held, &st.took) }
	if try {
		err := scan(h.conn.QueryRow(ctx, sql, args...))
		return st, pgcc.Classify(err)
	}
	req := advisoryRequest(h.key, sql, false)
	req.Args = args
	req.Scan = func(rows pgx.Rows) error {
		if !rows.Next() {
			return rows.Err()
		}
		return scan(rows)
	}
	return st, lockwait.Run(ctx, cfg.bounds(nil), h.conn.Conn(), req)
}

// probeSession finds the backend behind conn when a pooler is in between, and refuses, with an error matching
// pgcc.ErrTransactionPooling, a connection whose backend is shared with other clients. Two checks:
//   - a marker in a custom setting of the server session (pgcc.session_owner, set to a value derived from
//     this client connection's cancel key): a server session that carries another client connection's marker
//     has served another client, which session pooling never does (it resets sessions with DISCARD ALL);
//   - a second client connection (an idle one of the pool, or a new one) asks for its backend right after:
//     a pooler in transaction mode that reuses the server connection just released (PgBouncer's default,
//     server_round_robin = 0) gives it conn's backend.
//
// The checks run probeRounds times. It returns conn's backend pid, which the lock statement then insists on;
// after the grant, checkPinned looks once more.
func probeSession(ctx context.Context, pool *pgxpool.Pool, conn *pgxpool.Conn, key pgcc.AdvisoryKey) (int64, error) {
	token := sessionToken(conn.Conn().PgConn())
	var first int64
	for round := range probeRounds {
		var pid int64
		var marker, set string
		err := conn.QueryRow(ctx, `SELECT pg_backend_pid()::int8, coalesce(current_setting('pgcc.session_owner', true), ''),
			set_config('pgcc.session_owner', $1, false)`, token).Scan(&pid, &marker, &set)
		if err != nil {
			return 0, err
		}
		if marker != "" && marker != token {
			return 0, pooled(key, "the server session was used by another client connection before")
		}
		if round == 0 {
			first = pid
		} else if pid != first {
			return 0, pooled(key, fmt.Sprintf("the backend changed between two transactions on one connection (pid %d, then %d)", first, pid))
		}
		other, err := otherBackend(ctx, pool)
		if err != nil {
			return 0, err
		}
		if other == pid {
			return 0, pooled(key, fmt.Sprintf("another client connection was given the same backend (pid %d)", pid))
		}
	}
	return first, nil
}

// probeRounds is how many times probeSession checks: a pooler serving other clients at the same moment can
// hide the sharing from one round.
const probeRounds = 3

// otherBackend returns the backend pid seen by another client connection: an idle connection of the pool,
// or a new connection with the pool's settings when none is idle.
func otherBackend(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var pid int64
	idle := pool.AcquireAllIdle(ctx)
	if len(idle) > 0 {
		err := idle[0].QueryRow(ctx, "SELECT pg_backend_pid()::int8").Scan(&pid)
		for _, c := range idle {
			c.Release()
		}
		return pid, err
	}
	c, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	err = c.QueryRow(ctx, "SELECT pg_backend_pid()::int8").Scan(&pid)
	return pid, err
}

// sessionToken identifies a client connection without revealing its cancel key.
func sessionToken(pg *pgconn.PgConn) string {
	h := uint64(fnvOffset)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], pg.PID())
	for _, c := range append(b[:], pg.SecretKey()...) {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return strconv.FormatUint(h, 16)
}

func pooled(key pgcc.AdvisoryKey, why string) error {
	return fmt.Errorf("%w: advisory key %d: %s. A session lock needs a server session of its own: use a pool in session mode "+
		"(PgBouncer pool_mode = session) or a direct connection to PostgreSQL, or lock.XactLock inside a transaction",
		pgcc.ErrTransactionPooling, int64(key), why)
}

// watch starts the goroutine behind Lost. It owns the connection until Release stops it: it waits for a
// message from the server (a terminated backend's last message, or the connection's end) for up to the check
// interval, then checks that the connection still reaches the backend that holds the lock.
func (h *Held) watch(cfg *config) {
	every := cfg.lossCheck
	if every == 0 {
		every = DefaultLossCheck
	}
	h.lost = make(chan struct{})
	h.monDone = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	h.stopMon = cancel
	pg := h.conn.Conn().PgConn()
	go func() {
		defer close(h.monDone)
		for {
			wctx, wcancel := context.WithTimeout(ctx, every)
			err := pg.WaitForNotification(wctx)
			wcancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil && !pgconn.Timeout(err) {
				h.markLost(err)
				return
			}
			if err != nil {
				// Nothing arrived: ask. The check runs on a context Release does not cancel (pgx would close
				// the connection), bounded by the interval or LossCheckTimeout, whichever is longer: a check
				// cut short closes the connection and so loses a lock that was healthy. Release waits for it.
				cctx, ccancel := context.WithTimeout(context.Background(), max(every, LossCheckTimeout))
				var pid int32
				err = h.conn.Conn().QueryRow(cctx, "SELECT pg_backend_pid()").Scan(&pid)
				ccancel()
				if err == nil && int(pid) != h.pid {
					err = fmt.Errorf("the connection now reaches backend %d, not %d, which holds the lock", pid, h.pid)
				}
				if err != nil {
					h.markLost(err)
					return
				}
			}
		}
	}()
}

func (h *Held) markLost(err error) {
	h.lostErr = fmt.Errorf("%w: advisory key %d, held by backend %d: %w", pgcc.ErrNotHeld, int64(h.key), h.pid, err)
	close(h.lost)
}

// stopWatch stops the goroutine behind Lost and waits for it.
func (h *Held) stopWatch() {
	if h.stopMon != nil {
		h.stopMon()
		<-h.monDone
		h.stopMon = nil
	}
}

// Release unlocks the advisory lock and returns the connection to the pool. The connection goes back only
// after pg_advisory_unlock reported the lock released; if the unlock fails, or reports the lock was not held
// (its session was terminated and the pool connection is a new one, say), or the lock was found lost, the
// connection is closed instead, which ends the session and with it any lock it might still hold, and the
// error matches [pgcc.ErrNotHeld] (or is the unlock statement's). Release after the first call returns an
// error matching [pgcc.ErrNotHeld].
//
// ctx bounds the unlock statement; if it ends first, the connection is closed, which releases the lock too.
func (h *Held) Release(ctx context.Context) error {
	if h == nil {
		return fmt.Errorf("%w: Release of a nil *lock.Held", pgcc.ErrInvalidArgument)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn == nil {
		return fmt.Errorf("%w: advisory key %d already released", pgcc.ErrNotHeld, int64(h.key))
	}
	h.stopWatch()
	if err := h.Err(); err != nil {
		if h.pooler {
			endHolder(ctx, h.conn, h.key, int64(h.pid))
		}
		h.discardLocked()
		return err
	}
	var released bool
	err := h.conn.QueryRow(ctx, unlockSQL(h.shared), int64(h.key)).Scan(&released)
	if err == nil && released {
		h.conn.Release()
		h.conn = nil
		return nil
	}
	if h.pooler {
		endHolder(ctx, h.conn, h.key, int64(h.pid))
	}
	h.discardLocked()
	if err != nil {
		return fmt.Errorf("pgcc: release advisory key %d (connection closed, which releases it): %w", int64(h.key), err)
	}
	return fmt.Errorf("%w: advisory key %d was not held by its session (connection closed)", pgcc.ErrNotHeld, int64(h.key))
}

// unlockSQL returns the statement that releases a session advisory lock.
func unlockSQL(shared bool) string {
	if shared {
		return "SELECT pg_advisory_unlock_shared($1)"
	}
	return "SELECT pg_advisory_unlock($1)"
}

// abandon releases whatever the session may hold after a lock request whose outcome is unknown, and returns
// the connection to the pool if the unlock statement answered; otherwise it closes the connection.
func (h *Held) abandon(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockwait.CancelGrace)
	defer cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn.Conn().IsClosed() {
		h.discardLocked()
		return
	}
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
